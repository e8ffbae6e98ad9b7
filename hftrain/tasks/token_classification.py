"""Token classification: named entities, part-of-speech tags, chunks; one tag per word.

The model is `AutoModelForTokenClassification`, which tags subwords; the data module tags the first subword
of each word and masks the rest (or tags them all with `label_all_subwords`). Evaluation reads the tag of
each word's first subword, so scores are per word whichever way training labels were made. Tag sets
written in a span scheme (IOB2, IOBES, …) are scored on whole entities with `SpanF1`, plus token accuracy;
other tag sets (POS) on token accuracy alone.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import datasets
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from transformers import (
    AutoModelForTokenClassification,
    DataCollatorForTokenClassification,
    PreTrainedTokenizerBase,
)

from hftrain.core.data import TaskDataModule
from hftrain.core.data_checks import class_names, distinct_labels, require_columns
from hftrain.core.errors import HFTrainError
from hftrain.core.losses import IGNORE_INDEX as IGNORE
from hftrain.core.losses import check_label_smoothing, class_weight_tensor, cross_entropy
from hftrain.core.module import Stage, TaskModule
from hftrain.core.sources import column
from hftrain.metrics.span_f1 import Mode, Scheme, SpanF1, detect_scheme, extract_spans, split_tag

CONLL_SUFFIXES = (".conll", ".txt")


@dataclass(eq=False, repr=False, kw_only=True)
class TokenClassification(TaskModule):
    """Fine-tune a token classifier (NER, POS tagging, chunking).

    Args:
        label_names: Tags in id order. Set by the CLI from the data; in Python pass `data.label_names`.
            Unset, the pretrained model's own `id2label` is kept.
        tag_scheme: How tags mark spans: IOB1, IOB2 (BIO), IOE2, IOBES or BILOU. Unset, it is read from the
            tag names (B/I/O tags count as IOB2); tags in no scheme (POS) get token accuracy only.
        span_mode: `default` reads entities like conlleval (an I- after O starts one); `strict` counts only
            entities the scheme allows, as seqeval's `mode="strict"`.
        label_smoothing_factor: Train on targets that put this much probability evenly over all tags (the HF
            Trainer's `label_smoothing_factor`).
        class_weights: Weight of each tag in the loss, by tag name (`{O: 0.5}` to weigh the outside tag down);
            tags not named weigh 1.
    """

    pipeline_tag: ClassVar[str] = "token-classification"
    label_names: list[str] | None = None
    tag_scheme: Scheme | None = None
    span_mode: Mode = "default"
    label_smoothing_factor: float = 0.0
    class_weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.model = self.load_pretrained(AutoModelForTokenClassification, **self.label_config(self.label_names))
        self.tags = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        check_label_smoothing(self.label_smoothing_factor)
        self.register_buffer("class_weight", class_weight_tensor(self.class_weights, self.tags), persistent=False)
        self.scheme = self.tag_scheme or detect_scheme(self.tags)
        metrics = MetricCollection(
            {"accuracy": MulticlassAccuracy(len(self.tags), average="micro", ignore_index=IGNORE)}
        )
        if self.scheme:
            try:
                metrics.add_metrics({"spans": SpanF1(self.tags, self.scheme, self.span_mode, IGNORE)})
            except ValueError as err:
                raise HFTrainError(
                    f"{err} Set model.tag_scheme to the scheme your tags use, or span_mode to default."
                ) from err
        elif self.span_mode == "strict":
            raise HFTrainError(
                f"span_mode strict needs span tags (B-PER, I-PER, O, …), but the tags are {self.tags[:8]}. "
                "Use span_mode default, or set model.tag_scheme if the tags do follow a scheme."
            )
        self.metrics = torch.nn.ModuleDict({stage: metrics.clone(prefix=f"{stage}/") for stage in self.eval_stages})
        self.monitor = "val/f1" if self.scheme else "val/accuracy"
        self.monitor_mode = "max"

    def forward(self, **batch: Any):
        """The model's output; its loss replaced by the smoothed or class-weighted one when those are set."""
        if not (self.label_smoothing_factor > 0 or self.class_weights) or "labels" not in batch:
            return super().forward(**batch)
        labels = batch.pop("labels")
        outputs = super().forward(**batch)
        outputs.loss = cross_entropy(outputs.logits, labels, self.class_weight, self.label_smoothing_factor)
        return outputs

    def loss_tokens(self, batch: dict[str, Any]) -> torch.Tensor:
        """The labelled tokens, each counted with its class weight when `class_weights` are set (the
        weighted cross-entropy divides by that sum)."""
        labels = batch["labels"]
        scored = labels != IGNORE
        if self.class_weight is None:
            return scored.sum()
        return (self.class_weight[labels.clamp(min=0)] * scored).sum()

    def evaluate(self, batch: dict[str, Any], stage: Stage) -> None:
        word_ids = batch["word_ids"]
        outputs = self(**batch)
        self.log_loss(stage, outputs.loss, batch)
        predicted, gold = outputs.logits.argmax(-1), batch["labels"].masked_fill(word_ids < 0, IGNORE)
        self.metrics[stage].update(predicted, gold)
        self.update_custom_metrics(stage, predicted[gold != IGNORE], gold[gold != IGNORE])
        rows = self.examples_wanted(stage, batch.get("row"))
        if rows:
            tags = self.word_tags(rows, word_ids[: len(rows)].tolist(), predicted[: len(rows)].tolist())
            self.add_examples(
                (" ".join(r["tokens"]), " ".join(r.get("gold", [])), " ".join(t or "-" for t in row_tags))
                for r, row_tags in zip(rows, tags, strict=True)
            )

    def word_tags(self, rows: list[dict], word_ids: list[list[int]], tag_ids: list[list[int]]) -> list[list]:
        """Per sentence, the predicted tag of each word: its first subword's (None past max_length)."""
        tagged = []
        for row, words, tags in zip(rows, word_ids, tag_ids, strict=True):
            row_tags: list[str | None] = [None] * len(row["tokens"])
            for word, tag_id in zip(words, tags, strict=True):
                if word >= 0:
                    row_tags[word] = self.tags[tag_id]
            tagged.append(row_tags)
        return tagged

    def log_metrics(self, stage: Stage) -> None:
        results = self.metrics[stage].compute()
        self.metrics[stage].reset()
        headline = {k: results.pop(k) for k in (f"{stage}/f1", f"{stage}/accuracy") if k in results}
        self.log_dict(headline, prog_bar=True, sync_dist=True)
        self.log_dict(results, sync_dist=True)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Per sentence: its id, words and gold tags where the data has them, a predicted tag per word (null
        past max_length), the entities (`end` exclusive)."""
        predicted = self(**batch).logits.argmax(-1).tolist()
        predictions = []
        tagged = self.word_tags(batch["row"], batch["word_ids"].tolist(), predicted)
        for row, tags in zip(batch["row"], tagged, strict=True):
            prediction: dict[str, Any] = {"tags": tags}
            if self.scheme:
                words = row["tokens"]
                spans = extract_spans([t or "O" for t in tags], self.scheme, self.span_mode)
                prediction["entities"] = [
                    {"text": " ".join(words[start:end]), "type": type_, "start": start, "end": end}
                    for type_, start, end in spans
                ]
            predictions.append(prediction)
        return self.with_rows(batch, predictions)


@dataclass
class TokenClassificationCollator:
    """`DataCollatorForTokenClassification`, plus the padded `word_ids` (the word each first subword starts,
    else -100) that evaluation and prediction read."""

    tokenizer: PreTrainedTokenizerBase

    def __post_init__(self) -> None:
        self.pad = DataCollatorForTokenClassification(self.tokenizer, label_pad_token_id=IGNORE)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        word_ids = [f["word_ids"] for f in features] if "word_ids" in features[0] else None
        batch = dict(self.pad([{k: v for k, v in f.items() if k != "word_ids"} for f in features]))
        if word_ids is not None:
            width = batch["input_ids"].shape[1]
            left = self.tokenizer.padding_side == "left"
            padding = [[IGNORE] * (width - len(ids)) for ids in word_ids]
            batch["word_ids"] = torch.tensor(
                [pad + ids if left else ids + pad for pad, ids in zip(padding, word_ids, strict=True)]
            )
        return batch


def read_conll(path: Path, text: str, tag_index: int, tokens_column: str, tag_column: str) -> datasets.Dataset:
    """Read the `text` of a CoNLL column file (`path`, for messages): a token per line, its fields split on
    whitespace, a blank line between sentences, `-DOCSTART-` lines skipped. A file with one column holds
    tokens only (for predict).

    datasets' own `conll` builder pads or cuts lines with a wrong number of columns without a word, and
    keeps no line numbers; here a wrong line is an error naming it, and each row keeps the `line` its
    sentence starts on, for the error messages of later checks.
    """
    rows: dict[str, list] = {tokens_column: [], tag_column: [], "line": []}
    tokens: list[str] = []
    tags: list[str] = []
    width = start = 0

    def end_sentence() -> None:
        if tokens:
            rows[tokens_column].append(list(tokens))
            rows[tag_column].append(list(tags))
            rows["line"].append(start)
            tokens.clear()
            tags.clear()

    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            end_sentence()
            continue
        if not width:
            width = len(fields)
            if width > 1 and not -width <= tag_index < width:
                raise HFTrainError(
                    f"{path} has {width} columns (line {number}), so data.conll_tag_index {tag_index} "
                    f"points at none of them. Set it to the tag column's index: 0 to {width - 1}, or -1 "
                    "for the last."
                )
        if len(fields) != width:
            raise HFTrainError(
                f"{path} line {number} has {len(fields)} columns where the file's first line has {width}: "
                f"{line.strip()!r}. Every token line needs the same columns (token first, tags after, split "
                "by whitespace); fix the line, or blank it if it should end a sentence."
            )
        if not tokens:
            start = number
        tokens.append(fields[0])
        tags.append(fields[tag_index] if width > 1 else None)
    end_sentence()
    if width == 1:
        del rows[tag_column]
    return datasets.Dataset.from_dict(rows)


@dataclass(eq=False, repr=False, kw_only=True)
class TokenClassificationData(TaskDataModule):
    """Sentences as lists of words with one tag per word: a Hub dataset, JSON/JSONL rows, or CoNLL files.

    Args:
        tokens_column: Column with each sentence's words (a list of strings). Unset, found as the HF
            `run_ner.py` example finds it: `tokens`, else the first column holding lists.
        tag_column: Column with each sentence's tags (a list of tag names, or ClassLabel ids). Unset,
            `ner_tags`, else the other column holding lists (`ner` in run_ner's `words`/`ner` files). CoNLL
            files are read into columns of these names (`tokens` and `ner_tags` when unset).
        label_names: The tag set in id order. Unset, it is learnt from the training data: a ClassLabel's
            names, or the sorted distinct tags. Tags outside it are an error.
        label_all_subwords: Train on every subword of a word, continuing pieces tagged `I-<type>`, instead
            of the first subword alone. Scores are per word either way.
        conll_tag_index: Which whitespace-separated column of a .conll/.txt file holds the tags (the token
            is column 0): -1 for the last (NER in the 4-column CoNLL-2003 files), 1 for POS, 2 for chunks.
    """

    tokens_column: str | None = None
    tag_column: str | None = None
    label_names: list[str] | None = None
    label_all_subwords: bool = False
    conll_tag_index: int = -1

    def read_file(self, path: Path) -> datasets.Dataset:
        if path.suffix.lower() in CONLL_SUFFIXES:
            return read_conll(
                path,
                self.read_text(path),
                self.conll_tag_index,
                self.tokens_column or "tokens",
                self.tag_column or "ner_tags",
            )
        return super().read_file(path)

    def supported_suffixes(self) -> list[str]:
        return sorted({*super().supported_suffixes(), *CONLL_SUFFIXES})

    def _where(self, split: str, row: int, line: int | None, word: int | None = None) -> str:
        """`the train data (file) at row 3` plus the file line for CoNLL input (`line`: the row's first)."""
        where = f"the {split} data ({self.source(split)}) at row {row + 1}"
        if line is not None:
            where += f" (line {line + (word or 0)})"
        return where

    def check_data(self, raw: datasets.DatasetDict) -> None:
        self._find_columns(raw)
        require_columns(
            raw,
            {"tokens_column": self.tokens_column, "tag_column": self.tag_column},
            self.source,
            optional=("tag_column",),
        )
        train = raw.get("train")
        if self.label_names is None and train is not None:
            self.label_names = self._discover_labels(train)
        for split, dataset in raw.items():
            has_tags = self.tag_column in dataset.column_names and split != "predict"
            tags = column(dataset, self.tag_column) if has_tags else None
            names = class_names(dataset.features, self.tag_column)
            lines = column(dataset, "line") if "line" in dataset.column_names else None
            for row, words in enumerate(column(dataset, self.tokens_column)):
                line = lines[row] if lines else None
                if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
                    raise HFTrainError(
                        f"{self._where(split, row, line)}: column '{self.tokens_column}' must be a "
                        f"non-empty list of words, got {words!r}. Drop empty sentences, or split the text into a "
                        "list of words."
                    )
                if tags is not None:
                    self._tag_ids(split, row, words, tags[row], names, line)

    def _find_columns(self, raw: datasets.DatasetDict) -> None:
        """Fill in unset column names as `run_ner.py` does, among the columns that hold lists: `tokens` else
        the first; `ner_tags` else the other one (with several others the guess is ambiguous: an error)."""
        if self.tokens_column is not None and self.tag_column is not None:
            return
        split = "train" if "train" in raw else next(iter(raw))
        dataset = raw[split]
        lists = [n for n, f in dataset.features.items() if isinstance(f, datasets.Sequence | datasets.List)]
        if self.tokens_column is None:
            candidates = ["tokens"] if "tokens" in lists else [c for c in lists if c != self.tag_column]
            self.tokens_column = candidates[0] if candidates else "tokens"  # none: require_columns says so
        if self.tag_column is None:
            others = [c for c in lists if c != self.tokens_column]
            if "ner_tags" in others or not others:
                self.tag_column = "ner_tags"  # absent: an error, except in predict data
            elif len(others) == 1:
                self.tag_column = others[0]
            else:
                raise HFTrainError(
                    f"Which column of the {split} data ({self.source(split)}) holds the tags is ambiguous: besides "
                    f"the words ('{self.tokens_column}') it has the list columns {', '.join(others)}, and none is "
                    "named 'ner_tags'. Set data.tag_column (and data.tokens_column if the words are elsewhere)."
                )
        rank_zero_info(f"Reading words from column '{self.tokens_column}', tags from '{self.tag_column}'.")

    def _discover_labels(self, train: datasets.Dataset) -> list[str]:
        names = class_names(train.features, self.tag_column)
        if names is not None:
            return names
        values = [tag for row in column(train, self.tag_column) for tag in row or []]
        if any(not isinstance(v, str) for v in values):
            raise HFTrainError(
                f"The training data ({self.source('train')}) has tag ids in column '{self.tag_column}' but "
                "no tag names. Set data.label_names to the tag names in id order."
            )
        return distinct_labels(values)

    def _tag_ids(
        self, split: str, row: int, words: list[str], tags: Any, names: list[str] | None, line: int | None
    ) -> list[int]:
        """One sentence's tags as ids (`names`: those of ClassLabel tags); a wrong count or an unknown tag is an
        error naming the row (and its first `line` in a CoNLL file)."""
        if not self.label_names:
            raise HFTrainError("The tag set is unknown: give a training split or set data.label_names.")
        if not isinstance(tags, list) or len(tags) != len(words):
            count = len(tags) if isinstance(tags, list) else type(tags).__name__
            raise HFTrainError(
                f"{self._where(split, row, line)} has {len(words)} words but {count} tags in column "
                f"'{self.tag_column}'. Give exactly one tag per word."
            )
        index = {name: i for i, name in enumerate(self.label_names)}
        ids = []
        for word, tag in enumerate(tags):
            if names is not None:  # ClassLabel ids go by name: label_names may order them otherwise
                tag = names[tag]
            if tag in index:
                ids.append(index[tag])
            elif isinstance(tag, int) and 0 <= tag < len(self.label_names):
                ids.append(tag)
            else:
                raise HFTrainError(
                    f"{self._where(split, row, line, word)} has the tag {tag!r} (word {word + 1}, "
                    f"{words[word]!r}), which is not in the tag set {self.label_names}. Fix the tag, or add "
                    "it to data.label_names."
                )
        return ids

    def _continuation_ids(self) -> list[int]:
        """For each tag, the tag of a word's later subwords: `I-<type>` where the set has it, else itself."""
        index = {name: i for i, name in enumerate(self.label_names or [])}
        return [
            index.get(f"I-{split_tag(name)[1]}", i) if name != "O" else i
            for i, name in enumerate(self.label_names or [])
        ]

    def _words_that_fit(self, word_ids: list[int], num_words: int) -> int:
        """How many leading words fit in max_length whole, so truncation never cuts a word in two."""
        budget = self.max_length - self.tokenizer.num_special_tokens_to_add()
        return num_words if len(word_ids) <= budget else max(word_ids[budget], 1)

    def encode(
        self, batch: dict[str, list], split: str, features: datasets.Features, rows: list[int]
    ) -> dict[str, list]:
        sentences = batch[self.tokens_column]
        pieces = self.tokenizer(sentences, is_split_into_words=True, add_special_tokens=False, verbose=False)
        kept = [self._words_that_fit(pieces.word_ids(i), len(s)) for i, s in enumerate(sentences)]
        encoded = self.tokenizer(
            [s[:k] for s, k in zip(sentences, kept, strict=True)],
            is_split_into_words=True,
            truncation=True,
            max_length=self.max_length,
        )
        with_tags = self.tag_column in batch and split != "predict"
        continuation = self._continuation_ids()
        names = class_names(features, self.tag_column)
        lines = batch.get("line")
        word_ids, labels = [], []
        for i, sentence in enumerate(sentences):
            tag_ids = (
                self._tag_ids(split, rows[i], sentence, batch[self.tag_column][i], names, lines[i] if lines else None)
                if with_tags
                else None
            )
            firsts, targets, previous = [], [], None
            for word in encoded.word_ids(i):
                first = word is not None and word != previous
                firsts.append(word if first else IGNORE)
                if tag_ids is not None:
                    if word is None or not (first or self.label_all_subwords):
                        targets.append(IGNORE)
                    else:
                        targets.append(tag_ids[word] if first else continuation[tag_ids[word]])
                previous = word
            word_ids.append(firsts)
            labels.append(targets)
        encoded["word_ids"] = word_ids
        if with_tags:
            encoded["labels"] = labels
        encoded["words_cut"] = [len(s) - k for s, k in zip(sentences, kept, strict=True)]
        specials = self.tokenizer.num_special_tokens_to_add()
        encoded["subwords"] = [len(ids) + specials for ids in pieces["input_ids"]]
        return encoded

    def row_fields(self, batch: dict[str, list], split: str, features: datasets.Features) -> dict[str, list]:
        """The words and, where the data has them, the gold tag of each word by name."""
        fields = {"tokens": batch[self.tokens_column]}
        if self.tag_column in batch:
            names = class_names(features, self.tag_column)
            fields["gold"] = [[names[t] if names else t for t in tags] for tags in batch[self.tag_column]]
        return fields

    def input_columns(self) -> list[str]:
        return [self.tokens_column]

    def predict_rows(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """A string input is a sentence split into words on whitespace; a list (or tuple) is its words."""
        return super().predict_rows(
            [
                text
                if isinstance(text, Mapping)
                else {self.tokens_column: text.split() if isinstance(text, str) else text}
                for text in inputs
            ]
        )

    def preprocess(self, raw: datasets.DatasetDict) -> datasets.DatasetDict:
        if not self.tokenizer.is_fast:
            raise HFTrainError(
                f"The tokenizer '{self.tokenizer_name}' is not a fast (Rust) tokenizer, which token "
                "classification needs to map subwords to words. Use a model that ships a tokenizer.json."
            )
        processed = self.report_truncation(
            self.map_splits(raw, self.encode),
            "subwords",
            "max_length",
            lambda split, encoded: (
                f"their last {sum(column(encoded, 'words_cut'))} words in all are dropped (not trained on, not "
                "scored, tagged null in predictions)"
            ),
            rows="sentences",
            unit="subwords",
        )
        for split, encoded in processed.items():
            drop = ["words_cut"] + (["word_ids"] if split == "train" else [])
            processed[split] = encoded.remove_columns(drop)
        return processed

    @property
    def collator(self) -> TokenClassificationCollator:
        return TokenClassificationCollator(self.tokenizer)
