"""The `hftrain` command: answers `--help` and `--version` at once, hands everything else to the CLI.

Building the full command line means importing torch, Lightning, transformers and datasets (several
seconds on a laptop, more on a busy login node) to read every class signature. Asking what the command
does should not cost that, so the help pages are written here, from the option list `options` reads out
of the source files, and the heavy imports start only once a subcommand runs; mistakes the config shows by
itself (`preflight`) are named before them. `hftrain fit --help` lists the options of the config's task (or
of every task's base, and the tasks to choose from).
"""

import ast
import os
import sys
import textwrap

from hftrain import __version__, options, preflight
from hftrain.core.errors import HFTrainError

SUBCOMMANDS = options.SUBCOMMANDS

HELP = f"""usage: hftrain [-h] [--version] {{{",".join(SUBCOMMANDS)}}} ...

Fine-tune pretrained Hugging Face transformers with PyTorch Lightning.

subcommands (`hftrain <subcommand> --help` lists every option):
{"".join(f"  {name:<10}{text}{chr(10)}" for name, text in SUBCOMMANDS.items())}
examples:
  hftrain fit --config configs/quickstart.yaml
  hftrain fit --config configs/glue/mrpc.yaml --config configs/trainer/gpu.yaml
  hftrain test --config configs/glue/mrpc.yaml --ckpt_path best

options:
  -h, --help  show this help message and exit
  --version   print the version and exit
"""

SECTION_TITLES = {
    "trainer": "trainer: Lightning's Trainer",
    "checkpoint": "checkpoint: the best and last checkpoints (Lightning's ModelCheckpoint; monitor defaults to the "
    "task's main metric)",
    "prediction_writer": "prediction_writer: where `predict` writes",
}


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else [str(a) for a in args]
    if argv in (["-h"], ["--help"]):
        print(HELP, end="")
    elif argv == ["--version"]:
        print(f"hftrain {__version__}")
    elif not argv:
        print(HELP, end="", file=sys.stderr)
        raise SystemExit(2)
    elif argv[0] in SUBCOMMANDS and any(a in ("-h", "--help") or a.endswith(".help") for a in argv[1:]):
        print(subcommand_help(argv[0], argv[1:]), end="")
    elif argv[0] == "tune":
        from hftrain.tuning.search import main as tune

        tune(argv[1:])
    else:
        try:
            preflight.check(argv)
        except HFTrainError as err:
            if os.environ.get("HFTRAIN_DEBUG") == "1":
                raise
            print(f"hftrain: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        from hftrain.cli import main as run

        run(args)


# ------------------------------------------------------------------ help pages


def _option_lines(prefix: str, opts, settings: dict | None = None) -> list[str]:
    lines = []
    for o in opts:
        head = f"  --{prefix}.{o.name} {o.type}".rstrip()
        if settings and o.name in settings:
            head += f" = {settings[o.name]!r} (config" + (f"; default {o.default})" if o.default else ")")
        elif o.default is not None:
            head += f" = {o.default}"
        else:
            head += " (required)"
        lines += [head, *textwrap.wrap(o.help, 116, initial_indent=" " * 6, subsequent_indent=" " * 6)]
    return lines


def _task_summary(name: str) -> str:
    module = options._module_of(name)
    node = options._class("hftrain", module, name)
    return (ast.get_docstring(node) or "").split("\n")[0]


def subcommand_help(subcommand: str, argv: list[str]) -> str:
    """The help of a subcommand; with `--model.help X` / `--data.help X` only that class's options."""
    chosen, settings, files = options.chosen_classes(argv)
    values = options.argument_values(argv)
    for kind in ("model", "data"):
        if f"{kind}.help" in values:
            name = chosen[kind]
            if name is None:
                print(
                    f"hftrain: error: --{kind}.help takes one of: {', '.join(options.task_classes()[kind])}",
                    file=sys.stderr,
                )
                raise SystemExit(2)
            return (
                "\n".join([f"{name}: {_task_summary(name)}", *_option_lines(kind, options.class_options(name))]) + "\n"
            )
    if subcommand == "tune":
        return tune_help()
    lines = [
        f"usage: hftrain {subcommand} [--config FILE] [--<section>.<option> VALUE ...]",
        "",
        SUBCOMMANDS[subcommand],
        "",
        "Options come from YAML configs (--config) and the command line (--trainer.max_epochs 3), later ones",
        f"winning; HFTRAIN_{subcommand.upper()}__<SECTION>__<OPTION> environment variables set defaults of the "
        f"options outside model and data (HFTRAIN_{subcommand.upper()}__TRAINER__MAX_EPOCHS=3).",
        "",
        "general:",
    ]
    for name, (kind, text) in options.GENERAL.items():
        lines += [f"  --{name} {kind}".rstrip(), f"      {text}"]
    for kind in ("model", "data"):
        name = chosen[kind]
        lines.append("")
        if name:
            source = f" (from {', '.join(files)})" if files else ""
            lines.append(f"{kind}: {name}{source}: {_task_summary(name)}")
            lines += _option_lines(kind, options.class_options(name), settings[kind])
        else:
            base = "TaskModule" if kind == "model" else "TaskDataModule"
            lines.append(f"{kind}: every task's options (a config, or --{kind} <class>, lists its task's too)")
            lines += _option_lines(kind, options.class_options(base))
    if not (chosen["model"] and chosen["data"]):
        lines += ["", "tasks (`hftrain fit --model.help <class>` lists one's options):"]
        for model, data in zip(options.task_classes()["model"], options.task_classes()["data"], strict=True):
            lines.append(f"  {model} / {data}: {_task_summary(model)}")
    for section, title in SECTION_TITLES.items():
        if section != "prediction_writer" or subcommand == "predict":
            lines += ["", title, *_option_lines(section, options.section_options(section))]
    return "\n".join(lines) + "\n"


def tune_help() -> str:
    """`hftrain tune --help`: the `tune:` section's settings; the rest of the options are fit's."""
    lines = [
        "usage: hftrain tune --config TASK.yaml --config SEARCH.yaml [--tune.<setting> VALUE ...] [fit options]",
        "",
        SUBCOMMANDS["tune"],
        "",
        "Every trial is an `hftrain fit` of the task config with the trial's values, in runs/<name>/tune/trial_<N>/;",
        "the options of fit (`hftrain fit --help`) apply to every trial. Run the same command again, or in several",
        "processes or Slurm jobs at once, to continue the study to n_trials. docs/tuning.md has the guide.",
        "",
        "tune: (a section of a config file, or --tune.<setting> VALUE)",
        *_option_lines("tune", options.tune_options()),
    ]
    return "\n".join(lines) + "\n"
