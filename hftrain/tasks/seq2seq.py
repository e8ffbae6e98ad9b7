"""Sequence to sequence: translation and summarization with an encoder-decoder (T5, BART, Marian, mT5 …).

The model is `AutoModelForSeq2SeqLM`; it computes its loss from `labels` and builds its own decoder inputs
by shifting them, so a batch is just tokenized sources and padded targets. Validation reports the loss and,
with `predict_with_generate`, generates with a `GenerationConfig`, decodes, and scores the text: sacreBLEU
and chrF for translation, ROUGE-1/2/L/Lsum for summarization, all on the 0-100 scale people quote.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import datasets
import torch
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq

from hftrain.core.data import TaskDataModule
from hftrain.core.data_checks import require_columns
from hftrain.core.errors import HFTrainError
from hftrain.core.generation import set_generation_config
from hftrain.core.losses import IGNORE_INDEX
from hftrain.core.module import Stage, TaskModule, is_validation
from hftrain.core.pretrained import require_eos
from hftrain.core.sources import column
from hftrain.core.truncation import tokenize_truncated
from hftrain.metrics.text_generation import Task, generation_metrics, scores

# the column holding `{source_lang: …, target_lang: …}` pairs in Hub translation datasets (wmt16, opus_books)
TRANSLATION_COLUMN = "translation"
# source/target column pairs found without settings: ours, then run_summarization's dataset mapping (xsum,
# multi_news; cnn_dailymail; samsum)
KNOWN_COLUMN_PAIRS = (("source", "target"), ("document", "summary"), ("article", "highlights"), ("dialogue", "summary"))


@dataclass(eq=False, repr=False, kw_only=True)
class Seq2Seq(TaskModule):
    """Fine-tune an encoder-decoder for translation or summarization.

    Args:
        task: `translation` (sacreBLEU and chrF, best checkpoint by BLEU) or `summarization`
            (ROUGE-1/2/L/Lsum, best by ROUGE-L).
        predict_with_generate: Generate during validation and test and score the text; off, only the loss is
            reported (much faster) and the best checkpoint is picked by validation loss.
        num_beams: Beams for beam search (1 is greedy). Unset keeps the model's generation config.
        max_new_tokens: Longest generated output in tokens.
        length_penalty: Exponent on the length in beam scores (> 1 favours longer outputs). Unset keeps the
            model's generation config.
        no_repeat_ngram_size: Forbid repeating any n-gram of this size (a common summarization setting). Unset
            keeps the model's generation config.
        rouge_use_stemmer: Stem words before ROUGE matching, as in the HF summarization example and published
            ROUGE figures (nltk's Porter stemmer, installed with hftrain; nothing is downloaded).
    """

    task: Task = "translation"
    predict_with_generate: bool = True
    num_beams: int | None = None
    max_new_tokens: int = 128
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    rouge_use_stemmer: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.model = self.load_pretrained(AutoModelForSeq2SeqLM)
        self.tokenizer = self.load_tokenizer()
        settings = {
            "num_beams": self.num_beams,
            "max_new_tokens": self.max_new_tokens,
            "length_penalty": self.length_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
        }
        if self.model.generation_config.eos_token_id is None:  # else generation would never stop at the EOS
            settings["eos_token_id"] = self.tokenizer.eos_token_id  # that training appends to every target
        self.generation_config = set_generation_config(
            self.model, **{k: v for k, v in settings.items() if v is not None}
        )
        if self.predict_with_generate:
            metrics = generation_metrics(self.task, self.rouge_use_stemmer)
            self.metrics = torch.nn.ModuleDict({stage: metrics.clone() for stage in self.eval_stages})
            self.monitor = "val/bleu" if self.task == "translation" else "val/rougeL"
            self.monitor_mode = "max"

    @property
    def pipeline_tag(self) -> str:
        return self.task

    # ------------------------------------------------------------------ generation and decoding

    def generate(self, batch: dict[str, torch.Tensor], encoder_outputs: Any = None) -> list[str]:
        """Generate for a batch with this module's generation config; return the decoded, stripped texts.

        `encoder_outputs`, the batch's encoded sources when the caller already has them, spares generation
        encoding them again."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if encoder_outputs is not None:
            inputs["encoder_outputs"] = encoder_outputs
        return self.decode(self.model.generate(**inputs))

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Token ids to text without special tokens; -100 (ignored label positions) read as padding."""
        ids = torch.where(ids == -100, self.tokenizer.pad_token_id, ids)
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    # ------------------------------------------------------------------ steps

    def loss_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (batch["labels"] != IGNORE_INDEX).sum()

    def evaluate(self, batch: dict[str, torch.Tensor], stage: Stage) -> None:
        if not self.predict_with_generate:
            self.log_loss(stage, self(**batch).loss, batch)
            return
        # the sources are encoded once, for the loss and for generation (the HF Seq2SeqTrainer encodes them
        # twice): about 7% of Multi30k's validation time with its small T5
        encoded = self.model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        self.log_loss(stage, self(**batch, encoder_outputs=encoded).loss, batch)
        predictions = self.generate(batch, encoded)
        references = self.decode(batch["labels"])
        self.metrics[stage].update(predictions, [[ref] for ref in references])
        self.update_custom_metrics(stage, predictions, [[ref] for ref in references])
        rows = self.examples_wanted(stage, batch.get("row"))
        self.add_examples(zip([r["source"] for r in rows], references, predictions, strict=False))

    def log_metrics(self, stage: Stage) -> None:
        if self.predict_with_generate:
            metrics = self.metrics[stage]
            self.log_dict({f"{stage}/{k}": v for k, v in scores(metrics).items()}, prog_bar=is_validation(stage))
            metrics.reset()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[dict[str, str]]:
        """Per row: its id, source text and gold target where the data has one, then the generated text."""
        sources = self.decode(batch["input_ids"])
        predictions = [{"source": s, "prediction": p} for s, p in zip(sources, self.generate(batch), strict=True)]
        return self.with_rows(batch, predictions)


@dataclass(eq=False, repr=False, kw_only=True)
class Seq2SeqData(TaskDataModule):
    """Source/target text pairs: Hub translation or summarization datasets, JSONL/CSV files, or parallel text.

    Three shapes are read. With `source_lang` and `target_lang` set, pairs come from a `translation` column of
    `{lang: text}` dicts (wmt16, opus_books), or from parallel text files: `train_file: data/train.en` with
    `source_lang: en`, `target_lang: ro` reads `data/train.en` and `data/train.ro`, one sentence per line.
    Without them, pairs come from two flat columns (`source_column`, `target_column`), e.g. xsum's `document`
    and `summary`. Sources are truncated to `max_length` tokens (the HF examples' `max_source_length`).

    Args:
        source_lang: Source language key of a `translation` column, or the suffix of the source text files.
        target_lang: Target language key, or the suffix of the target text files.
        source_column: Column with the source text, when not using `source_lang`/`target_lang`. Unset, found
            as the HF `run_summarization.py` example finds it: `source` + `target`, a known pair (`document` +
            `summary`, `article` + `highlights`, `dialogue` + `summary`), else the first of exactly two text
            columns; more is ambiguous and an error.
        target_column: Column with the target text (summary, translation), likewise; unset, found with
            `source_column`.
        source_prefix: Text put before every source, e.g. `"translate English to Romanian: "` or
            `"summarize: "` for T5, which was pretrained with such task prefixes.
        max_target_length: Longest target in tokens; longer targets are truncated.
    """

    source_lang: str | None = None
    target_lang: str | None = None
    source_column: str | None = None
    target_column: str | None = None
    source_prefix: str = ""
    max_target_length: int = 128

    streams: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if (self.source_lang is None) != (self.target_lang is None):
            raise HFTrainError(
                f"Set both data.source_lang and data.target_lang (got {self.source_lang!r} and "
                f"{self.target_lang!r}), or neither to read the flat columns data.source_column and "
                "data.target_column."
            )
        if self.max_target_length < 1:
            raise HFTrainError(f"data.max_target_length must be a positive integer, got {self.max_target_length}.")
        super().__post_init__()

    @property
    def parallel(self) -> bool:
        return self.source_lang is not None

    # ------------------------------------------------------------------ parallel text files

    def supported_suffixes(self) -> list[str]:
        return sorted([*super().supported_suffixes(), *([f".{self.source_lang}"] if self.parallel else [])])

    def target_file(self, source_file: str | Path) -> Path:
        """The target side of a parallel text file: the same name with the target language's suffix."""
        return Path(source_file).with_suffix(f".{self.target_lang}")

    def read_file(self, path: Path) -> datasets.Dataset:
        """Read a file and check its texts, so errors name the file and row before any split is carved out.

        A parallel pair `x.<source_lang>` + `x.<target_lang>` is read into the Hub `translation` shape.
        Without the target file (text to translate with `predict`) only sources are read; the splits that
        need targets fail in `check_data`, naming the missing file.
        """
        if not self.parallel or path.suffix != f".{self.source_lang}":
            dataset = super().read_file(path)
            self._find_columns(dataset, str(path))
            self._check_texts(dataset, lambda role: f"{path}, row")
            return dataset
        sources = _lines(self.read_text(path))
        target_path = self.target_file(path)
        if not target_path.is_file():
            return datasets.Dataset.from_dict({TRANSLATION_COLUMN: [{self.source_lang: s} for s in sources]})
        targets = _lines(self.read_text(target_path))
        if len(sources) != len(targets):
            raise HFTrainError(
                f"The parallel files {path} ({len(sources)} lines) and {target_path} ({len(targets)} lines) "
                "differ in length; line N of one must translate line N of the other. Fix or re-export them."
            )
        pairs = [{self.source_lang: s, self.target_lang: t} for s, t in zip(sources, targets, strict=True)]
        dataset = datasets.Dataset.from_dict({TRANSLATION_COLUMN: pairs})
        self._check_texts(dataset, lambda role: f"{target_path if role == 'target' else path}, line")
        return dataset

    # ------------------------------------------------------------------ checks

    def _find_columns(self, dataset: datasets.Dataset, where: str) -> None:
        """Fill in unset flat columns from the first data read (the training data), the way
        `run_summarization.py` picks them; a `translation` column asks for the two languages instead."""
        if self.parallel or (self.source_column is not None and self.target_column is not None):
            return
        columns = dataset.column_names
        if TRANSLATION_COLUMN in columns:
            languages = ", ".join(self._languages(dataset.features)) or "none"
            raise HFTrainError(
                f"{where} holds pairs in a '{TRANSLATION_COLUMN}' column (languages: {languages}): set "
                "data.source_lang and data.target_lang to the two to translate from and to."
            )
        texts = [n for n, f in dataset.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        # a predict file may hold sources alone
        known = [pair for pair in KNOWN_COLUMN_PAIRS if pair[0] in columns and (pair[1] in columns or len(texts) == 1)]
        if known:
            found = known[0]
        elif len(texts) == 2:
            found = tuple(texts)
        else:
            raise HFTrainError(
                f"Which columns of {where} hold the source and the target text is ambiguous: its text columns "
                f"are {', '.join(texts) or 'none'}. Set data.source_column and data.target_column."
            )
        self.source_column = self.source_column or found[0]
        self.target_column = self.target_column or found[1]
        rank_zero_info(f"Reading sources from column '{self.source_column}', targets from '{self.target_column}'.")

    def _languages(self, features: datasets.Features) -> list[str]:
        feature = features.get(TRANSLATION_COLUMN)
        if isinstance(feature, datasets.Translation):
            return list(feature.languages)
        return list(feature) if isinstance(feature, dict) else []

    def has_texts(self, features: datasets.Features, role: Literal["source", "target"]) -> bool:
        """Whether a split (its `features`) holds source (or target) texts: predict data may have no targets."""
        if self.parallel:
            return getattr(self, f"{role}_lang") in self._languages(features)
        return getattr(self, f"{role}_column") in features

    def texts(self, data: datasets.Dataset | dict[str, list], role: Literal["source", "target"]) -> list:
        """The source or target texts of a dataset or of a batch of its rows."""
        if self.parallel:
            return [row[getattr(self, f"{role}_lang")] for row in column(data, TRANSLATION_COLUMN)]
        return column(data, getattr(self, f"{role}_column"))

    def check_data(self, raw: datasets.DatasetDict) -> None:
        if self.parallel:
            require_columns(raw, {"source_lang": TRANSLATION_COLUMN}, self.source)
            for split, dataset in raw.items():
                self._check_languages(dataset, split)
        else:
            self._find_columns(raw["train"] if "train" in raw else next(iter(raw.values())), "The Hub dataset")
            require_columns(
                raw,
                {"source_column": self.source_column, "target_column": self.target_column},
                self.source,
                optional=("target_column",),
            )
        if self.dataset_name:  # local files were checked as they were read
            for split, dataset in raw.items():
                if split not in self.files():
                    self._check_texts(
                        dataset, lambda role, split=split: f"the {split} data ({self.source(split)}), row"
                    )

    def _check_languages(self, dataset: datasets.Dataset, split: str) -> None:
        """The `translation` dicts must hold both languages (the source alone in predict data)."""
        languages = self._languages(dataset.features)
        file = self.files().get(split)
        text_file = file and Path(file).suffix == f".{self.source_lang}"
        if text_file and self.target_lang not in languages and split != "predict":
            raise HFTrainError(
                f"The {split} data has no targets: {file} has no parallel file {self.target_file(file)}. "
                f"Add it (line N translating line N of {file}), or check data.target_lang."
            )
        for lang in (self.source_lang, self.target_lang):
            if lang not in languages and (split != "predict" or lang == self.source_lang):
                raise HFTrainError(
                    f"The {split} data ({self.source(split)}) has no language '{lang}' in its "
                    f"'{TRANSLATION_COLUMN}' column; it has {', '.join(languages) or 'none'}. Set "
                    "data.source_lang and data.target_lang to two of them."
                )

    def _check_texts(self, dataset: datasets.Dataset, where: Callable[[str], str]) -> None:
        """Sources must be text and targets non-empty text (an empty target teaches the model to stop).

        `where(role)` says where the rows of that role live, e.g. `"data/train.de, line"`.
        """
        for role in ("source", "target"):
            texts = self.texts(dataset, role) if self.has_texts(dataset.features, role) else []
            bad = [
                i
                for i, text in enumerate(texts)
                if not isinstance(text, str) or (role == "target" and not text.strip())
            ]
            if bad:
                field = (
                    f"{TRANSLATION_COLUMN}.{getattr(self, f'{role}_lang')}"
                    if self.parallel
                    else getattr(self, f"{role}_column")
                )
                raise HFTrainError(
                    f"Empty or missing {role} text at {where(role)} {bad[0] + 1} ('{field}'; {len(bad)} "
                    "such rows). Every pair needs a source and a non-empty target: fill in or drop them."
                )

    def input_columns(self) -> list[str]:
        return [TRANSLATION_COLUMN if self.parallel else self.source_column]

    def predict_rows(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """A string input is a source text (in translation pairs, the `source_lang` side)."""
        if self.parallel:
            inputs = [
                {TRANSLATION_COLUMN: {self.source_lang: text}} if isinstance(text, str) else text for text in inputs
            ]
        return super().predict_rows(inputs)

    # ------------------------------------------------------------------ tokenization

    def row_fields(self, batch: dict[str, list], split: str, features: datasets.Features) -> dict[str, list]:
        """The source text (without `source_prefix`) and, where the data has one, the gold target."""
        fields = {"source": self.texts(batch, "source")}
        if self.has_texts(features, "target"):
            fields["gold"] = self.texts(batch, "target")
        return fields

    def encode(
        self, batch: dict[str, list], split: str, features: datasets.Features, rows: list[int]
    ) -> dict[str, list]:
        """Sources with the prefix; targets ending in the end-of-sequence token, which is appended where the
        tokenizer does not add it (a tokenizer without a post-processor): a model that never sees it as a
        target never learns to stop, and every generation runs to max_new_tokens."""
        sources = [self.source_prefix + text for text in self.texts(batch, "source")]
        encoded, lengths = tokenize_truncated(self.tokenizer, [sources], self.max_length)
        encoded["source_length"] = lengths
        if self.has_texts(features, "target"):
            targets, lengths = tokenize_truncated(
                self.tokenizer, [self.texts(batch, "target")], self.max_target_length, as_target=True
            )
            eos = require_eos(self.tokenizer, self.tokenizer_name, "seq2seq training, so generation stops").eos_token_id
            ended = [ids[-1:] == [eos] for ids in targets["input_ids"]]
            encoded["labels"] = [
                ids if end else [*ids[: self.max_target_length - 1], eos]
                for ids, end in zip(targets["input_ids"], ended, strict=True)
            ]
            encoded["target_length"] = [n + (not end) for n, end in zip(lengths, ended, strict=True)]
        return encoded

    def preprocess(self, raw: datasets.DatasetDict) -> datasets.DatasetDict:
        """`encode` over every split, saying how many sources and targets were cut at their longest length."""
        processed = self.report_truncation(
            super().preprocess(raw),
            "source_length",
            "max_length",
            f"the model reads only their first {self.max_length} tokens",
            rows="sources",
        )
        return self.report_truncation(
            processed,
            "target_length",
            "max_target_length",
            f"the model learns to write only their first {self.max_target_length} tokens",
            rows="targets",
        )

    @property
    def collator(self) -> DataCollatorForSeq2Seq:
        """Pads sources with the pad token and labels with -100 (ignored by the loss); the model builds its
        decoder inputs by shifting the labels, so the collator needs no model."""
        return DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=-100)


def _lines(text: str) -> list[str]:
    """One example per line; blank lines at the end of the file are dropped (Multi30k ends with one).

    Only `\\n` ends a line: `str.splitlines` would also split at characters such as U+2028 inside a
    sentence and shift one side of a parallel corpus against the other.
    """
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines
