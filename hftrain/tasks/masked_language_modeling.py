"""Masked language modelling: adapt an encoder (BERT, RoBERTa, MiniLM) to a domain's text before fine-tuning it.

The model is `AutoModelForMaskedLM`; its loss is cross-entropy on the masked positions. The data module turns
documents into token sequences, packed into `max_length` blocks (run_mlm's `group_texts`) or one per document
(`line_by_line`); transformers' `DataCollatorForLanguageModeling` chooses the masks: afresh for every training
batch, and once, seeded, for the validation and test splits as they are prepared, so every checkpoint is scored
on the same masks and perplexities compare. The export loads in `pipeline("fill-mask")` and as the
`model_name_or_path` of another task (the domain-adaptation flow: docs/masked_language_modeling.md).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import datasets
import torch
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from hftrain.core.corpus import TEXT_SUFFIXES, DocumentSplit, log_perplexity, pack_blocks, split_documents
from hftrain.core.data import TaskDataModule
from hftrain.core.data_checks import require_columns, require_text
from hftrain.core.errors import HFTrainError
from hftrain.core.losses import IGNORE_INDEX
from hftrain.core.module import Stage, TaskModule
from hftrain.core.sources import column


def require_mask_token(tokenizer: PreTrainedTokenizerBase, name: str | None) -> PreTrainedTokenizerBase:
    if tokenizer.mask_token is None:
        raise HFTrainError(
            f"The tokenizer of '{name}' has no mask token, so it cannot be trained to fill in masked words "
            "(causal models such as GPT-2 have none). Use an encoder trained with masking (BERT, RoBERTa, MiniLM), "
            "or train a causal model with hftrain.tasks.language_modeling.LanguageModeling."
        )
    return tokenizer


@dataclass(eq=False, repr=False, kw_only=True)
class MaskedLanguageModeling(TaskModule):
    """Train an encoder to fill in masked tokens, e.g. on a domain's text before fine-tuning it for a task.

    Args:
        top_k: Candidates written per masked token by `predict`, most likely first (the fill-mask pipeline's
            `top_k`).
    """

    pipeline_tag: ClassVar[str] = "fill-mask"
    top_k: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_k < 1:
            raise HFTrainError(f"model.top_k must be a positive integer, got {self.top_k}.")
        # predictions name the candidate tokens, so the module decodes with the model's tokenizer
        self.tokenizer = require_mask_token(self.load_tokenizer(), self.model_name_or_path)
        self.model = self.load_pretrained(AutoModelForMaskedLM)
        self.monitor = "val/perplexity"
        self.monitor_mode = "min"

    def loss_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The masked positions, which the loss is a mean over."""
        return (batch["labels"] != IGNORE_INDEX).sum()

    def evaluate(self, batch: dict[str, torch.Tensor], stage: Stage) -> None:
        masked = batch["labels"] != IGNORE_INDEX
        if masked.any():  # a short last block may have drawn no mask
            outputs = self(**batch)
            self.log_loss(stage, outputs.loss, batch)
            if self.custom[stage]:
                self.update_custom_metrics(stage, outputs.logits[masked].argmax(-1), batch["labels"][masked])

    def log_metrics(self, stage: Stage) -> None:
        log_perplexity(self, stage)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Per text: its id and text, then for each mask token in it the `top_k` fills (`token`, `score`:
        the model's probability), as `pipeline("fill-mask")` ranks them."""
        probabilities = self(**batch).logits.softmax(-1)
        is_mask = batch["input_ids"] == self.tokenizer.mask_token_id
        records = []
        for row in range(len(is_mask)):
            best = probabilities[row][is_mask[row]].topk(min(self.top_k, probabilities.shape[-1]))
            candidates = zip(best.indices.tolist(), best.values.tolist(), strict=True)
            fills = [
                [{"token": self.tokenizer.decode([i]), "score": p} for i, p in zip(ids, scores, strict=True)]
                for ids, scores in candidates
            ]
            records.append({"fills": fills})
        return self.with_rows(batch, records)


@dataclass
class MaskedLMCollator:
    """Pad a batch and, for training rows, draw its masks with transformers' `DataCollatorForLanguageModeling`.

    Rows that already carry `labels` (validation and test, masked once as they were prepared) are only padded,
    labels with -100; rows without `special_tokens_mask` (predict: the user's own mask tokens) likewise.
    Written here because the library's collator masks every batch it is given, and its `tokenizer.pad`
    cannot pad the offsets that whole-word masking reads.
    """

    masking: DataCollatorForLanguageModeling

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        tokenizer = self.masking.tokenizer
        extra = ("labels", "offset_mapping")
        batch = tokenizer.pad([{k: v for k, v in f.items() if k not in extra} for f in features], return_tensors="pt")
        if "labels" in features[0]:
            batch["labels"] = self._pad([f["labels"] for f in features], IGNORE_INDEX, batch["input_ids"])
        elif "special_tokens_mask" in batch:
            offsets = None
            if "offset_mapping" in features[0]:
                offsets = self._pad([f["offset_mapping"] for f in features], [0, 0], batch["input_ids"])
            special = batch.pop("special_tokens_mask")  # padded with 1: padding is never masked
            batch["input_ids"], batch["labels"] = self.masking.torch_mask_tokens(batch["input_ids"], special, offsets)
        return batch

    def _pad(self, rows: list[list], value: Any, like: torch.Tensor) -> torch.Tensor:
        width = like.shape[1]
        left = self.masking.tokenizer.padding_side == "left"
        padded = [[value] * (width - len(r)) + list(r) if left else list(r) + [value] * (width - len(r)) for r in rows]
        return torch.tensor(padded, dtype=torch.long)


@dataclass(eq=False, repr=False, kw_only=True)
class MaskedLanguageModelingData(TaskDataModule):
    """Text to learn to fill in: documents from a Hub dataset's text column (wikitext), JSONL/CSV rows, or .txt
    files (one document per line, as run_mlm reads them).

    The validation and test splits are masked once, as they are prepared, with a generator seeded from `seed`
    and each row's position: every checkpoint, and every run with the same data and seed, is scored on the same
    masks. A predict row is a text holding the tokenizer's mask token (`[MASK]` for BERT) where a word is wanted.

    Args:
        text_column: Column with the documents (a .txt file's text lands in this column).
        line_by_line: One example per document, cut at `max_length`, as run_mlm's `--line_by_line`. False:
            the documents are concatenated and cut into blocks of `max_length` tokens (run_mlm's
            `group_texts`): no padding, and no text is cut off.
        mlm_probability: Share of the tokens masked for the model to predict (run_mlm's default 0.15): of
            those, 80% become the mask token, 10% a random token and 10% stay as they are (BERT's recipe).
        whole_word_mask: Mask all the pieces of a word together instead of single tokens (then every chosen
            piece becomes the mask token). Needs a fast tokenizer.
        text_file_documents: How a .txt file splits into documents: `line` (run_mlm's way), `paragraph`
            (blocks separated by blank lines), or `file`. A .txt predict file always holds one text per line.
    """

    text_column: str = "text"
    line_by_line: bool = False
    mlm_probability: float = 0.15
    whole_word_mask: bool = False
    text_file_documents: DocumentSplit = "line"

    @property
    def collator(self) -> MaskedLMCollator:
        return MaskedLMCollator(self.masking())

    def masking(self) -> DataCollatorForLanguageModeling:
        """The library's masking, as configured; whole words are masked with the mask token only (transformers
        does not replace them by random tokens)."""
        replace = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if self.whole_word_mask else {}
        return DataCollatorForLanguageModeling(
            self.tokenizer, whole_word_mask=self.whole_word_mask, mlm_probability=self.mlm_probability, **replace
        )

    # ------------------------------------------------------------------ reading

    def supported_suffixes(self) -> list[str]:
        return sorted([*super().supported_suffixes(), *TEXT_SUFFIXES])

    def read_file(self, path: Path) -> datasets.Dataset:
        """Read a .txt file, or one without a suffix, as documents (a predict file: texts, one per line)."""
        if path.suffix.lower() not in TEXT_SUFFIXES:
            return super().read_file(path)
        is_predict = self.predict_file is not None and path == Path(self.predict_file).expanduser()
        split_by = "line" if is_predict else self.text_file_documents
        return split_documents(self.read_text(path), split_by, self.text_column)

    def check_data(self, raw: datasets.DatasetDict) -> None:
        if not 0 < self.mlm_probability < 1:
            raise HFTrainError(f"data.mlm_probability must be between 0 and 1, got {self.mlm_probability}.")
        tokenizer = require_mask_token(self.tokenizer, self.tokenizer_name)
        if self.whole_word_mask and not tokenizer.is_fast:
            raise HFTrainError(
                f"data.whole_word_mask needs a fast (Rust) tokenizer to find where words start, and the tokenizer "
                f"of '{self.tokenizer_name}' is not one. Use a model that ships a tokenizer.json, or set "
                "data.whole_word_mask to false."
            )
        if self.max_length > tokenizer.model_max_length:
            raise HFTrainError(
                f"data.max_length {self.max_length} is longer than the model takes ({tokenizer.model_max_length} "
                f"tokens, the tokenizer's model_max_length). Set data.max_length to {tokenizer.model_max_length} "
                "or less."
            )
        require_columns(raw, {"text_column": self.text_column}, self.source)
        require_text(raw, [self.text_column], self.source)
        # texts given to fill in; the test split that predict falls back to is scored, not filled in
        if "predict" in raw and raw["predict"] is not raw.get("test"):
            texts = column(raw["predict"], self.text_column)
            unmasked = [i for i, text in enumerate(texts) if tokenizer.mask_token not in text]
            if unmasked:
                raise HFTrainError(
                    f"The predict data ({self.source('predict')}) has no mask token {tokenizer.mask_token} in row "
                    f"{unmasked[0] + 1} ({len(unmasked)} such rows), so there is nothing to fill in. Write "
                    f"{tokenizer.mask_token} where a word is wanted: 'Paris is the {tokenizer.mask_token} of France.'"
                )

    def input_columns(self) -> list[str]:
        return [self.text_column]

    def row_fields(self, batch: dict[str, list], split: str, features: datasets.Features) -> dict[str, list] | None:
        """Texts to fill in (`predict`) keep their text; the other splits' rows are packed or masked, not
        one per input."""
        return {"text": batch[self.text_column]} if split == "predict" else None

    # ------------------------------------------------------------------ tokenization and masking

    def encode(
        self, batch: dict[str, list], split: str, features: datasets.Features, rows: list[int]
    ) -> dict[str, list]:
        """Token ids per document (blank ones skipped), with the special-token mask the masking needs (and
        the offsets whole-word masking reads); predict texts as they are, cut at `max_length`."""
        if split == "predict":
            return dict(self.tokenizer(batch[self.text_column], truncation=True, max_length=self.max_length))
        texts = [text for text in batch[self.text_column] if text.strip()]
        # not verbose when packing: the tokenizer would warn about documents longer than the model takes
        return dict(
            self.tokenizer(
                texts,
                truncation=self.line_by_line,
                max_length=self.max_length if self.line_by_line else None,
                return_special_tokens_mask=True,
                return_offsets_mapping=self.whole_word_mask,
                verbose=False,
            )
        )

    def preprocess(self, raw: datasets.DatasetDict) -> datasets.DatasetDict:
        processed = self.map_splits(raw, self.encode)
        for split, examples in processed.items():
            if split == "predict":
                continue
            if not self.line_by_line:
                examples = examples.map(
                    pack_blocks,
                    fn_kwargs={"size": self.max_length},
                    batched=True,
                    num_proc=self.preprocessing_num_workers,
                    desc=f"Packing {split} into blocks",
                )
            if split != "train":
                examples = examples.map(
                    self._mask_once,
                    batched=True,
                    with_indices=True,
                    remove_columns=[c for c in ("special_tokens_mask", "offset_mapping") if c in examples.column_names],
                    num_proc=self.preprocessing_num_workers,
                    desc=f"Masking {split} once",
                )
            processed[split] = examples
        return processed

    def _mask_once(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        """The masks of evaluation rows, drawn once per row from `seed` and the row's position, so they do not
        depend on batching or worker processes."""
        masking = self.masking()
        input_ids, labels = [], []
        for row, index in enumerate(indices):
            masking.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            offsets = torch.tensor([batch["offset_mapping"][row]]) if self.whole_word_mask else None
            masked, targets = masking.torch_mask_tokens(
                torch.tensor([batch["input_ids"][row]]), torch.tensor([batch["special_tokens_mask"][row]]), offsets
            )
            input_ids.append(masked[0].tolist())
            labels.append(targets[0].tolist())
        return {"input_ids": input_ids, "labels": labels}
