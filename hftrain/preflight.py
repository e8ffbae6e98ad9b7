"""Mistakes the config and command line show by themselves, reported before any framework is imported.

Building the real parser imports torch, Lightning, transformers and datasets: seconds before a mistyped
subcommand, a missing `class_path`, a misspelled key or `--trainer.max_epochs -3` could be named, and
Lightning names the last only as a traceback once the model has loaded. This module reads the config files
and the arguments as plain YAML, in the order jsonargparse merges them, and refuses what is wrong on its face.
It judges only what it can tell for certain: a value of the wrong type, or anything it cannot read, is left to
the full parser, which validates everything afterwards. `cli.py` runs the same value checks on the parsed
config (which also holds the environment's defaults), so a run from Python is checked alike.
"""

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hftrain import _EXPORTS, options
from hftrain.core.errors import HFTrainError, no_such_class_option, not_a_task_class, not_an_option

TASK_SECTIONS = ("model", "data")
OPTION_SECTIONS = ("trainer", "checkpoint", "prediction_writer")
# LightningCLI's sections of a torch class (`--optimizer torch.optim.AdamW --optimizer.lr 5e-5`): their options
# are the chosen class's, which the parser reads
CLASS_SECTIONS = ("optimizer", "lr_scheduler")


def check(argv: list[str]) -> None:
    """Refuse arguments (`hftrain` without the program name) whose mistake shows without importing anything."""
    if any(arg in ("-h", "--help") or str(arg).endswith(".help") for arg in argv):
        return  # the help pages name what a config lacks
    argv = [str(arg) for arg in argv]
    subcommand = argv[0] if argv and not argv[0].startswith("-") else None
    if subcommand is not None and subcommand not in options.SUBCOMMANDS:
        matches = options.closest(subcommand, list(options.SUBCOMMANDS))
        raise HFTrainError(
            f"'{subcommand}' is not a subcommand."
            + (f" Did you mean {matches[0]}?" if matches else "")
            + f" The subcommands are {', '.join(options.SUBCOMMANDS)} (`hftrain --help`)."
        )
    command = f"hftrain {subcommand or 'fit'}"
    config = merged_config(argv[1:] if subcommand else argv, command)
    for kind in TASK_SECTIONS:
        _check_task_section(kind, config[kind], config["files"], subcommand or "fit")
    for section in OPTION_SECTIONS:
        known = [o.name for o in options.section_options(section)]
        unknown = [f"{section}.{name}" for name in config[section] if name not in known]
        if unknown:
            raise not_an_option(unknown, [f"{section}.{name}" for name in known], command)
    check_trainer_values(config["trainer"])
    if subcommand and "print_config" not in dict(argument_pairs(argv)):  # printing the config needs no data
        check_stage_data(subcommand, config["data"]["init_args"])


# ------------------------------------------------------------------ the config, merged as jsonargparse merges it


def merged_config(argv: list[str], command: str = "hftrain fit") -> dict[str, Any]:
    """The sections that config files and `--section.option value` arguments set, later ones winning:
    `model`/`data` as `{"class_path": …, "init_args": {…}}`, the option sections as `{option: value}`, and
    the config files read under `files`. Values nested below an option (`--trainer.logger.init_args.x`) are
    recorded as the option being set, with no value to judge."""
    config: dict[str, Any] = {kind: {"class_path": None, "init_args": {}} for kind in TASK_SECTIONS}
    config.update({section: {} for section in OPTION_SECTIONS}, files=[])
    for key, text in argument_pairs(argv):
        if key == "config":
            config["files"].append(text)
            _merge_file(config, text)
            continue
        value = yaml_value(text)
        section, _, option = key.partition(".")
        if section in TASK_SECTIONS:
            _set_task_option(config[section], option, value)
        elif section in OPTION_SECTIONS:
            if not option and isinstance(value, Mapping):
                config[section].update(value)
            elif option:
                name, nested, _ = option.partition(".")
                config[section][name] = NESTED if nested else value
        elif option and section not in CLASS_SECTIONS:
            # `--trainr.max_epochs`; a plain `--key` may be an option of one subcommand's method (predict's)
            chosen = [_short(config[kind]["class_path"]) for kind in TASK_SECTIONS]
            raise not_an_option([key], options.all_names(*chosen), command)
    return config


class _Nested:
    """A value set below an option (`trainer.logger.init_args.save_dir`): the option is set, its value unknown."""

    def __repr__(self) -> str:
        return "<nested>"


NESTED = _Nested()


def argument_pairs(argv: list[str]) -> list[tuple[str, str | None]]:
    """`--key value`, `--key=value` and `-c file` as (key, value) pairs in order; None for a flag. A value may
    start with a dash (`--trainer.max_epochs -3`), an option never with one."""
    pairs, i = [], 0
    while i < len(argv):
        arg = str(argv[i])
        if _is_option(arg):
            key, sep, value = arg.lstrip("-").partition("=")
            if not sep:
                following = str(argv[i + 1]) if i + 1 < len(argv) else None
                value = following if following is not None and not _is_option(following) else None
                i += value is not None
            pairs.append(("config" if key == "c" else key, value))
        i += 1
    return pairs


def _is_option(arg: str) -> bool:
    return arg.startswith("--") or arg == "-c"


def yaml_value(text: str | None) -> Any:
    import yaml  # only here: `hftrain --version` needs none of it

    if text is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _merge_file(config: dict[str, Any], file: str | None) -> None:
    import yaml

    if file is not None and Path(file).is_file():
        try:
            content = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise HFTrainError(f"The config file {file} is not valid YAML: {err}") from err
    else:
        content = yaml_value(file)  # jsonargparse also takes the config itself in place of a file
        if not isinstance(content, Mapping):
            raise HFTrainError(
                f"The config file {file} does not exist (looked in {Path(file or '').resolve()}). Check the path; "
                "relative paths are read from the folder you run hftrain in."
            )
    if not isinstance(content, Mapping):
        return  # the full parser names a config that is not a mapping
    for kind in TASK_SECTIONS:
        section = content.get(kind)
        if isinstance(section, str):
            config[kind]["class_path"] = section
        elif isinstance(section, Mapping):
            _set_task_option(config[kind], "", section)
    for section in OPTION_SECTIONS:
        if isinstance(content.get(section), Mapping):
            config[section].update(content[section])


def _set_task_option(section: dict[str, Any], option: str, value: Any) -> None:
    """Set `--model X`, `--model {class_path: …}`, `--model.class_path X`, `--model.init_args.x v` or
    `--model.x v` on a model or data section."""
    if not option:
        if isinstance(value, Mapping):
            section["class_path"] = value.get("class_path", section["class_path"])
            section["init_args"].update(value.get("init_args") or {})
        elif value is not None:
            section["class_path"] = str(value)
    elif option == "class_path":
        section["class_path"] = None if value is None else str(value)
    elif option == "init_args" and isinstance(value, Mapping):
        section["init_args"].update(value)
    elif option not in ("help", "dict_kwargs", "init_args"):
        name, nested, _ = option.removeprefix("init_args.").partition(".")
        section["init_args"][name] = NESTED if nested else value


def _short(class_path: str | None) -> str | None:
    return options.short_name(class_path) if class_path else None


# ------------------------------------------------------------------ the checks


def _check_task_section(kind: str, section: dict[str, Any], files: list[str], subcommand: str) -> None:
    """A model or data class must be chosen, be one of hftrain's when named without a module, and be given only
    options it has; the model needs a model to load."""
    class_path = section["class_path"]
    if not class_path:
        if any(name.startswith(f"HFTRAIN_{subcommand.upper()}__{kind.upper()}") for name in os.environ):
            return  # chosen by an environment variable, which the full parser reads
        example = options.task_classes()[kind][0]
        where = f"{', '.join(files)} set{'s' if len(files) == 1 else ''}" if files else "The arguments set"
        raise HFTrainError(
            f"{where} no {kind} class: add `class_path: {_EXPORTS[example]}.{example}` (or another "
            f"task's class) under `{kind}:` in the config, or pass `--{kind} {example}`. The {kind} classes are "
            f"{', '.join(options.task_classes()[kind])}."
        )
    name = _short(class_path)
    if name is None:
        if "." not in class_path:
            raise not_a_task_class(kind, class_path)
        return  # a class of the user's own: the full parser reads its signature
    known = {o.name for o in options.class_options(name)}
    for option in section["init_args"]:
        if option not in known:
            raise no_such_class_option(kind, name, option, f"hftrain {subcommand}")
    if kind == "model" and "model_name_or_path" in section["init_args"]:
        model = section["init_args"]["model_name_or_path"]
        if model is None or (isinstance(model, str) and not model.strip()):
            raise HFTrainError(
                "model.model_name_or_path is empty: set the model to fine-tune, a Hugging Face Hub id "
                "(`bert-base-uncased`) or a local folder with its config and weights (a run's hf_model/)."
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and not math.isnan(value)


def _batches(value: Any) -> bool:
    """Lightning's rule for `limit_*_batches`: a fraction in [0, 1] or a whole number of batches."""
    return 0 <= value <= 1 if isinstance(value, float) else value >= 0


# option -> (the values it takes, as a test on a value of the right type; what they are, in words). A value of
# another type is the full parser's to report. Lightning checks some of these only at fit start, after the model
# has loaded, and some not at all (`accumulate_grad_batches: 0` divides by zero mid-epoch).
TRAINER_RULES: dict[str, tuple[Callable[[Any], bool], Callable[[Any], bool], str]] = {
    "max_epochs": (_is_int, lambda v: v >= -1, "a number of epochs, 0 or more, or -1 for no limit"),
    "min_epochs": (_is_int, lambda v: v >= 0, "a number of epochs, 0 or more"),
    "max_steps": (_is_int, lambda v: v >= -1, "a number of optimizer steps, 0 or more, or -1 for no limit"),
    "min_steps": (_is_int, lambda v: v >= 0, "a number of optimizer steps, 0 or more"),
    "val_check_interval": (
        _is_number,
        lambda v: 0 < v <= 1 if isinstance(v, float) else v >= 1,
        "a fraction of an epoch in (0, 1] (0.25: four times an epoch) or a number of training batches, 1 or more",
    ),
    "check_val_every_n_epoch": (_is_int, lambda v: v >= 1, "a number of epochs, 1 or more (null: count batches)"),
    "accumulate_grad_batches": (_is_int, lambda v: v >= 1, "a number of batches per optimizer step, 1 or more"),
    "log_every_n_steps": (_is_int, lambda v: v >= 0, "a number of steps, 0 or more (null: sized to the run)"),
    "num_sanity_val_steps": (_is_int, lambda v: v >= -1, "a number of batches, 0 or more, or -1 for all"),
    "gradient_clip_val": (_is_number, lambda v: v >= 0, "a gradient norm, 0 or more (null: no clipping)"),
    "num_nodes": (_is_int, lambda v: v >= 1, "a number of machines, 1 or more"),
    "devices": (_is_int, lambda v: v >= 1 or v == -1, "a number of devices, 1 or more, -1 for all, or 'auto'"),
    **{
        f"limit_{stage}_batches": (
            _is_number,
            _batches,
            "a fraction of the batches in [0, 1] (1.0: all) or a number of batches, 0 or more",
        )
        for stage in ("train", "val", "test", "predict")
    },
}


def check_trainer_values(trainer: Mapping[str, Any]) -> None:
    """Refuse a trainer value outside what its option takes, e.g. `trainer.max_epochs: -3`."""
    for name, (of_type, valid, takes) in TRAINER_RULES.items():
        value = trainer.get(name)
        if value is not None and of_type(value) and not valid(value):
            raise HFTrainError(
                f"trainer.{name} must be {takes}; got {value!r}. Set it in the config's `trainer:` section or "
                f"with --trainer.{name}."
            )


def check_stage_data(subcommand: str, data: Mapping[str, Any]) -> None:
    """`validate`, `test` and `predict` need their split: said before a model or checkpoint loads, and before
    anything is written to the run folder. Splits of a Hub dataset are known only once it is loaded, and
    checked then (`cli.check_split_loaded`)."""
    if data.get("dataset_name"):
        return
    if subcommand == "test" and not data.get("test_file"):
        raise HFTrainError(
            "hftrain test has no test data: set data.test_file (a file like the training data, with labels), "
            "e.g. `--data.test_file test.csv`."
        )
    if subcommand == "validate" and not data.get("validation_file"):
        if not data.get("train_file") or data.get("validation_split_percentage") == 0:
            raise HFTrainError(
                "hftrain validate has no validation data: set data.validation_file, or data.train_file with "
                "data.validation_split_percentage above 0 to hold out part of it as at fit."
            )
    if subcommand == "predict":
        predict_file = data.get("predict_file")
        if not (predict_file or data.get("test_file")):
            raise HFTrainError(
                "hftrain predict has nothing to predict on: set data.predict_file (a file like the training data; "
                "labels are not needed), e.g. `--data.predict_file new.csv`."
            )
        if isinstance(predict_file, str) and not Path(predict_file).expanduser().is_file():
            raise HFTrainError(
                f"data.predict_file '{predict_file}' does not exist (looked in {Path(predict_file).resolve()}). "
                "Check the path; relative paths are read from the folder you run hftrain in."
            )
