"""Checks of a data module's settings, raw splits and inputs to `predict`, each failing early with one paragraph
that names the setting, split, row or input and the fix. Pure functions: a split is named in words by
`describe` (the data module's `source`), so the same checks serve files, Hub datasets and inputs in memory."""

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import datasets

from hftrain.core.errors import HFTrainError
from hftrain.core.sources import column

Describe = Callable[[str], str]


def check_settings(settings: Mapping[str, Any], task: str, loss_reads_padding: bool) -> None:
    """The data settings' values (`settings`: field name -> value) that no run can use; `task` names the class."""
    validation_file = settings["validation_file"]
    for name, file in (validation_file if isinstance(validation_file, dict) else {}).items():
        if not re.fullmatch(r"[\w.-]+", name) or not isinstance(file, str):
            raise HFTrainError(
                f"data.validation_file maps names to files, but has {name!r}: {file!r}. Use names of letters, "
                "digits, '_', '-' and '.' (they become metric keys: val/<name>/...), each with one file path."
            )
    for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
        if settings[name] is not None and settings[name] < 1:
            raise HFTrainError(f"data.{name} must be a positive integer (or unset), got {settings[name]}.")
    for name in ("batch_size", "max_length", "length_group_batches"):
        if settings[name] < 1:
            raise HFTrainError(f"data.{name} must be a positive integer, got {settings[name]}.")
    if settings["eval_batch_size"] is not None and settings["eval_batch_size"] < 1:
        raise HFTrainError(f"data.eval_batch_size must be a positive integer, got {settings['eval_batch_size']}.")
    if settings["shuffle_buffer"] < 1:
        raise HFTrainError(
            f"data.shuffle_buffer must be a positive integer (1: no shuffle), got {settings['shuffle_buffer']}."
        )
    if settings["examples_per_epoch"] is not None and settings["examples_per_epoch"] < 1:
        raise HFTrainError(
            f"data.examples_per_epoch must be a positive integer (or unset), got {settings['examples_per_epoch']}."
        )
    if settings["num_workers"] < 0:
        raise HFTrainError(f"data.num_workers must be 0 or more, got {settings['num_workers']}.")
    if settings["split_by_length"] and loss_reads_padding:
        raise HFTrainError(
            f"data.split_by_length is true, but {task}'s training loss counts the padded "
            "positions of a batch (the answer's start and end are picked among all of them), so a batch split "
            "into less padded parts would train on another loss. Leave data.split_by_length unset or false."
        )
    if not 0 <= settings["validation_split_percentage"] < 100:
        raise HFTrainError(
            f"data.validation_split_percentage must be in [0, 100), got {settings['validation_split_percentage']}."
        )


def require_columns(
    raw: Mapping[str, datasets.Dataset], columns: dict[str, str | None], describe: Describe, optional=()
) -> None:
    """Fail early when a configured column is missing from a split.

    `columns` maps setting names (`text_column`) to column names; columns in `optional` may be absent
    from the predict split, which has no labels.
    """
    for split, dataset in raw.items():
        for setting, name in columns.items():
            if name is None or name in dataset.column_names:
                continue
            if split == "predict" and setting in optional:
                continue
            raise HFTrainError(
                f"The {split} data ({describe(split)}) has no column '{name}' (data.{setting}). "
                f"Its columns are: {', '.join(dataset.column_names)}. Set data.{setting} to one of them."
            )


def require_text(raw: Mapping[str, datasets.Dataset], columns: list[str | None], describe: Describe) -> None:
    """Fail early, naming the row, when a text column holds an empty cell (None) instead of a string;
    columns a split does not have (the predict split's labels) are skipped."""
    for split, dataset in raw.items():
        for name in columns:
            if name is None or name not in dataset.column_names:
                continue
            missing = [i for i, text in enumerate(column(dataset, name)) if not isinstance(text, str)]
            if missing:
                raise HFTrainError(
                    f"The {split} data ({describe(split)}) has no text in column '{name}' at row "
                    f"{missing[0] + 1} ({len(missing)} such rows). Fill in or drop those rows."
                )


def class_names(features: datasets.Features, name: str) -> list[str] | None:
    """The names of a column of ClassLabel ids, or of lists of them (Hub datasets), else None."""
    feature = features.get(name)
    inner = getattr(feature, "feature", feature)
    return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None


def distinct_labels(values: Iterable) -> list[str]:
    """A label set learnt from the data: the distinct values, numbers in numeric order before strings."""
    return [str(v) for v in sorted(set(values), key=lambda v: (isinstance(v, str), v))]


def input_rows(inputs: list[Any], columns: list[str]) -> list[dict[str, Any]]:
    """Raw inputs to `predict` as rows of a predict file. A dict is a row as it would stand in the file (keys
    are column names); otherwise an input fills `columns`: a string the only one, a tuple or list of strings
    several in order (a text pair). An input that fits neither (a pair for a model of single texts) is an
    error saying so."""
    rows = []
    for number, item in enumerate(inputs, 1):
        several = isinstance(item, list | tuple)
        if isinstance(item, Mapping):
            rows.append(dict(item))
        elif several and len(item) == len(columns) > 1:
            rows.append(dict(zip(columns, item, strict=True)))
        elif len(columns) == 1 and not several:
            rows.append({columns[0]: item})
        else:
            raise HFTrainError(_input_shape_error(number, item, columns))
    return rows


def _input_shape_error(number: int, item: Any, columns: list[str]) -> str:
    """Why input `number` to predict does not fit a model trained on `columns`: a pair given to a model of
    single texts, a single text to a model of pairs, or a wrong number of texts."""
    if isinstance(item, list | tuple):
        given = f"a pair of texts {tuple(item)!r}" if len(item) == 2 else f"{len(item)} texts {tuple(item)!r}"
    else:
        given = f"a single text {item!r}"
    if len(columns) == 1:
        return (
            f"Input {number} to predict is {given}, but this model was trained on single texts (column "
            f"'{columns[0]}'). Give one string per input; a list of strings predicts each on its own."
        )
    kind = "pairs of texts" if len(columns) == 2 else f"{len(columns)} texts per example"
    return (
        f"Input {number} to predict is {given}, but this model was trained on {kind} ({', '.join(columns)}). "
        f"Give a tuple of {len(columns)} strings per input, or a dict with those keys."
    )
