"""Extractive question answering: find the answer span to a question in a context (SQuAD v1.1 and v2.0).

The model is `AutoModelForQuestionAnswering` (a start and an end logit per token). The data module cuts
long contexts into overlapping windows; training learns the answer's first/last token per window, and
evaluation turns every question's windows back into one answer text (`question_answering_processing`),
scored with SQuAD exact match and F1 over whole questions.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import datasets
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics.text import SQuAD
from transformers import AutoModelForQuestionAnswering

from hftrain.core.data import TaskDataModule
from hftrain.core.data_checks import require_columns
from hftrain.core.errors import HFTrainError
from hftrain.core.module import Stage, TaskModule, is_validation
from hftrain.core.sources import column
from hftrain.tasks.question_answering_processing import (
    Answer,
    QuestionAnsweringCollator,
    answer_token_span,
    best_answer,
    context_index,
    context_room,
    gather_predictions,
    rank_share,
    read_squad_json,
    tokenize_windows,
    update_squad_metrics,
    window_candidates,
    window_layout,
)


@dataclass(eq=False, repr=False, kw_only=True)
class QuestionAnswering(TaskModule):
    """Fine-tune an extractive question-answering model.

    Args:
        version_2_with_negative: SQuAD 2.0 mode: a question may have no answer in the context. The model then
            answers "" when the [CLS] "null" score beats its best span, and HasAns/NoAns metrics are added.
        n_best_size: Start and end candidates per window, and spans kept per question, when picking an answer.
        max_answer_length: Longest answer in tokens; longer spans are never predicted.
        null_score_diff_threshold: SQuAD 2.0 mode: answer "" when the null score exceeds the best span's score
            by more than this (raise it to answer more often).
    """

    pipeline_tag: ClassVar[str] = "question-answering"
    version_2_with_negative: bool = False
    n_best_size: int = 20
    max_answer_length: int = 30
    null_score_diff_threshold: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_best_size < 1 or self.max_answer_length < 1:
            raise HFTrainError(
                f"model.n_best_size and model.max_answer_length must be positive, got {self.n_best_size} and "
                f"{self.max_answer_length}."
            )
        self.model = self.load_pretrained(AutoModelForQuestionAnswering)
        groups = ("all", "HasAns", "NoAns") if self.version_2_with_negative else ("all",)
        self.metrics = torch.nn.ModuleDict(
            {stage: torch.nn.ModuleDict({group: SQuAD() for group in groups}) for stage in self.eval_stages}
        )
        self.monitor = "val/f1"
        self.monitor_mode = "max"
        # per stage: question id -> (answer, gold answers), scored at the stage's end
        self._predictions: dict[str, dict[str, tuple[str, list[str]]]] = {}

    def answer(self, batch: dict[str, Any]) -> tuple[torch.Tensor | None, list[tuple[dict[str, Any], Answer]]]:
        """Run the model on a batch of whole questions (see `QuestionAnsweringCollator`): the loss when the
        batch has labels, and each question with its answer."""
        examples = batch["examples"]
        outputs = self(**batch)
        start_logits = outputs.start_logits.float().cpu().numpy()
        end_logits = outputs.end_logits.float().cpu().numpy()
        answered, row = [], 0
        for example in examples:
            candidates = [
                window_candidates(
                    start_logits[row + i],
                    end_logits[row + i],
                    window,
                    example["context"],
                    self.n_best_size,
                    self.max_answer_length,
                )
                for i, window in enumerate(example["windows"])
            ]
            row += len(example["windows"])
            answer = best_answer(
                candidates, self.n_best_size, self.version_2_with_negative, self.null_score_diff_threshold
            )
            answered.append((example, answer))
        return outputs.loss, answered

    def evaluate(self, batch: dict[str, Any], stage: Stage) -> None:
        loss, answered = self.answer(batch)
        if loss is not None:
            self.log_loss(stage, loss, batch)
        for example, answer in answered:
            self._predictions.setdefault(stage, {})[example["id"]] = (answer.text, example["answers"])
        wanted = self.examples_wanted(stage, answered)
        self.add_examples((example["question"], " | ".join(example["answers"] or []), a.text) for example, a in wanted)

    def log_metrics(self, stage: Stage) -> None:
        """Score every question exactly once across ranks, then log EM/F1 (and HasAns/NoAns in v2 mode)."""
        metrics = self.metrics[stage]
        predictions = gather_predictions(self._predictions.pop(stage, {}))
        if not predictions:
            return
        unanswerable = sum(1 for _, gold in predictions.values() if not gold)
        if unanswerable and not self.version_2_with_negative:
            rank_zero_warn(
                f"{unanswerable} of the {len(predictions)} {stage} questions have no answer, but "
                "model.version_2_with_negative is false: they score 0. Set it to true for SQuAD 2.0 data."
            )
        share = rank_share(list(predictions), self.global_rank, self.trainer.world_size)
        update_squad_metrics(metrics, {i: predictions[i] for i in share}, self.version_2_with_negative)
        self.update_custom_metrics(stage, [predictions[i][0] for i in share], [predictions[i][1] for i in share])
        for group, metric in metrics.items():
            values = metric.compute()
            prefix = f"{stage}/" if group == "all" else f"{stage}/{group}_"
            for name, value in values.items():
                if not torch.isnan(value):  # e.g. no unanswerable questions at all
                    self.log(prefix + name, value, prog_bar=group == "all" and is_validation(stage))
            metric.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Per question: its id, question, context and gold answers where the data has them, then the answer
        ("" for none, in SQuAD 2.0 mode) and its probability."""
        _, answered = self.answer(batch)
        return [
            {
                "id": example["id"],
                "question": example["question"],
                "context": example["context"],
                **({"gold": example["answers"]} if example["answers"] is not None else {}),
                "answer": answer.text,
                "score": answer.probability,
            }
            for example, answer in answered
        ]


@dataclass(eq=False, repr=False, kw_only=True)
class QuestionAnsweringData(TaskDataModule):
    """Questions about a context, with answers given as text and character offset (SQuAD's shape).

    Reads Hub datasets in SQuAD shape (`squad`, `squad_v2`), SQuAD's nested JSON files
    (`data/paragraphs/qas`), the HF `run_qa.py` example's flat JSON (`{"version": …, "data": [rows]}`), and
    JSON/JSONL rows `{id, question, context, answers: {text, answer_start}}`, all without options.
    Questions without answers (SQuAD 2.0) have empty `answers` lists.

    Args:
        question_column: Column with the question.
        context_column: Column with the context the answer is taken from.
        answer_column: Column with the answers: `{text: [...], answer_start: [...]}`; empty lists for none.
        id_column: Column with a unique id per question (used to score each question once and in predictions).
        max_length: Longest window (question + context) in tokens.
        doc_stride: Tokens of overlap between consecutive windows of a long context.
    """

    question_column: str = "question"
    context_column: str = "context"
    answer_column: str = "answers"
    id_column: str = "id"
    max_length: int = 384
    doc_stride: int = 128

    # the model's start and end logits cover padded positions too, and its loss a softmax over all of them
    loss_reads_padding: ClassVar[bool] = True

    def read_file(self, path: Path) -> datasets.Dataset:
        """SQuAD JSON, nested or flat (`read_squad_json`), is read without options; other files go to the
        base readers."""
        if path.suffix.lower() == ".json":
            rows = read_squad_json(path, self.file_encoding)
            if rows is not None:
                return datasets.Dataset.from_list(rows)
        return super().read_file(path)

    def check_data(self, raw: datasets.DatasetDict) -> None:
        if not 0 <= self.doc_stride < self.max_length:
            raise HFTrainError(
                f"data.doc_stride must be at least 0 and below data.max_length ({self.max_length}), got "
                f"{self.doc_stride}."
            )
        columns = {
            "question_column": self.question_column,
            "context_column": self.context_column,
            "answer_column": self.answer_column,
            "id_column": self.id_column,
        }
        require_columns(raw, columns, self.source, optional=("answer_column",))
        for split, dataset in raw.items():
            self._check_split(split, dataset)

    def _check_split(self, split: str, dataset: datasets.Dataset) -> None:
        """Reject rows that would train or score wrongly: every problem names its row and the fix."""
        where = f"The {split} data ({self.source(split)})"
        ids = [str(i) for i in column(dataset, self.id_column)]
        if len(set(ids)) < len(ids):
            seen: set[str] = set()
            row = next(i for i, x in enumerate(ids) if x in seen or seen.add(x))
            raise HFTrainError(
                f"{where} repeats the id '{ids[row]}' at row {row + 1}: ids must be unique, since each "
                f"question is scored once by id. Give every question its own id (column '{self.id_column}')."
            )
        contexts, questions = column(dataset, self.context_column), column(dataset, self.question_column)
        for row, (context, question) in enumerate(zip(contexts, questions, strict=True)):
            for name, text, setting in (
                ("context", context, "context_column"),
                ("question", question, "question_column"),
            ):
                if not isinstance(text, str) or not text.strip():
                    raise HFTrainError(
                        f"{where} has an empty {name} at row {row + 1} (id '{ids[row]}', column "
                        f"'{getattr(self, setting)}'). Fill it in or drop the row."
                    )
        for row, room in enumerate(context_room(self.tokenizer, questions, self.max_length)):
            if room <= self.doc_stride:
                raise HFTrainError(
                    f"{where} has a question too long for data.max_length={self.max_length} at row {row + 1} "
                    f"(id '{ids[row]}'): it leaves {room} tokens per window for the context, which must be "
                    f"more than data.doc_stride={self.doc_stride}. Raise data.max_length, lower "
                    "data.doc_stride, or shorten or drop the question."
                )
        if self.answer_column not in dataset.column_names:
            return
        for row, (context, answers) in enumerate(zip(contexts, column(dataset, self.answer_column), strict=True)):
            texts, starts = answers.get("text") or [], answers.get("answer_start") or []
            if len(texts) != len(starts):
                raise HFTrainError(
                    f"{where} has {len(texts)} answer texts but {len(starts)} answer_start values at row "
                    f"{row + 1} (id '{ids[row]}'). Give one answer_start per answer text."
                )
            for text, start in zip(texts, starts, strict=True):
                if not text or context[start : start + len(text)] != text:
                    found = context.find(text) if text else -1
                    hint = f" The text does occur at {found}." if found >= 0 else ""
                    raise HFTrainError(
                        f"{where} has an answer_start of {start} at row {row + 1} (id '{ids[row]}') that "
                        f"does not point at its answer text {text!r}: the context there reads "
                        f"{context[start : start + len(text)]!r}.{hint} Fix answer_start (a character offset "
                        "into the context) or the answer text."
                    )

    def input_columns(self) -> list[str]:
        return [self.question_column, self.context_column]

    def predict_rows(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """Questions as `(question, context)` tuples or dicts; an input without an id is numbered from 0."""
        rows = super().predict_rows(inputs)
        return [{self.id_column: str(number), **row} for number, row in enumerate(rows)]

    def encode(
        self, batch: dict[str, list], split: str, features: datasets.Features, rows: list[int]
    ) -> dict[str, list]:
        """Training rows are windows; evaluation rows are whole questions."""
        return self._encode_windows(batch) if split == "train" else self._encode_examples(batch)

    def _layouts(self, batch: dict[str, list]):
        """Tokenize a batch into windows; yield (example index, window layout, model inputs with labels)."""
        encoding = tokenize_windows(
            self.tokenizer,
            batch[self.question_column],
            batch[self.context_column],
            self.max_length,
            self.doc_stride,
        )
        model_keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoding]
        answers = batch.get(self.answer_column)
        for window, example in enumerate(encoding["overflow_to_sample_mapping"]):
            layout = window_layout(encoding, window, context_index(self.tokenizer), self.tokenizer.cls_token_id)
            inputs = {k: encoding[k][window] for k in model_keys}
            if answers is not None:
                first = answers[example]
                span = None
                if first["text"]:
                    span = (first["answer_start"][0], first["answer_start"][0] + len(first["text"][0]))
                start, end = answer_token_span(
                    layout["offset_mapping"], layout["context_span"], layout["cls_index"], span
                )
                inputs.update(start_positions=start, end_positions=end)
            yield example, layout, inputs

    def _encode_windows(self, batch: dict[str, list]) -> dict[str, list]:
        """Training rows: one per window, with its answer's start and end token."""
        rows: dict[str, list] = {}
        for _, _, inputs in self._layouts(batch):
            for key, value in inputs.items():
                rows.setdefault(key, []).append(value)
        return rows

    def _encode_examples(self, batch: dict[str, list]) -> dict[str, list]:
        """Evaluation rows: one per question, holding all its windows and what scoring needs."""
        size = len(batch[self.id_column])
        rows: dict[str, list] = {
            "id": [str(i) for i in batch[self.id_column]],
            "question": batch[self.question_column],
            "context": batch[self.context_column],
        }
        if self.answer_column in batch:
            rows["answers"] = [list(a["text"]) for a in batch[self.answer_column]]
        per_example: list[dict[str, list]] = [{} for _ in range(size)]
        for example, layout, inputs in self._layouts(batch):
            for key, value in {**inputs, **layout}.items():
                per_example[example].setdefault(key, []).append(value)
        for key in per_example[0]:
            rows[key] = [windows[key] for windows in per_example]
        return rows

    @property
    def collator(self) -> QuestionAnsweringCollator:
        return QuestionAnsweringCollator(self.tokenizer)
