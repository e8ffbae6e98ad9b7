"""Every `hftrain` command and every Python snippet in README.md and docs/*.md still names real options.

A renamed option or config file then fails here instead of rotting in the docs. What "works" means for a
documented example, without training anything or reaching the Hub:

- A command (a line of a fenced block that runs `hftrain …` or `python -m hftrain …`, its `\\` continuations
  joined, comments, `VAR=value` prefixes and anything after `&&`, `;` or `|` left out) **parses**: run
  in-process with `--print_config` added, the real CLI parser reads every config file (they must exist and
  be valid), every option name and every value's type, and exits with status 0 after printing the resolved
  config. Nothing is loaded: files a command names as data (`--data.train_file my.csv`) and models need not
  exist, and `$VAR` / `<placeholder>` arguments stand for a path (`$T` is `hftrain.tasks`, as the migration
  page defines it). `--help` commands run through the light help (`hftrain.command`) and must exit 0. An
  `hftrain tune` command passes the search's own checks, and the fit of its first trial parses.
- A ```` ```python ```` snippet **compiles**, every `import` in it imports (and names what it imports from a
  module), and every option it passes to hftrain exists: the keys of `model={…}`, `data={…}`, `trainer={…}`
  and `checkpoint={…}` given to `hftrain.fit` / `hftrain.Run` / `hftrain.tune` (and the latter's `tune={…}`
  settings), the keyword arguments of a task class
  (`hftrain.TokenClassificationData(…)`) and of `hftrain.trainer(…)`. Options are read from source by
  `hftrain.options`, which tests/test_options.py checks against the real signatures. Snippets are not run:
  they train, and read files the reader has.
- A ```` ```yaml ```` config block sets only options that exist: the `init_args` keys of the task classes
  it names (of any task's, when it names none), trainer and checkpoint keys, and `tune:` settings.

Dated records under docs/benchmarks/ are history: their commands name old commits and are not checked.
"""

import ast
import contextlib
import importlib
import inspect
import io
import re
import shlex
from pathlib import Path

import pytest

from hftrain import options
from tests.helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
ENTRY = re.compile(r"^(?:hftrain|python -m hftrain)\b")
SECTIONS = ("model", "data", "trainer", "checkpoint")


def _blocks(language: set[str]):
    """(page, line, block text) of every fenced block whose language is in `language`."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) in language:
                yield page, text.count("\n", 0, match.start(2)) + 1, match.group(2)


def _argument(token: str) -> str:
    """A shell word as the command would receive it: `$T` expanded, other variables and placeholders a path."""
    token = token.replace("$T.", "hftrain.tasks.")
    return "/placeholder/path" if "$" in token or "<" in token else token


def documented_commands() -> list[tuple[str, dict[str, str], list[str]]]:
    """(where, environment, argv after `hftrain`) of every command line in the pages' shell blocks."""
    found = []
    for page, first_line, block in _blocks({"bash", "sh", "shell", "console"}):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            start, line = i, lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            words = shlex.split(line, comments=True, posix=True) if line.strip() else []
            command = []
            for word in words:
                if word in ("&&", ";", "|", "||"):
                    break
                command.append(word)
            env = {}
            while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", command[0]):
                key, _, value = command.pop(0).partition("=")
                env[key] = value
            text = " ".join(command)
            if not ENTRY.match(text):
                continue
            argv = command[3:] if command[0] == "python" else command[1:]
            where = f"{page.relative_to(REPO)}:{first_line + start}"
            found.append((where, env, [_argument(a) for a in argv]))
    return found


def documented_snippets() -> list[tuple[str, str]]:
    return [(f"{page.relative_to(REPO)}:{line}", block) for page, line, block in _blocks({"python"})]


COMMANDS = documented_commands()
SNIPPETS = documented_snippets()


def test_the_pages_have_commands_and_snippets():
    """The extraction itself: a change of fence style must not make the check vacuous."""
    assert len(COMMANDS) > 40 and len(SNIPPETS) > 5
    assert any(argv[:1] == ["validate"] for _, _, argv in COMMANDS)


class _Built(Exception):
    """Raised in place of parsing, to keep the CLI object whose parser was just built."""


@pytest.fixture(scope="module")
def parse():
    """`hftrain <argv> --print_config` as `hftrain.cli.main` runs it, with the parser built once: building
    it takes most of the ~0.5 s a command costs, and the parse, hftrain's checks of the parsed config
    (`HFTrainCLI.parse_arguments`) and the printed config are those of a fresh parser
    (test_a_reused_parser_prints_what_the_command_prints)."""
    from hftrain import preflight
    from hftrain.cli import HFTrainCLI
    from hftrain.core import console

    class ParserOnly(HFTrainCLI):
        def parse_arguments(self, parser, args) -> None:
            raise _Built(self)

    with pytest.raises(_Built) as built:
        ParserOnly(args=["fit"])
    cli = built.value.args[0]

    def run(argv: list[str]) -> str:
        out, was_verbose = io.StringIO(), console.is_verbose()
        preflight.check([*argv, "--print_config"])
        try:
            with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
                HFTrainCLI.parse_arguments(cli, cli.parser, [*argv, "--print_config"])
        finally:  # a documented `--verbose` must not leave the process's filters off for later tests
            console.configure(verbose=was_verbose)
        assert exit_.value.code in (0, None)
        return out.getvalue()

    return run


def test_a_reused_parser_prints_what_the_command_prints(parse, monkeypatch):
    from hftrain.cli import main

    monkeypatch.chdir(REPO)
    argv = ["validate", "--config", "configs/glue/mrpc.yaml", "--ckpt_path", "best", "--data.batch_size", "8"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*argv, "--print_config"])
    assert parse(argv) == out.getvalue()


@pytest.mark.parametrize(("where", "env", "argv"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_documented_command_parses(where, env, argv, parse, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for key, value in env.items():
        if key.startswith("HFTRAIN_"):
            monkeypatch.setenv(key, value)
    if any(a in ("-h", "--help") or a.endswith(".help") for a in argv) or argv == ["--version"]:
        from hftrain.command import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(argv)
        printed = out.getvalue()
    elif argv[:1] == ["tune"]:
        printed = parse(tune_trial_arguments(argv[1:]))
    else:
        printed = parse(argv)
    assert printed.strip(), f"{where}: `hftrain {' '.join(argv)}` printed nothing"


def tune_trial_arguments(argv: list[str]) -> list[str]:
    """`hftrain tune`'s arguments checked as the search checks them, then as the fit of its first trial (each key
    of the space at a value of its range), which `parse` reads."""
    from hftrain.tuning.settings import check_settings, parameter_arguments, read_arguments

    settings, fit_arguments, _ = read_arguments(argv)
    first = {dimension.key: dimension.first() for dimension in check_settings(settings, fit_arguments)}
    return ["fit", *fit_arguments, *parameter_arguments(first)]


# ---------------------------------------------------------------------------------------------- snippets


def _known_options() -> dict[str, set[str]]:
    tasks = options.task_classes()
    known = {kind: {o.name for name in tasks[kind] for o in options.class_options(name)} for kind in ("model", "data")}
    known["trainer"] = {o.name for o in options.section_options("trainer")}
    known["checkpoint"] = {o.name for o in options.section_options("checkpoint")}
    return known


def _hftrain_name(func: ast.expr, aliases: dict[str, str]) -> str | None:
    """`hftrain.X(…)` or `X(…)` with X imported from hftrain -> "X"."""
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "hftrain":
        return func.attr
    if isinstance(func, ast.Name):
        return aliases.get(func.id)
    return None


def snippet_problems(source: str) -> list[str]:
    """What a snippet names that does not exist: modules, imported names, hftrain options."""
    tree = ast.parse(source)
    problems, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")  # a submodule, or ImportError
                if node.module == "hftrain":
                    aliases[alias.asname or alias.name] = alias.name
    known = _known_options()
    tasks = {name for names in options.task_classes().values() for name in names}
    import hftrain

    trainer_arguments = set(inspect.signature(hftrain.trainer).parameters) | known["trainer"]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not (name := _hftrain_name(node.func, aliases)):
            continue
        if not hasattr(hftrain, name):
            problems.append(f"hftrain has no {name}")
        for keyword in node.keywords:
            if keyword.arg is None:
                continue
            if name in tasks:
                if keyword.arg not in {o.name for o in options.class_options(name)}:
                    problems.append(f"{name} has no option {keyword.arg}")
            elif name == "trainer":
                if keyword.arg not in trainer_arguments:
                    problems.append(f"hftrain.trainer has no argument {keyword.arg}")
            elif name in ("fit", "Run", "tune"):
                if keyword.arg == "tune" and name == "tune":
                    problems += tune_problems(keyword.value)
                elif keyword.arg not in SECTIONS:
                    problems.append(f"hftrain.{name} has no section {keyword.arg}")
                elif isinstance(keyword.value, ast.Dict):
                    for key in keyword.value.keys:
                        if isinstance(key, ast.Constant) and key.value not in known[keyword.arg]:
                            problems.append(f"{keyword.arg} has no option {key.value}")
    return problems


def tune_problems(section: ast.expr | dict) -> list[str]:
    """The settings a `tune` section (a snippet's dict, a config's mapping) names that the search lacks."""
    known = {o.name for o in options.tune_options()}
    keys = [k.value for k in section.keys if isinstance(k, ast.Constant)] if isinstance(section, ast.Dict) else section
    return [f"tune has no setting {key}" for key in keys or {} if key not in known]


@pytest.mark.parametrize(("where", "source"), SNIPPETS, ids=[s[0] for s in SNIPPETS])
def test_documented_snippet_names_real_things(where, source):
    compile(source, where, "exec")
    assert snippet_problems(source) == [], where


def test_the_snippet_check_catches_a_renamed_option():
    """What the check is for: an option that no longer exists, in each place a snippet can pass one."""
    assert snippet_problems('import hftrain\nhftrain.fit("c.yaml", model={"learning_rat": 1e-4})') == [
        "model has no option learning_rat"
    ]
    assert snippet_problems('import hftrain\nhftrain.tune("c.yaml", tune={"n_trial": 4})') == [
        "tune has no setting n_trial"
    ]
    assert snippet_problems("import hftrain\nhftrain.trainer(max_epoch=2)") == [
        "hftrain.trainer has no argument max_epoch"
    ]
    assert snippet_problems("from hftrain import TextClassificationData\nTextClassificationData(text_colum='a')") == [
        "TextClassificationData has no option text_colum"
    ]
    with pytest.raises(ImportError):
        snippet_problems("from hftrain import TextClassifier")


# ------------------------------------------------------------------------------------------ YAML configs


def config_problems(text: str) -> list[str]:
    """The options a YAML config block sets that do not exist: `init_args` keys of its task classes (of
    every task's, when the block names none), trainer and checkpoint keys."""
    import yaml

    config = yaml.safe_load(text)
    if not isinstance(config, dict):
        return []
    known, problems = _known_options(), []
    for section in ("model", "data"):
        part = config.get(section) or {}
        chosen = options.short_name(str(part.get("class_path", "")))
        names = {o.name for o in options.class_options(chosen)} if chosen else known[section]
        problems += [f"{section} has no option {key}" for key in part.get("init_args") or {} if key not in names]
    for section in ("trainer", "checkpoint"):
        problems += [f"{section} has no option {key}" for key in config.get(section) or {} if key not in known[section]]
    return problems + tune_problems(config.get("tune") or {})


CONFIGS = [(f"{page.relative_to(REPO)}:{line}", block) for page, line, block in _blocks({"yaml"})]


@pytest.mark.parametrize(("where", "text"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_documented_config_names_real_options(where, text):
    assert config_problems(text) == [], where


def test_the_config_check_catches_a_renamed_option():
    block = "model:\n  class_path: hftrain.tasks.text_classification.TextClassification\n  init_args:\n"
    assert config_problems(block + "    learning_rat: 1.0e-4\n") == ["model has no option learning_rat"]
    assert config_problems("trainer:\n  max_epoch: 3\n") == ["trainer has no option max_epoch"]
    assert config_problems("tune:\n  n_trial: 3\n") == ["tune has no setting n_trial"]


# ------------------------------------------------------------------------------------------------- links

LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def link_problems(page: Path) -> list[str]:
    problems = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(encoding="utf-8"), re.M)
            if anchor not in {_anchor(h) for h in headings}:
                problems.append(f"{target}: no such heading")
    return problems


@pytest.mark.parametrize("page", [*PAGES, *sorted((REPO / "docs" / "benchmarks").glob("*.md"))], ids=lambda p: p.name)
def test_links_lead_somewhere(page):
    assert link_problems(page) == []


def test_every_picture_is_drawn_from_committed_data(tmp_path):
    """`scripts/make_figures.py` redraws each PNG the docs show from docs/figures/data/, and nothing else."""
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_figures
    finally:
        sys.path.remove(str(REPO / "scripts"))
    make_figures.main(["--out", str(tmp_path)])
    drawn = {p.name for p in tmp_path.glob("*.png")}
    assert drawn == {p.name for p in (REPO / "docs" / "figures").glob("*.png")}
    shown = {Path(t).name for page in PAGES for t in LINK.findall(page.read_text()) if t.endswith(".png")}
    assert shown <= drawn
