"""Text classification: single sentences or pairs (GLUE), multi-class, multi-label and regression.

The model is `AutoModelForSequenceClassification`; its `problem_type` picks the loss (cross-entropy,
binary cross-entropy per label, or MSE). The data module learns the label set from the training data
(or takes `label_names`), and the CLI passes it to the model, so nobody types the number of labels.
"""

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import datasets
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MetricCollection
from torchmetrics.classification import Accuracy, F1Score, MatthewsCorrCoef
from torchmetrics.regression import MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from hftrain.core.data import TaskDataModule
from hftrain.core.data_checks import class_names, distinct_labels, require_columns, require_text
from hftrain.core.errors import HFTrainError
from hftrain.core.losses import check_label_smoothing, class_weight_tensor, cross_entropy
from hftrain.core.module import Stage, TaskModule, is_validation
from hftrain.core.sources import column
from hftrain.core.truncation import tokenize_truncated

ProblemType = Literal["single_label_classification", "multi_label_classification", "regression"]


@dataclass(eq=False, repr=False, kw_only=True)
class TextClassification(TaskModule):
    """Fine-tune a sequence classifier.

    Args:
        label_names: Class names in id order. Set by the CLI from the data; in Python pass
            `data.label_names`. Unset, the pretrained model's own `id2label` is kept.
        problem_type: `single_label_classification`, `multi_label_classification` or `regression`; set by
            the CLI from the data.
        multi_label_threshold: Probability above which a label is predicted in multi-label problems.
        label_smoothing_factor: Train on targets that put this much probability evenly over all labels
            (the HF Trainer's `label_smoothing_factor`); single-label classification only.
        class_weights: Weight of each label in the loss, by label name (`{pos: 1.0, neg: 3.0}`); labels not
            named weigh 1. For imbalanced data. Multi-label problems weigh each label's binary loss.
    """

    pipeline_tag: ClassVar[str] = "text-classification"
    label_names: list[str] | None = None
    problem_type: ProblemType = "single_label_classification"
    multi_label_threshold: float = 0.5
    label_smoothing_factor: float = 0.0
    class_weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        labels: dict[str, Any] = {"problem_type": self.problem_type}
        if self.problem_type == "regression":
            labels["num_labels"] = 1
        else:
            labels.update(self.label_config(self.label_names))
        self.model = self.load_pretrained(AutoModelForSequenceClassification, **labels)
        self.num_labels = self.model.config.num_labels
        if self.problem_type != "regression" and self.num_labels < 2:
            raise HFTrainError(
                f"Classification needs at least 2 labels, but the label set is {self.label_names}. Check "
                "data.label_column, or use problem_type regression for a numeric target."
            )
        self._set_up_loss()
        metrics = self._metrics()
        self.metrics = torch.nn.ModuleDict({stage: metrics.clone(prefix=f"{stage}/") for stage in self.eval_stages})
        self.monitor, self.monitor_mode = {
            "single_label_classification": ("val/accuracy", "max"),
            "multi_label_classification": ("val/f1", "max"),
            "regression": ("val/pearson", "max"),
        }[self.problem_type]

    def _set_up_loss(self) -> None:
        check_label_smoothing(self.label_smoothing_factor)
        reweighted = self.label_smoothing_factor > 0 or self.class_weights
        if self.problem_type == "regression" and reweighted:
            raise HFTrainError(
                "model.label_smoothing_factor and model.class_weights apply to classification, but this is a "
                "regression (float labels). Unset them, or give class labels."
            )
        if self.problem_type == "multi_label_classification" and self.label_smoothing_factor > 0:
            raise HFTrainError(
                "model.label_smoothing_factor applies to single-label classification; this problem is "
                "multi-label. Unset it (model.class_weights does work for multi-label)."
            )
        names = [self.model.config.id2label[i] for i in range(self.num_labels)]
        weights = class_weight_tensor(self.class_weights, names) if self.problem_type != "regression" else None
        self.register_buffer("class_weight", weights, persistent=False)
        self.reweighted = bool(reweighted)

    def forward(self, **batch: Any):
        """The model's output; its loss replaced by the smoothed or class-weighted one when those are set."""
        if not self.reweighted or "labels" not in batch:
            return super().forward(**batch)
        labels = batch.pop("labels")
        outputs = super().forward(**batch)
        if self.problem_type == "multi_label_classification":
            outputs.loss = F.binary_cross_entropy_with_logits(
                outputs.logits.float(), labels.float(), weight=self.class_weight
            )
        else:
            outputs.loss = cross_entropy(outputs.logits, labels, self.class_weight, self.label_smoothing_factor)
        return outputs

    def loss_tokens(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """With class weights on single-label classification, the summed weights of the batch's gold classes:
        the weighted cross-entropy divides by them, so a step over several micro-batches (or a batch split by
        length) weighs each by them. Otherwise the loss is a mean over examples (None)."""
        if self.class_weight is None or self.problem_type != "single_label_classification":
            return None
        return self.class_weight[batch["labels"]].sum()

    def _metrics(self) -> MetricCollection:
        if self.problem_type == "regression":
            return MetricCollection(
                {"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef(), "mse": MeanSquaredError()}
            )
        if self.problem_type == "multi_label_classification":
            kind = {"task": "multilabel", "num_labels": self.num_labels, "threshold": self.multi_label_threshold}
            return MetricCollection({"accuracy": Accuracy(**kind), "f1": F1Score(**kind, average="macro")})
        if self.num_labels == 2:
            kind = {"task": "binary"}
            f1 = F1Score(**kind)
        else:
            kind = {"task": "multiclass", "num_classes": self.num_labels}
            f1 = F1Score(**kind, average="macro")
        return MetricCollection({"accuracy": Accuracy(**kind), "f1": f1, "mcc": MatthewsCorrCoef(**kind)})

    def _predictions(self, logits: torch.Tensor) -> torch.Tensor:
        if self.problem_type == "regression":
            return logits.squeeze(-1)
        if self.problem_type == "multi_label_classification":
            return logits.sigmoid()
        return logits.argmax(-1)

    def evaluate(self, batch: dict[str, torch.Tensor], stage: Stage) -> None:
        self.require_labels(batch, stage)
        outputs = self(**batch)
        size = len(batch["labels"])
        self.log_loss(stage, outputs.loss, batch)
        metrics = self.metrics[stage]
        predictions = self._predictions(outputs.logits.float())
        labels = (
            batch["labels"].to(outputs.logits.dtype) if self.problem_type == "regression" else batch["labels"].long()
        )
        metrics.update(predictions, labels)
        self.update_custom_metrics(stage, predictions, labels)
        self.log_dict(metrics, prog_bar=is_validation(stage), batch_size=size)
        rows = self.examples_wanted(stage, batch.get("row"))
        if rows:
            predicted = self.label_predictions(outputs.logits[: len(rows)])
            self.add_examples(
                (" / ".join(r[k] for k in ("text", "text_pair") if k in r), r.get("gold"), next(iter(p.values())))
                for r, p in zip(rows, predicted, strict=True)
            )

    def label_predictions(self, logits: torch.Tensor) -> list[dict[str, Any]]:
        """Per example: the predicted label (`labels` when multi-label, `score` for regression) and scores."""
        logits = logits.float()
        if self.problem_type == "regression":
            return [{"score": value} for value in logits.squeeze(-1).tolist()]
        names = [self.model.config.id2label[i] for i in range(self.num_labels)]
        if self.problem_type == "multi_label_classification":
            probs = logits.sigmoid().tolist()
            return [
                {
                    "labels": [n for n, p in zip(names, row, strict=True) if p >= self.multi_label_threshold],
                    "scores": dict(zip(names, row, strict=True)),
                }
                for row in probs
            ]
        probs = logits.softmax(-1)
        best = probs.argmax(-1).tolist()
        return [
            {"label": names[i], "score": row[i], "scores": dict(zip(names, row, strict=True))}
            for i, row in zip(best, probs.tolist(), strict=True)
        ]

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[dict[str, Any]]:
        """Per row: its id, text (and text_pair), gold label where the data has one, then the prediction."""
        return self.with_rows(batch, self.label_predictions(self(**batch).logits))


@dataclass(eq=False, repr=False, kw_only=True)
class TextClassificationData(TaskDataModule):
    """Sentences or sentence pairs with a label: a class name or id, a list of them, or a number.

    Args:
        text_column: Column with the text (the first sentence of a pair). Unset, found as the HF `run_glue.py`
            example finds it among the text columns other than the label: `sentence1` + `sentence2` as a
            pair, else `text`, else the only text column, else the two text columns as a pair; more is
            ambiguous and an error.
        text_pair_column: Column with the second sentence of a pair (GLUE MRPC, RTE, …), if any.
        label_column: Column with the label.
        label_names: The label set in id order. Unset, it is learnt from the training data: a ClassLabel's
            names, or the sorted distinct values. Labels outside it are an error.
        problem_type: Unset, it is inferred: `regression` for float labels, `multi_label_classification`
            for list labels (or strings split by `label_separator`), else `single_label_classification`.
        label_separator: Split string labels on this to get several labels per row (e.g. `,`), which
            makes the problem multi-label.
    """

    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str = "label"
    label_names: list[str] | None = None
    problem_type: ProblemType | None = None
    label_separator: str | None = None

    streams: ClassVar[bool] = True

    def check_data(self, raw: datasets.DatasetDict) -> None:
        if self.text_column is None:
            self._find_text_columns(raw)
        require_columns(
            raw,
            {
                "text_column": self.text_column,
                "text_pair_column": self.text_pair_column,
                "label_column": self.label_column,
            },
            self.source,
            optional=("label_column",),
        )
        require_text(raw, [self.text_column, self.text_pair_column], self.source)
        for split, dataset in raw.items():
            feature = dataset.features.get(self.label_column)
            if isinstance(feature, datasets.ClassLabel) and all(v == -1 for v in column(dataset, self.label_column)):
                # Hub convention for hidden labels (the GLUE test sets): the split is unlabeled
                raw[split] = dataset.remove_columns(self.label_column)
        train = raw.get("train")
        if self.problem_type is None:
            self.problem_type = (
                self._infer_problem_type(train)
                if train is not None
                else ("multi_label_classification" if self.label_separator else "single_label_classification")
            )
        if self.problem_type == "regression":
            self.label_names = None
        elif self.label_names is None and train is not None:
            self.label_names = self._discover_labels(train)
        for split, dataset in raw.items():
            if self.label_column in dataset.column_names and (split != "predict" or "test" not in raw):
                self._encode_labels(column(dataset, self.label_column), split, dataset.features)

    def _find_text_columns(self, raw: datasets.DatasetDict) -> None:
        """Set the text column(s) from the data when unset, the way `run_glue.py` reads a csv/json file."""
        split = "train" if "train" in raw else next(iter(raw))
        dataset = raw[split]
        texts = [
            name
            for name, feature in dataset.features.items()
            if name != self.label_column and getattr(feature, "dtype", None) in ("string", "large_string")
        ]
        if {"sentence1", "sentence2"} <= set(texts):
            found = ["sentence1", "sentence2"]
        elif "text" in texts:
            found = ["text"]
        elif len(texts) in (1, 2):
            found = texts
        else:
            raise HFTrainError(
                f"The {split} data ({self.source(split)}) has {len(texts)} text columns besides the label "
                f"('{self.label_column}'): {', '.join(texts) or 'none'}; which to classify is ambiguous. Set "
                "data.text_column (and data.text_pair_column for sentence pairs)."
            )
        self.text_column = found[0]
        if self.text_pair_column is None and len(found) == 2:
            self.text_pair_column = found[1]
        pair = f" and '{self.text_pair_column}'" if self.text_pair_column else ""
        rank_zero_info(f"Classifying the text of column '{self.text_column}'{pair} (data.text_column unset).")

    def _infer_problem_type(self, train: datasets.Dataset) -> ProblemType:
        feature = train.features[self.label_column]
        if isinstance(feature, datasets.Sequence | datasets.List) or self.label_separator:
            return "multi_label_classification"
        if isinstance(feature, datasets.Value) and feature.dtype.startswith("float"):
            return "regression"
        return "single_label_classification"

    def _row_labels(self, value: Any) -> list:
        """The labels of one row, as a list (one element unless multi-label)."""
        if isinstance(value, list):
            return value
        if self.label_separator and isinstance(value, str):
            return [part.strip() for part in value.split(self.label_separator) if part.strip()]
        return [value]

    def _discover_labels(self, train: datasets.Dataset) -> list[str]:
        names = class_names(train.features, self.label_column)
        if names is not None:
            return names
        return distinct_labels(
            v for row in column(train, self.label_column) for v in self._row_labels(row) if v is not None
        )

    def _encode_labels(self, values: list, split: str, features: datasets.Features) -> list:
        """Label values to model targets; any value outside the label set is an error naming its row."""
        for row, value in enumerate(values):
            if value is None or (isinstance(value, str) and not value.strip()):
                raise HFTrainError(
                    f"The {split} data ({self.source(split)}) has no label at row {row + 1}: the cell in column "
                    f"'{self.label_column}' is empty. Fill it in, or drop the row."
                )
        if self.problem_type == "regression":
            targets = []
            for row, value in enumerate(values):
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise HFTrainError(
                        f"The {split} data ({self.source(split)}) has a non-numeric label {value!r} at row "
                        f"{row + 1} in column '{self.label_column}'; regression needs numbers."
                    )
                targets.append(float(value))
            return targets
        if not self.label_names:
            raise HFTrainError("The label set is unknown: give a training split or set data.label_names.")
        index = {name: i for i, name in enumerate(self.label_names)}
        feature = features.get(self.label_column)
        class_label = isinstance(getattr(feature, "feature", feature), datasets.ClassLabel)
        targets = []
        for row, value in enumerate(values):
            ids = []
            for label in self._row_labels(value):
                key = self.label_names[label] if class_label and 0 <= label < len(self.label_names) else str(label)
                if key not in index:
                    raise HFTrainError(
                        f"The {split} data ({self.source(split)}) has the label {label!r} at row {row + 1}, "
                        f"which is not in the label set {self.label_names}. Fix the row, or add the label "
                        "to data.label_names."
                    )
                ids.append(index[key])
            if self.problem_type == "multi_label_classification":
                targets.append([1.0 if i in ids else 0.0 for i in range(len(self.label_names))])
            else:
                targets.append(ids[0])
        return targets

    def row_fields(self, batch: dict[str, list], split: str, features: datasets.Features) -> dict[str, list]:
        """The text (and text_pair), as the `pipeline` input is named, and the gold label(s) by name."""
        fields = {"text": batch[self.text_column]}
        if self.text_pair_column:
            fields["text_pair"] = batch[self.text_pair_column]
        if self.label_column in batch:
            targets = self._encode_labels(batch[self.label_column], split, features)
            if self.problem_type == "multi_label_classification":
                fields["gold"] = [[n for n, on in zip(self.label_names, t, strict=True) if on] for t in targets]
            elif self.problem_type == "regression":
                fields["gold"] = targets
            else:
                fields["gold"] = [self.label_names[t] for t in targets]
        return fields

    def input_columns(self) -> list[str]:
        return [self.text_column] + ([self.text_pair_column] if self.text_pair_column else [])

    def encode(
        self, batch: dict[str, list], split: str, features: datasets.Features, rows: list[int]
    ) -> dict[str, list]:
        texts = [batch[self.text_column]]
        if self.text_pair_column:
            texts.append(batch[self.text_pair_column])
        encoded, lengths = tokenize_truncated(self.tokenizer, texts, self.max_length)
        encoded["length"] = lengths
        if self.label_column in batch:
            encoded["labels"] = self._encode_labels(batch[self.label_column], split, features)
        return encoded

    def preprocess(self, raw: datasets.DatasetDict) -> datasets.DatasetDict:
        """`encode` over every split, saying how many rows were cut at max_length."""
        cut = f"the model reads only their first {self.max_length} tokens"
        if self.text_pair_column:
            cut += " (a pair's longer text is cut first)"
        return self.report_truncation(super().preprocess(raw), "length", "max_length", cut)

    @property
    def collator(self) -> DataCollatorWithPadding:
        return DataCollatorWithPadding(self.tokenizer)
