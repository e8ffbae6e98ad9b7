"""The option list `hftrain <subcommand> --help` and the did-you-mean read from source files, checked against
the real signatures, so that the two cannot drift apart."""

import ast
import dataclasses
import inspect

import pytest
from lightning.pytorch import Trainer

import hftrain
from hftrain.core.callbacks import PredictionWriter, TaskCheckpoint
from hftrain.options import CHECKPOINT_DEFAULTS, TRAINER_DEFAULTS, class_options, section_options, task_classes

CLASSES = ["TaskModule", "TaskDataModule", *task_classes()["model"], *task_classes()["data"]]


def _value(source: str | None):
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return source  # an expression (a constant's name): compared as text


@pytest.mark.parametrize("name", CLASSES)
def test_task_options_match_the_dataclass_fields(name):
    fields = [f for f in dataclasses.fields(getattr(hftrain, name)) if f.init]
    read = class_options(name)
    assert [o.name for o in read] == [f.name for f in fields]
    for option, field in zip(read, fields, strict=True):
        expected = None if field.default is dataclasses.MISSING else field.default
        assert _value(option.default) == expected, option
        assert option.help, f"{name}.{option.name} has no docstring line"


@pytest.mark.parametrize(
    ("section", "cls", "overrides"),
    [
        ("trainer", Trainer, TRAINER_DEFAULTS),
        ("checkpoint", TaskCheckpoint, CHECKPOINT_DEFAULTS),
        ("prediction_writer", PredictionWriter, {}),
    ],
)
def test_section_options_match_the_signatures(section, cls, overrides):
    parameters = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    read = section_options(section)
    assert [o.name for o in read] == [p.name for p in parameters]
    for option, parameter in zip(read, parameters, strict=True):
        expected = overrides.get(parameter.name, parameter.default)
        if isinstance(expected, int | float | str | bool | type(None)):
            assert _value(option.default) == expected, option
