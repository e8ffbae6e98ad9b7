"""The command line's options, read from the source of the classes behind them, without importing them.

Building the real parser imports torch, Lightning, transformers and datasets to read every signature: 9 s
and more on a busy machine before `hftrain fit --help` could print a line. The option names, types,
defaults and docstring lines are all in the source files, so this module reads them with `ast` instead
(tens of milliseconds) for `--help`, `--model.help`/`--data.help` and the did-you-mean of parser errors.
`tests/test_options.py` checks every class read here against its real signature, so the two cannot drift.

The defaults the CLI sets on top of the classes' own are kept here as plain data, and `cli.py` takes them
from here, so the help shows what a run really uses.
"""

import ast
import difflib
import importlib.util
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from hftrain import _EXPORTS

SUBCOMMANDS = {
    "fit": "Fine-tune a model; resume with --ckpt_path last.",
    "validate": "Compute validation metrics of a checkpoint (--ckpt_path best|last|<file>).",
    "test": "Compute test metrics of a checkpoint on data.test_file.",
    "predict": "Write predictions of a checkpoint on data.predict_file to predictions.jsonl.",
    "tune": "Search hyperparameters: trials of fit over a search space (a `tune:` section), with Optuna.",
}

# LightningCLI defaults set by hftrain, as --help shows them (trainer.callbacks and the logger are set in cli.py)
TRAINER_DEFAULTS = {
    # the HF Trainer's num_train_epochs: Lightning's own default, None, trains for 1000 epochs
    "max_epochs": 3,
    "gradient_clip_val": 1.0,  # the HF Trainer's max_grad_norm default
    "enable_model_summary": False,  # the run's first lines give the model's size; --verbose shows the summary
}
CHECKPOINT_DEFAULTS = {"save_last": True, "filename": "epoch={epoch}-step={step}", "auto_insert_metric_name": False}
SEED = 42

# section -> (package, file in it, class) of the options that do not depend on the task
SECTIONS = {
    "trainer": ("lightning", "pytorch/trainer/trainer.py", "Trainer"),
    "checkpoint": ("lightning", "pytorch/callbacks/model_checkpoint.py", "ModelCheckpoint"),
    "prediction_writer": ("hftrain", "core/callbacks.py", "PredictionWriter"),
}
SECTION_DEFAULTS = {"trainer": TRAINER_DEFAULTS, "checkpoint": CHECKPOINT_DEFAULTS}
# options of the trainer's own methods (`fit(ckpt_path=...)`) and of LightningCLI, by subcommand
GENERAL = {
    "config": ("FILE", "A YAML config; repeat to combine (later files and options win)."),
    "print_config": ("", "Print the resolved config (all defaults filled in) and exit."),
    "verbose": ("", "Show every message of Lightning, transformers and datasets, and the model summary."),
    "seed_everything": ("INT", f"Seed of every random generator (default {SEED})."),
    "ckpt_path": ("PATH", "best, last (of the newest run of this config) or a .ckpt file; fit resumes from it."),
}


@dataclass(frozen=True)
class Option:
    name: str
    type: str
    default: str | None  # None: required
    help: str


@cache
def _tree(package: str, path: str) -> ast.Module:
    spec = importlib.util.find_spec(package)  # a top-level package: found, not imported
    root = Path(next(iter(spec.submodule_search_locations)))
    return ast.parse((root / path).read_text(encoding="utf-8"))


def _class(package: str, path: str, name: str) -> ast.ClassDef:
    return next(n for n in _tree(package, path).body if isinstance(n, ast.ClassDef) and n.name == name)


def _docstring_args(node: ast.AST | None, first_sentence: bool = False) -> dict[str, str]:
    """The entries of a Google-style `Args:` section (with `first_sentence`, their first sentences)."""
    text = ast.get_docstring(node) if node is not None else None
    if not text or "Args:" not in text:
        return {}
    entries: dict[str, list[str]] = {}
    indent, current = None, None
    for line in text.split("Args:", 1)[1].splitlines()[1:]:
        stripped = line.strip()
        width = len(line) - len(line.lstrip())
        if not stripped:
            continue
        if indent is None:
            indent = width
        if width < indent:
            break
        name, sep, rest = stripped.partition(":")
        if width == indent and sep and name.replace("_", "").isalnum():
            current = name.split(" ")[0]
            entries[current] = [rest.strip()]
        elif current:
            entries[current].append(stripped)
    texts = {name: " ".join(parts).replace("``", "`") for name, parts in entries.items()}
    return {name: SENTENCE_END.split(text, 1)[0] for name, text in texts.items()} if first_sentence else texts


# a full stop that ends a sentence: followed by a capital, and not the one of "e.g." or "i.e."
SENTENCE_END = re.compile(r"(?<=\.)(?<!e\.g\.)(?<!i\.e\.)\s+(?=[A-Z])")


def _type(annotation: ast.expr | None) -> str:
    if annotation is None:
        return ""
    text = ast.unparse(annotation)
    if text.startswith("Literal["):
        return "{" + ",".join(str(v) for v in ast.literal_eval(text[len("Literal") :])) + "}"
    return text


def _init_options(cls: ast.ClassDef) -> list[Option]:
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:
        return []
    params = init.args.args[1:] + init.args.kwonlyargs
    defaults = [None] * (len(init.args.args) - 1 - len(init.args.defaults)) + init.args.defaults
    defaults += init.args.kw_defaults
    docs = {**_docstring_args(cls, first_sentence=True), **_docstring_args(init, first_sentence=True)}
    return [
        Option(p.arg, _type(p.annotation), None if d is None else ast.unparse(d), docs.get(p.arg, ""))
        for p, d in zip(params, defaults, strict=True)
    ]


def _module_of(name: str) -> str:
    return _EXPORTS[name].removeprefix("hftrain.").replace(".", "/") + ".py"


def _dataclass_options(path: str, name: str) -> list[Option]:
    """A task class's dataclass fields, its hftrain base's first (as `dataclasses.fields` orders them)."""
    cls = _class("hftrain", path, name)
    options: dict[str, Option] = {}
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in _EXPORTS:
            options.update({o.name: o for o in _dataclass_options(_module_of(base.id), base.id)})
    docs = _docstring_args(cls)
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if ast.unparse(node.annotation).startswith("ClassVar"):
                continue
            name_ = node.target.id
            inherited = options.get(name_)
            help_ = docs.get(name_) or (inherited.help if inherited else "")
            default = None if node.value is None else ast.unparse(node.value)
            options[name_] = Option(name_, _type(node.annotation), default, help_)
    return list(options.values())


def task_classes() -> dict[str, list[str]]:
    """The task modules (`TextClassification`, …) and data modules (`TextClassificationData`, …) by kind."""
    tasks = [name for name, module in _EXPORTS.items() if module.startswith("hftrain.tasks.")]
    return {"model": [n for n in tasks if not n.endswith("Data")], "data": [n for n in tasks if n.endswith("Data")]}


def short_name(class_path: str) -> str | None:
    """`hftrain.tasks.text_classification.TextClassification` or `TextClassification` -> `TextClassification`
    when it is one of hftrain's classes, else None."""
    name = class_path.rsplit(".", 1)[-1]
    return name if name in _EXPORTS and class_path in (name, f"{_EXPORTS[name]}.{name}") else None


@cache
def class_options(name: str) -> tuple[Option, ...]:
    """The options of one of hftrain's task or data module classes, by short name."""
    return tuple(_dataclass_options(_module_of(name), name))


def tune_options() -> list[Option]:
    """The settings of the `tune:` section (`hftrain.tuning.settings.TuneSettings`)."""
    return [
        Option(o.name, o.type, "{}" if "default_factory" in str(o.default) else o.default, o.help)
        for o in _dataclass_options("tuning/settings.py", "TuneSettings")
    ]


@cache
def section_options(section: str) -> tuple[Option, ...]:
    package, path, name = SECTIONS[section]
    options = _init_options(_class(package, path, name))
    defaults = SECTION_DEFAULTS.get(section, {})
    return tuple(Option(o.name, o.type, repr(defaults[o.name]), o.help) if o.name in defaults else o for o in options)


def all_names(model: str | None, data: str | None) -> list[str]:
    """Every dotted option name (`trainer.max_epochs`, `data.text_column`), for did-you-mean; without a task
    class given, the options of every task."""
    names = list(GENERAL)
    for section in SECTIONS:
        names += [f"{section}.{o.name}" for o in section_options(section)]
    for kind, chosen in (("model", model), ("data", data)):
        for name in [chosen] if chosen else task_classes()[kind]:
            names += [f"{kind}.{o.name}" for o in class_options(name)]
    return list(dict.fromkeys(names))


# what other tools call an option of ours (`datasets.map`, the HF Trainer), too unlike ours for a spelling match
OTHER_NAMES = {
    "num_proc": "preprocessing_num_workers",
    "dataloader_num_workers": "num_workers",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
}


def closest(name: str, candidates: list[str]) -> list[str]:
    """The candidate a mistyped option most likely meant: its name in hftrain for another tool's name, else the
    nearest spelling."""
    section, dot, last = name.rpartition(".")
    ours = section + dot + OTHER_NAMES.get(last, last)
    if ours != name and ours in candidates:
        return [ours]
    return difflib.get_close_matches(name, candidates, n=1, cutoff=0.7)


def argument_values(argv: list[str]) -> dict[str, list[str]]:
    """`--key value` and `--key=value` pairs of an argument list, by key (without dashes)."""
    found: dict[str, list[str]] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("-"):
            key, sep, value = arg.lstrip("-").partition("=")
            if not sep:
                value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("-") else ""
            found.setdefault("config" if key == "c" else key, []).append(value)
    return found


def chosen_classes(argv: list[str]) -> tuple[dict[str, str | None], dict[str, dict], list[str]]:
    """The task classes the arguments choose (short names, or None), the `init_args` their configs set, and
    the config files read."""
    import yaml  # only here: `hftrain --version` needs none of it

    values = argument_values(argv)
    chosen: dict[str, str | None] = {"model": None, "data": None}
    settings: dict[str, dict] = {"model": {}, "data": {}}
    files = [f for f in values.get("config", []) if Path(f).is_file()]
    for file in files:
        try:
            config = yaml.safe_load(Path(file).read_text())
        except yaml.YAMLError:
            continue  # the run names the broken file
        if not isinstance(config, dict):
            continue
        for kind in chosen:
            section = config.get(kind) or {}
            if isinstance(section, dict) and section.get("class_path"):
                chosen[kind] = short_name(str(section["class_path"])) or chosen[kind]
                settings[kind].update(section.get("init_args") or {})
    for kind in chosen:
        for value in values.get(kind, []) + values.get(f"{kind}.class_path", []) + values.get(f"{kind}.help", []):
            chosen[kind] = short_name(value) or chosen[kind]
    return chosen, settings, files
