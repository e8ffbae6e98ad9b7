"""Multiple choice: pick the right ending (SWAG, HellaSwag) or answer (ARC, RACE) among a row's choices.

The model is `AutoModelForMultipleChoice`: every choice is read with the context as a text pair and scored,
and a softmax over a row's scores picks one. The data comes in SWAG's columns (`sent1`, `sent2`,
`ending0`..`endingN`, `label`), as the HF `run_swag.py` example reads it, or in a general form: a context
column, a column holding the list of choices, and the label (the index of the right choice). Rows may have
different numbers of choices (ARC has 3 to 5): a batch pads the shorter lists, and the padding choices are
left out of the softmax.
"""

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import datasets
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric, MetricCollection
from transformers import AutoModelForMultipleChoice, PreTrainedTokenizerBase

from hftrain.core.data import TaskDataModule
from hftrain.core.data_checks import require_columns, require_text
from hftrain.core.errors import HFTrainError
from hftrain.core.module import Stage, TaskModule, is_validation
from hftrain.core.sources import column

# the batch key of `MultipleChoiceCollator`'s mask of real (not padding) choices
CHOICE_MASK = "choice_mask"


@dataclass(eq=False, repr=False, kw_only=True)
class MultipleChoice(TaskModule):
    """Fine-tune a multiple-choice model: the score of each choice, the highest one chosen.

    Accuracy (the share of rows whose chosen choice is the labelled one) picks the best checkpoint. The
    classifier scores one choice at a time, so a model fine-tuned on 4 choices takes any number.
    """

    pipeline_tag: ClassVar[str] = "multiple-choice"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.model = self.load_pretrained(AutoModelForMultipleChoice)
        # the mean of 0/1 hits: torchmetrics' Accuracy needs a fixed class count, and the count of choices is
        # the data's (and may differ from row to row)
        self.metrics = torch.nn.ModuleDict(
            {stage: MetricCollection({"accuracy": MeanMetric()}, prefix=f"{stage}/") for stage in self.eval_stages}
        )
        self.monitor, self.monitor_mode = "val/accuracy", "max"

    def forward(self, **batch: Any):
        """The model's output; in a batch whose rows have different numbers of choices, the padding choices'
        scores are set to the lowest value (no probability) and the loss is computed over the real ones."""
        mask = batch.pop(CHOICE_MASK, None)
        if mask is None:
            return super().forward(**batch)
        labels = batch.pop("labels", None)
        outputs = super().forward(**batch)
        outputs.logits = outputs.logits.masked_fill(~mask, torch.finfo(outputs.logits.dtype).min)
        if labels is not None:
            outputs.loss = F.cross_entropy(outputs.logits.float(), labels)
        return outputs

    def evaluate(self, batch: dict[str, Any], stage: Stage) -> None:
        self.require_labels(batch, stage)
        outputs = self(**batch)
        size = len(batch["labels"])
        self.log_loss(stage, outputs.loss, batch)
        chosen = outputs.logits.argmax(-1)
        metrics = self.metrics[stage]
        metrics.update((chosen == batch["labels"]).float())
        self.update_custom_metrics(stage, chosen, batch["labels"])
        self.log_dict(metrics, prog_bar=is_validation(stage), batch_size=size)
        rows = self.examples_wanted(stage, batch.get("row"))
        self.add_examples(
            (row["context"], row["choices"][row["gold"]] if "gold" in row else None, row["choices"][i])
            for row, i in zip(rows, chosen.tolist(), strict=False)
        )

    def choice_predictions(self, logits: torch.Tensor, rows: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """Per example: the chosen choice's index (`label`) and text (`choice`, where the row carries its
        choices), its probability (`score`), and every choice's probability (`scores`, in the row's order)."""
        predictions = []
        for index, probs in enumerate(logits.float().softmax(-1).tolist()):
            choices = rows[index].get("choices") if rows else None
            probs = probs[: len(choices)] if choices else probs
            best = max(range(len(probs)), key=probs.__getitem__)
            chosen = {"choice": choices[best]} if choices else {}
            predictions.append({"label": best, **chosen, "score": probs[best], "scores": probs})
        return predictions

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Per row: its id, context, choices and gold label where the data has one, then the prediction."""
        return self.with_rows(batch, self.choice_predictions(self(**batch).logits, batch.get("row")))


@dataclass
class MultipleChoiceCollator:
    """Pads every choice of every row to the batch's longest choice, as transformers'
    `DataCollatorForMultipleChoice` does; ours because that one needs a label in every row (predict data has
    none) and the same number of choices in each. Shorter choice lists are padded by repeating their last
    choice, and `choice_mask` marks the real ones (only in batches that need it)."""

    tokenizer: PreTrainedTokenizerBase

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        counts = [len(f["input_ids"]) for f in features]
        most = max(counts)
        keys = [k for k in features[0] if k != "labels"]
        flat = [
            {k: f[k][min(i, n - 1)] for k in keys} for f, n in zip(features, counts, strict=True) for i in range(most)
        ]
        padded = self.tokenizer.pad(flat, return_tensors="pt")
        batch: dict[str, Any] = {k: v.view(len(features), most, -1) for k, v in padded.items()}
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        if min(counts) < most:
            batch[CHOICE_MASK] = torch.arange(most) < torch.tensor(counts)[:, None]
        return batch


@dataclass(eq=False, repr=False, kw_only=True)
class MultipleChoiceData(TaskDataModule):
    """Rows of a context, its choices and the index of the right one.

    Two forms are read. SWAG's (the `swag` Hub dataset and the files of the HF `run_swag.py` example):
    `sent1` is the context and each choice is `sent2` followed by one of `ending0`, `ending1`, … . The
    general form: a context column and a column holding the list of choices. Unset, the columns are found:
    SWAG's when the data has `sent1` and `ending0`, else `context` and `choices` (and `question`, if the data
    has one, read before each choice).

    Args:
        context_column: Column with the context (SWAG's `sent1`), read as the first text of every pair.
        question_column: Column with a text that starts every choice (SWAG's `sent2`, the start of the
            sentence the endings finish; or a question), if any.
        choices_column: Column holding each row's list of choices (any number, at least 2).
        ending_columns: Columns holding one choice each, instead of `choices_column` (SWAG's `ending0` …
            `ending3`).
        label_column: Column with the index of the right choice (counted from 0; a number or its text).
    """

    context_column: str | None = None
    question_column: str | None = None
    choices_column: str | None = None
    ending_columns: list[str] | None = None
    label_column: str = "label"

    def check_data(self, raw: datasets.DatasetDict) -> None:
        if self.context_column is None and self.choices_column is None and self.ending_columns is None:
            self._find_columns(raw)
        if (self.choices_column is None) == (self.ending_columns is None):
            raise HFTrainError(
                "Multiple choice reads the choices from one list column (data.choices_column) or from one column "
                f"per choice (data.ending_columns); {'both are' if self.choices_column else 'neither is'} set. "
                "Set exactly one."
            )
        if self.ending_columns is not None and len(self.ending_columns) < 2:
            raise HFTrainError(f"data.ending_columns names {self.ending_columns}: give at least 2 choice columns.")
        columns = {
            "context_column": self.context_column or "context",
            "question_column": self.question_column,
            "choices_column": self.choices_column,
            "label_column": self.label_column,
        }
        columns.update({f"ending_columns[{i}]": name for i, name in enumerate(self.ending_columns or [])})
        self.context_column = columns["context_column"]
        require_columns(raw, columns, self.source, optional=("label_column",))
        require_text(raw, [self.context_column, self.question_column, *(self.ending_columns or [])], self.source)
        for split, dataset in raw.items():
            if self.label_column in dataset.column_names and all(
                v in (-1, "", None) for v in column(dataset, self.label_column)
            ):  # Hub convention for hidden labels (SWAG's test split): the split is unlabeled
                raw[split] = dataset.remove_columns(self.label_column)
        for split, dataset in raw.items():
            rows = dataset[:]
            choices = self._choices(rows, split)
            if self.label_column in rows:
                self._labels(rows[self.label_column], choices, split)

    def _find_columns(self, raw: datasets.DatasetDict) -> None:
        """Find the columns when none is set: SWAG's, else `context` + `choices`."""
        names = raw["train" if "train" in raw else next(iter(raw))].column_names
        endings = sorted((n for n in names if re.fullmatch(r"ending\d+", n)), key=lambda n: int(n[6:]))
        if "sent1" in names and endings:
            self.context_column, self.ending_columns, question = "sent1", endings, "sent2"
        else:
            self.context_column, self.choices_column, question = "context", "choices", "question"
        if self.question_column is None and question in names:
            self.question_column = question
        choices = f"{self.ending_columns[0]}..{self.ending_columns[-1]}" if self.ending_columns else "choices"
        rank_zero_info(
            f"Reading the columns {self.context_column}, {f'{self.question_column} + ' if self.question_column else ''}"
            f"{choices} (data.context_column unset)."
        )

    def _choices(self, rows: dict[str, list], split: str) -> list[list[str]]:
        """Each row's choices as the texts read after the context (`question_column` first, as SWAG's `sent2`)."""
        if self.ending_columns:
            lists = [list(choices) for choices in zip(*(rows[n] for n in self.ending_columns), strict=True)]
        else:
            lists = rows[self.choices_column]
        for row, choices in enumerate(lists):
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise HFTrainError(
                    f"The {split} data ({self.source(split)}) has {choices!r} at row {row + 1} in column "
                    f"'{self.choices_column}'; each row needs a list of at least 2 choice texts. Fix the row."
                )
        if not self.question_column:
            return lists
        return [[f"{q} {c}" for c in choices] for q, choices in zip(rows[self.question_column], lists, strict=True)]

    def _labels(self, values: list, choices: list[list[str]], split: str) -> list[int]:
        """Labels as choice indexes; a label that is not the index of one of the row's choices is an error."""
        labels = []
        for row, (value, options) in enumerate(zip(values, choices, strict=True)):
            index = int(value) if isinstance(value, int) or (isinstance(value, str) and value.isdigit()) else None
            if index is None or not 0 <= index < len(options):
                raise HFTrainError(
                    f"The {split} data ({self.source(split)}) has the label {value!r} at row {row + 1} in column "
                    f"'{self.label_column}', but the row has {len(options)} choices: the label must be the index "
                    f"of the right one, 0 to {len(options) - 1}. Fix the row."
                )
            labels.append(index)
        return labels

    def row_fields(self, batch: dict[str, list], split: str, features: datasets.Features) -> dict[str, list]:
        """The context, the choices as read after it, and the gold choice's index where the data has one."""
        choices = self._choices(batch, split)
        fields = {"context": batch[self.context_column], "choices": choices}
        if self.label_column in batch:
            fields["gold"] = self._labels(batch[self.label_column], choices, split)
        return fields

    def input_columns(self) -> list[str]:
        choices = self.ending_columns or [self.choices_column]
        return [self.context_column] + ([self.question_column] if self.question_column else []) + choices

    def encode(
        self, batch: dict[str, list], split: str, features: datasets.Features, rows: list[int]
    ) -> dict[str, list]:
        """Each (context, choice) pair tokenized as `run_swag.py` does, then grouped back into rows."""
        choices = self._choices(batch, split)
        contexts = [
            context for context, options in zip(batch[self.context_column], choices, strict=True) for _ in options
        ]
        flat = self.tokenizer(
            contexts, [c for options in choices for c in options], truncation=True, max_length=self.max_length
        )
        encoded: dict[str, list] = {}
        for key, values in flat.items():
            start, encoded[key] = 0, []
            for options in choices:
                encoded[key].append(values[start : start + len(options)])
                start += len(options)
        if self.label_column in batch:
            encoded["labels"] = self._labels(batch[self.label_column], choices, split)
        return encoded

    @property
    def collator(self) -> MultipleChoiceCollator:
        return MultipleChoiceCollator(self.tokenizer)
