"""The hooks every task must provide are abstract on the base classes: a task missing one cannot be built, so it
fails as its config is instantiated, not at predict time; optional hooks keep working defaults."""

from dataclasses import dataclass

import pytest

import hftrain
from hftrain.core.data import TaskDataModule
from hftrain.core.module import TaskModule
from hftrain.tasks.text_classification import TextClassification, TextClassificationData

TASK_CLASSES = [name for name, module in hftrain._EXPORTS.items() if module.startswith("hftrain.tasks.")]


def test_a_task_module_without_predict_step_cannot_be_built(tiny_bert):
    @dataclass(eq=False, repr=False, kw_only=True)
    class NoPredict(TaskModule):  # a new task that forgot one hook, as LightningCLI builds it
        def evaluate(self, batch, stage) -> None:
            pass

    assert NoPredict.__abstractmethods__ == frozenset({"predict_step"})
    with pytest.raises(TypeError, match="abstract method predict_step"):
        NoPredict(model_name_or_path=tiny_bert)


def test_a_data_module_without_encode_or_collator_cannot_be_built(tiny_bert, sentiment_files):
    @dataclass(eq=False, repr=False, kw_only=True)
    class Incomplete(TaskDataModule):
        def check_data(self, raw) -> None:
            pass

        def input_columns(self) -> list[str]:
            return ["text"]

    assert Incomplete.__abstractmethods__ == frozenset({"encode", "collator"})
    with pytest.raises(TypeError, match="abstract methods collator, encode"):
        Incomplete(tokenizer_name=tiny_bert, train_file=sentiment_files["train"])


def test_optional_hooks_keep_their_defaults():
    @dataclass(eq=False, repr=False, kw_only=True)
    class Minimal(TextClassificationData):
        pass

    assert Minimal.row_fields is TextClassificationData.row_fields
    assert TaskModule.log_metrics is TextClassification.log_metrics  # logged per batch: nothing to add at the end
    assert not {"log_metrics", "row_fields", "preprocess", "predict_rows", "loss_tokens"} & (
        TaskModule.__abstractmethods__ | TaskDataModule.__abstractmethods__
    )


@pytest.mark.parametrize("name", TASK_CLASSES)
def test_every_shipped_task_provides_every_hook(name):
    assert getattr(hftrain, name).__abstractmethods__ == frozenset()
