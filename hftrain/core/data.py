"""The base data module: the one class a task's data module subclasses.

A task's data module is a dataclass that adds its own fields (columns, lengths) to the ones here and must
provide four things, abstract here so that a task missing one cannot be built: `check_data` (columns and
values, plus anything learnt from the data such as the label set), `encode` (a batch of a split's raw rows and
the split's features to model inputs, a pure function of its arguments and the settings, run by
`datasets.map(batched=True)` over every split in `preprocess`, or as a stream is read), `collator`, and
`input_columns` (what one raw input to `predict` fills).
The rest is done once for every task, by the modules this one asks: `core/sources.py` reads csv/tsv/json/jsonl/
parquet or a Hub dataset, holds out a validation split and cuts splits to size, and defines the `Source` that
turns splits into model inputs and batches (`MapSource`: tokenized once into `core/cache.py`'s on-disk cache,
served by `core/loaders.py`'s samplers). This module keeps the settings, their checks and the task hooks.
"""

from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import datasets
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from hftrain import __version__
from hftrain.core import console, internals, sources
from hftrain.core.cache import TokenizedCache, cache_path, default_cache_root, tokenizer_fingerprint
from hftrain.core.data_checks import check_settings, input_rows, require_columns
from hftrain.core.errors import HFTrainError
from hftrain.core.length_split import LengthSplit
from hftrain.core.loaders import KeepRows, LoaderOptions
from hftrain.core.pretrained import load_tokenizer
from hftrain.core.sources import Source, Split, column
from hftrain.core.streaming import (
    BadRowPolicy,
    Shard,
    StreamDataset,
    StreamSource,
    first_rows,
    hub_shards,
    local_shards,
)
from hftrain.core.truncation import truncation_note


@dataclass(eq=False, repr=False, kw_only=True)
class TaskDataModule(LightningDataModule, metaclass=ABCMeta):
    """Base for every task's data module.

    Args:
        tokenizer_name: Tokenizer to load with `AutoTokenizer.from_pretrained` (Hub id or folder). The CLI
            links it to `model.model_name_or_path`, so it is rarely set by hand.
        tokenizer_revision: Hub branch, tag or commit of the tokenizer; the CLI links it to `model.revision`.
        trust_remote_code: Allow tokenizer code from the Hub repository to run; the CLI links it to
            `model.trust_remote_code`.
        dataset_name: A dataset on the Hugging Face Hub (e.g. `glue`). Leave unset to read local files; a
            `train_file` replaces it (then nothing is loaded from the Hub).
        dataset_config_name: The Hub dataset's configuration (e.g. `mrpc`).
        train_file: Local training file: .csv, .tsv, .json, .jsonl or .parquet.
        validation_file: Local validation file. Without one, `validation_split_percentage` of the training
            data is held out. Several validation sets: a mapping of names to files (`{matched: dev_m.tsv,
            mismatched: dev_mm.tsv}`), each scored and logged as `val/<name>/...`; the first one picks the
            best checkpoint unless `checkpoint.monitor` names another.
        test_file: Local test file, used by `hftrain test`.
        predict_file: Local file to predict on, used by `hftrain predict` (labels not needed). Without one,
            predict uses the test split.
        reader_options: Extra options for the file reader, e.g. `{quoting: 3}` to read GLUE TSVs that
            contain quote characters, or `{header: null, names: [...]}` for a file without a header row.
            `{encoding: latin-1}` reads files that are not UTF-8, of every type (CoNLL and text files too).
        validation_split_percentage: Percent of the training data held out for validation when no
            validation split is given (0 disables validation).
        max_length: Longest input in tokens; longer inputs are cut, and every run warns how many were.
        batch_size: Training examples per batch (per device).
        eval_batch_size: Examples per batch for validation, test and predict; defaults to twice `batch_size`
            (evaluation keeps no activations for a backward pass). Evaluation batches are formed longest
            example first, so they carry little padding.
        num_workers: Dataloader worker processes (0 loads in the main process).
        preprocessing_num_workers: Processes for tokenization (`datasets.map(num_proc=...)`).
        cache_dir: Where tokenized splits are cached; defaults to `$HFTRAIN_CACHE` or `~/.cache/hftrain`.
        seed: Seed for carving the validation split and shuffling the training data, so both are the same
            in every run and in a resumed run. Unset, the run's seed (`seed_everything`, as the HF Trainer's
            `seed` sets the data order too), else 42.
        group_by_length: Batch training examples of similar length together (shuffled in groups, as the HF
            Trainer's `train_sampling_strategy="group_by_length"`), so batches carry little padding: about
            1.5x faster on CPU, but in docs/performance.md's runs over seeds it scored lower on MRPC and
            CoNLL dev than random batches, so it is off by default. Turn it on when speed matters more.
        length_group_batches: With `group_by_length`, how many batches are sorted together: fewer mix lengths
            more across steps (closer to random order), more leave less padding. 50 is the HF Trainer's
            (fixed there); capped so that an epoch has at least 4 sorted groups.
        split_by_length: Train each batch in a few parts of similar length, each padded only to its own
            longest example, where that saves more computation than the extra parts cost. The batch stays
            the same and its loss and gradient are the whole batch's (parts weighted by their examples, or
            tokens for token-level losses); only dropout draws other masks. Random batches at nearly grouped
            speed: MRPC 1.3x, CoNLL-2003 1.7x per batch on CPU (docs/performance.md). Unset: on when training
            on CPU, off on GPUs (not measured there, where a few large kernels may beat more small ones).
            Never for question answering, whose loss counts padded positions.
        max_train_samples: Train on the first N training rows only (the HF scripts' flag, for quick runs).
        max_eval_samples: Validate on the first N rows of each validation set only.
        max_predict_samples: Test and predict on the first N rows only.
        overwrite_cache: Tokenize again even if a cached copy exists (the cache is already keyed by the files'
            size and modification time, the tokenizer and the settings, so this is rarely needed).
        id_column: Column whose value is each row's `id` in predictions.jsonl. Unset: a column named `id` if
            the data has one, else the row's position in its file (counting from 0).
        streaming: Read the training data as training goes instead of tokenizing it ahead into the cache: a
            Hub dataset (`dataset_name`, loaded with `streaming=True`) or local shards (`train_file`, a path or
            glob of .jsonl/.json lines, .csv, .tsv, .txt or .parquet files, optionally .gz/.bz2/.xz). Rows are
            tokenized in the dataloader workers (`num_workers`). The stream has no length: set
            `trainer.max_steps`, or `examples_per_epoch`. Validation reads `validation_file` (map-style), or the
            first `max_eval_samples` rows of the Hub dataset's validation split. See docs/streaming.md.
        shuffle_buffer: Streaming: rows held in the seeded shuffle buffer (the shard order is shuffled every pass
            too). Larger mixes more, costs memory and a larger checkpoint (the buffer is saved in it).
        on_bad_row: Streaming: what a training row that cannot be read (corrupt or truncated shard, a needed
            column missing) does: `stop` the run with an error naming its file and line, or `skip` it with a
            warning naming them.
        examples_per_epoch: Streaming: training examples (rows, or packed blocks for causal LM) that make an
            epoch across all processes, which sets when validation and epoch-end checkpoints run. Unset: the
            run is one epoch of `trainer.max_steps` steps.
    """

    tokenizer_name: str | None = None
    tokenizer_revision: str | None = None
    trust_remote_code: bool = False
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_file: str | None = None
    validation_file: str | dict[str, str] | None = None
    test_file: str | None = None
    predict_file: str | None = None
    reader_options: dict[str, Any] | None = None
    validation_split_percentage: float = 10.0
    max_length: int = 128
    batch_size: int = 32
    eval_batch_size: int | None = None
    num_workers: int = 0
    preprocessing_num_workers: int | None = None
    cache_dir: str | None = None
    seed: int | None = None
    group_by_length: bool = False
    length_group_batches: int = 50
    split_by_length: bool | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_predict_samples: int | None = None
    overwrite_cache: bool = False
    id_column: str | None = None
    streaming: bool = False
    shuffle_buffer: int = 10_000
    on_bad_row: BadRowPolicy = "stop"
    examples_per_epoch: int | None = None

    # whether the tokenizer pads with its end-of-sequence token when it has no padding token (causal LMs)
    pad_with_eos: ClassVar[bool] = False
    # whether the training loss counts a batch's padded positions (question answering's start and end softmax
    # runs over every position), so that a batch split by length, each part padded less, has another loss
    loss_reads_padding: ClassVar[bool] = False
    # whether the task can train on streamed data (`data.streaming`): its `encode` turns any batch of rows into
    # examples, with no look at the whole split
    streams: ClassVar[bool] = False
    # settings that change how batches are served but not what the tokenized data holds
    loader_settings: ClassVar[frozenset[str]] = frozenset(
        {
            "batch_size",
            "eval_batch_size",
            "num_workers",
            "preprocessing_num_workers",
            "cache_dir",
            "group_by_length",
            "length_group_batches",
            "split_by_length",
            "overwrite_cache",
            "shuffle_buffer",
            "on_bad_row",
            "examples_per_epoch",
        }
    )

    def __post_init__(self) -> None:
        super().__init__()
        if self.seed is None:
            self.seed = internals.global_seed(default=42)
        check_settings(self.settings(), type(self).__name__, self.loss_reads_padding)
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._cache_path: Path | None = None
        self._data_source: Source | None = None
        self._predicting_inputs = False
        self._notes: list[str] = []
        self.datasets: Mapping[str, Split] | None = None
        self.shards: list[Shard] = []
        self.raw = self.load_raw()
        self.check_data(self.raw)
        if self.id_column:
            evaluated = {k: v for k, v in self.raw.items() if k != "train"}
            require_columns(evaluated, {"id_column": self.id_column}, self.source)
        held_out = 0 if self.streaming else self.validation_split_percentage  # a stream's rows are all trained on
        sources.hold_out_validation(self.raw, held_out, self.seed, self.source("train"))
        sources.limit_rows(self.raw, self.max_train_samples, self.max_eval_samples, self.max_predict_samples)
        self.save_hyperparameters()
        # the CLI records the config as given; add what was learnt from the data (the label set)
        self.save_hyperparameters({**self.hparams, **self.settings()})

    def __getstate__(self) -> dict[str, Any]:
        """A copy, as pickled into each tokenizing process of `datasets.map(num_proc=…)`, has the settings and the
        tokenizer that `encode` reads, not the splits (which `encode` gets as arguments: copying them would cost
        each process the data's size) nor the trainer, which does not pickle; Lightning attaches the trainer."""
        state = dict(self.__dict__)
        state.update(trainer=None, raw=None, datasets=None, _data_source=None)
        return state

    def settings(self) -> dict[str, Any]:
        """The current value of every field, including those filled in from the data."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # ------------------------------------------------------------------ what each task provides

    @abstractmethod
    def check_data(self, raw: datasets.DatasetDict) -> None:
        """Check the raw splits' columns and values, and fill in settings learnt from them (the label set)."""

    @abstractmethod
    def encode(
        self, batch: dict[str, list], split: str, features: datasets.Features, rows: list[int]
    ) -> dict[str, list]:
        """Turn a batch of raw rows of `split` into model inputs (token ids, labels), from the arguments and the
        settings alone (never the data module's splits, which a streaming run does not hold): `features`, the
        split's column types (ClassLabel names), and `rows`, the batch's positions in its split, for messages."""

    def row_fields(self, batch: dict[str, list], split: str, features: datasets.Features) -> dict[str, list] | None:
        """What each row of an evaluation or predict split carries through to predictions.jsonl and the
        TensorBoard examples, besides its id: the input text and, where the data has it, the gold answer
        (key `gold`), as columns of the batch's rows. None: no rows (the split's encoded rows are not one
        per input row)."""
        return None

    def preprocess(self, raw: datasets.DatasetDict) -> datasets.DatasetDict:
        """Turn raw splits into model inputs with `encode`; called once, then cached on disk."""
        return self.map_splits(raw, self.encode)

    def report_truncation(
        self,
        processed: datasets.DatasetDict,
        lengths: str,
        setting: str,
        effect: str | Callable[[str, datasets.Dataset], str],
        rows: str = "rows",
        unit: str = "tokens",
    ) -> datasets.DatasetDict:
        """Say once per split how many of its rows `encode` cut at `data.<setting>`, of how many, and the longest
        length cut from, then drop the column `lengths` (each row's length before the cut) that told it.
        `effect` says what the cut costs (a function of the split and its rows where that depends on them). The
        note is kept with the tokenized cache and said as a warning when the cache is loaded (`setup`), so by
        every run, whether it tokenized or reused the cache."""
        for split, encoded in processed.items():
            if lengths not in encoded.column_names:
                continue
            cost = effect(split, encoded) if callable(effect) else effect
            where = self.source(split)
            note = truncation_note(
                column(encoded, lengths), getattr(self, setting), setting, split, where, cost, rows, unit
            )
            if note:
                self._notes.append(note)
            processed[split] = encoded.remove_columns(lengths)
        return processed

    def map_splits(
        self, raw: datasets.DatasetDict, function: Callable, desc: str = "Tokenizing", **options: Any
    ) -> datasets.DatasetDict:
        """`function(batch, split, features, rows)` (as `encode`) over every split with
        `datasets.map(batched=True)` in `preprocessing_num_workers` processes, replacing the raw columns by what
        it returns, plus the `row` column of `row_fields` outside the training split; other `options` go to
        `map`."""
        return datasets.DatasetDict(
            {
                split: dataset.map(
                    self._encode_with_rows,
                    batched=True,
                    with_indices=True,
                    fn_kwargs={"split": split, "features": dataset.features, "function": function},
                    remove_columns=dataset.column_names,
                    num_proc=self.preprocessing_num_workers,
                    desc=f"{desc} {split}",
                    **options,
                )
                for split, dataset in raw.items()
            }
        )

    def _encode_with_rows(
        self, batch: dict[str, list], indices: list[int], split: str, features: datasets.Features, function: Callable
    ) -> dict[str, list]:
        encoded = function(batch, split, features, indices)
        fields = self.row_fields(batch, split, features) if split != "train" else None
        if fields is not None:
            id_column = self.id_column or ("id" if "id" in batch else None)
            ids = batch[id_column] if id_column else indices
            encoded["row"] = [
                {"id": row_id, **{name: values[i] for name, values in fields.items()}} for i, row_id in enumerate(ids)
            ]
        return encoded

    @property
    @abstractmethod
    def collator(self) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """Turns a list of tokenized examples into a padded batch."""

    def read_file(self, path: Path) -> datasets.Dataset:
        """Read one local file into a `Dataset`. Tasks with extra formats (CoNLL, plain text) extend this."""
        return sources.read_table(path, self.reader_options)

    def supported_suffixes(self) -> list[str]:
        return sorted(sources.READERS)

    @property
    def file_encoding(self) -> str:
        """The encoding of local files: data.reader_options' `encoding`, else UTF-8. The csv and json readers
        take the option themselves; the plain-text readers (`read_text`) and SQuAD JSON read it here, so the one
        option reads every file type."""
        return sources.file_encoding(self.reader_options)

    def read_text(self, path: Path) -> str:
        """The text of a plain-text file (CoNLL, .txt, parallel lines) in `file_encoding`."""
        return sources.read_text(path, self.reader_options)

    # ------------------------------------------------------------------ loading

    @property
    def validation_sets(self) -> list[str] | None:
        """The names of several validation sets (`validation_file` given as a mapping), else None."""
        return list(self.validation_file) if isinstance(self.validation_file, dict) else None

    @property
    def validation_splits(self) -> list[str]:
        """The split of each validation set, in order: `validation`, or `validation/<name>` per named set."""
        return [f"validation/{name}" for name in self.validation_sets] if self.validation_sets else ["validation"]

    def files(self) -> dict[str, str]:
        """Every split given as a local file: split name -> path (named validation sets one by one); a streamed
        training split's shards are not among them (`shards`)."""
        files = {split: getattr(self, f"{split}_file") for split in sources.SPLITS if getattr(self, f"{split}_file")}
        if self.streaming:
            files.pop("train", None)
        if self.validation_sets:
            del files["validation"]
            files.update({f"validation/{name}": path for name, path in self.validation_file.items()})
        return files

    def source(self, split: str) -> str:
        """Where a split comes from, in words for error messages."""
        if split == "predict" and self._predicting_inputs:
            return "the inputs given to predict"
        if split == "train" and self.streaming:
            return self.train_file or f"{self.dataset_name} (streamed)"
        path = self.files().get(split)
        if path:
            return path
        if split == "validation" and self.train_file and not self.validation_file:
            return f"{self.train_file} (held-out part)"
        if split == "predict" and self.test_file:
            return self.test_file  # predict falls back to the test split
        return f"{self.dataset_name}[{split}]"

    def load_raw(self) -> datasets.DatasetDict:
        """Load every configured split (`sources.load_splits`). A training file replaces a Hub dataset set
        alongside it (a config's `dataset_name: glue` with `--data.train_file` on the command line reads the
        files, as the HF scripts do, and never goes to the Hub)."""
        if self.streaming:
            return self._load_streamed()
        if self.dataset_name and self.train_file:
            rank_zero_info(
                f"data.train_file is set, so it replaces the Hub dataset '{self.dataset_name}' (data.dataset_name), "
                "which is not loaded."
            )
            self.dataset_name = self.dataset_config_name = None
        hub = (self.dataset_name, self.dataset_config_name) if self.dataset_name else None
        return sources.load_splits(
            self.files(), hub, self.reader_options, self.read_file, self.supported_suffixes(), self.source
        )

    def _load_streamed(self) -> datasets.DatasetDict:
        """Streaming: the training shards (`shards`) and their first rows as the `train` split that `check_data`
        checks and learns from; the other splits read whole, a Hub dataset's first `max_eval_samples` /
        `max_predict_samples` rows of each."""
        if not self.streams:
            raise HFTrainError(
                f"data.streaming is true, but {type(self).__name__} trains on map-style data only: its examples "
                "are built from whole splits (labels aligned over word lists, answers over context windows). Set "
                "data.streaming=false; streamed training covers text classification, seq2seq and causal LM."
            )
        if self.max_train_samples is not None or self.group_by_length:
            raise HFTrainError(
                "data.max_train_samples and data.group_by_length need map-style training data; a stream's length "
                "is set by trainer.max_steps or data.examples_per_epoch. Unset them, or set data.streaming=false."
            )
        raw = datasets.DatasetDict()
        if self.train_file:
            self.shards = local_shards(self.train_file, "data.train_file")
            if self.dataset_name:
                rank_zero_info(f"data.train_file is set, so it replaces the Hub dataset '{self.dataset_name}'.")
                self.dataset_name = self.dataset_config_name = None
        elif self.dataset_name:
            hub = sources.load_hub_dataset(
                self.dataset_name, self.dataset_config_name, self.reader_options, streaming=True
            )
            if "train" not in hub:
                raise HFTrainError(
                    f"The Hub dataset '{self.dataset_name}' has no train split to stream (it has "
                    f"{', '.join(hub)}). Give data.train_file, or another dataset."
                )
            self.shards = hub_shards(hub.pop("train"))
            for split, stream in hub.items():
                limit = self.max_predict_samples if split in ("test", "predict") else self.max_eval_samples
                if limit is not None:
                    raw[split] = datasets.Dataset.from_list(list(stream.take(limit)), features=stream.features)
                else:
                    setting = "max_predict_samples" if split in ("test", "predict") else "max_eval_samples"
                    rank_zero_warn(
                        f"The Hub dataset's {split} split is not used: a streamed split is read only up to "
                        f"data.{setting} rows, which is unset. Set it to use that split."
                    )
        else:
            raise HFTrainError(
                "data.streaming is true but no training data is given: set data.dataset_name to a Hub dataset or "
                "data.train_file to local shards (a path or a glob such as 'data/train-*.jsonl.gz')."
            )
        if self.files():
            raw.update(
                sources.load_splits(
                    self.files(), None, self.reader_options, self.read_file, self.supported_suffixes(), self.source
                )
            )
        raw["train"] = datasets.Dataset.from_list(first_rows(self.shards, **self._shard_options()))
        return raw

    def _shard_options(self) -> dict[str, str]:
        """How local shards are read: the column a .txt line fills, and the encoding of text-based shards."""
        return {"text_column": getattr(self, "text_column", None) or "text", "encoding": self.file_encoding}

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            if not self.tokenizer_name:
                raise HFTrainError(
                    "No tokenizer: set model.model_name_or_path (the CLI passes it on to the data) or "
                    "data.tokenizer_name."
                )
            self._tokenizer = load_tokenizer(
                self.tokenizer_name, self.tokenizer_revision, self.trust_remote_code, self.pad_with_eos
            )
        return self._tokenizer

    def cache_path(self) -> Path:
        """The cache folder for this data + tokenizer + settings; any change to one of them misses it."""
        if self._cache_path is None:
            files: dict[str, Any] = {}
            for split, file in self.files().items():
                stat = Path(file).stat()
                files[split] = [str(Path(file).resolve()), stat.st_size, stat.st_mtime_ns]
            key = {
                "task": f"{type(self).__module__}.{type(self).__qualname__}",
                "hftrain": __version__,
                "settings": {k: v for k, v in self.settings().items() if k not in self.loader_settings},
                "sources": files,
                "tokenizer": tokenizer_fingerprint(self.tokenizer),
            }
            root = Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_root()
            self._cache_path = cache_path(root, type(self).__name__, key)
        return self._cache_path

    @property
    def data_source(self) -> Source:
        """How the splits become model inputs and batches (see `sources.Source`): map-style, tokenized once."""
        if self._data_source is None:
            cache = TokenizedCache(self.cache_path(), overwrite=self.overwrite_cache)
            if self.streaming:
                evaluated = datasets.DatasetDict({k: v for k, v in self.raw.items() if k != "train"})
                self._data_source = StreamSource(
                    self.raw, sources.MapSource(evaluated, self._tokenize, cache), self._stream()
                )
            else:
                self._data_source = sources.MapSource(self.raw, self._tokenize, cache)
        return self._data_source

    def _stream(self) -> StreamDataset:
        """The streamed training split, as one process reads it; `StreamSource.loader` deals it to this rank."""
        return StreamDataset(
            self.shards,
            self._encode_stream,
            examples=1,
            seed=self.seed,
            buffer_size=self.shuffle_buffer,
            on_bad_row=self.on_bad_row,
            needed_columns=self._needed_columns(),
            block_size=self.stream_block_size(),
            **self._shard_options(),
        )

    def stream_block_size(self) -> int | None:
        """Streaming: pack encoded examples into blocks of this many tokens (causal LM); None: one per row."""
        return None

    def _needed_columns(self) -> tuple[str, ...]:
        """The columns a streamed row must have: those the settings name (`text_column`, `label_column`, …) that
        the first rows of the stream have."""
        present = set(self.raw["train"].column_names)
        named = {v for k, v in self.settings().items() if k.endswith("_column") and k != "id_column"}
        return tuple(sorted(c for c in named if isinstance(c, str) and c in present))

    def _encode_stream(self, rows: list[dict], numbers: list[int]) -> list[dict[str, list]]:
        """`encode` over a chunk of streamed rows (numbered in the stream, for its messages), as one example a
        row; the lengths it returns for the cache's truncation notes are dropped."""
        names = list(dict.fromkeys(name for row in rows for name in row))
        batch = {name: [row.get(name) for row in rows] for name in names}
        encoded = self.encode(batch, "train", self.raw["train"].features, [n - 1 for n in numbers])
        keys = [k for k in encoded if k != "length" and not k.endswith("_length")]
        return [dict(zip(keys, values, strict=True)) for values in zip(*(encoded[k] for k in keys), strict=True)]

    def _stream_examples(self) -> int | None:
        """The training examples one rank serves per epoch of a stream: its share of `examples_per_epoch`, else
        of the whole run (`trainer.max_steps`); None for map-style data, whose splits have a length."""
        if not self.streaming:
            return None
        trainer = self.trainer
        if self.examples_per_epoch is not None:
            return max(self.examples_per_epoch // (trainer.world_size if trainer else 1), 1)
        if trainer is None or trainer.max_steps is None or trainer.max_steps < 0:
            raise HFTrainError(
                "Streamed training data (data.streaming=true) has no length, so the run cannot tell when it ends: "
                "set trainer.max_steps (optimizer steps to train), or data.examples_per_epoch (the training "
                "examples that make an epoch; validation and epoch checkpoints follow it) with trainer.max_epochs."
            )
        return trainer.max_steps * trainer.accumulate_grad_batches * self.batch_size

    def _tokenize(self, raw: datasets.DatasetDict) -> tuple[datasets.DatasetDict, list[str]]:
        """`preprocess`, and the notes it left (rows cut at max_length)."""
        self._notes = []
        return self.preprocess(raw), self._notes

    def prepare_data(self) -> None:
        """Tokenize every split once and save it; later runs, the other ranks and the other nodes sharing the
        filesystem load the saved copy (`TokenizedCache.write_once`)."""
        self.data_source.prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is None:
            self.datasets = self.data_source.encoded()

    # ------------------------------------------------------------------ dataloaders

    def _loader(self, split: str, train: bool = False) -> StatefulDataLoader:
        """A dataloader whose position (shuffle order and batches served) is saved in checkpoints, so a
        run resumed mid-epoch continues with the very next batch (Lightning saves any stateful loader)."""
        if self.datasets is None:
            raise HFTrainError(
                "The data is not tokenized yet: call prepare_data() and setup() first (a Trainer does both)."
            )
        if split not in self.datasets:
            setting = "dataset_name or data.train_file" if split == "train" else f"{split}_file"
            raise HFTrainError(f"There is no {split} split to load: set data.{setting}.")
        collate = KeepRows(self.collator)
        if train and self._splits_batches():
            collate = LengthSplit(collate, self.tokenizer.model_input_names[0])
        options = LoaderOptions(
            train=train,
            batch_size=self.batch_size if train else self.eval_batch_size or 2 * self.batch_size,
            collate=collate,
            num_workers=self.num_workers,
            seed=self.seed,
            input_name=self.tokenizer.model_input_names[0],
            group_by_length=self.group_by_length,
            length_group_batches=self.length_group_batches,
            sharding=self._sharding() if train else None,
            examples=self._stream_examples() if train else None,
        )
        return self.data_source.loader(self.datasets[split], options)

    def _sharding(self) -> dict[str, int] | None:
        """Under DDP, this rank's share of the training order (`num_replicas`, `rank`), dealt by the loader."""
        trainer = self.trainer
        if trainer is None or not trainer.distributed_sampler_kwargs or not internals.shards_data(trainer):
            return None
        return trainer.distributed_sampler_kwargs

    def _splits_batches(self) -> bool:
        if self.loss_reads_padding:
            return False
        if self.split_by_length is not None:
            return self.split_by_length
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cpu"

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> StatefulDataLoader | list:
        """The validation loader; with several validation sets, one per set in order (Lightning runs them
        one after the other and tells the module which by `dataloader_idx`)."""
        splits = [s for s in self.validation_splits if self.datasets is not None and s in self.datasets]
        if not self.validation_sets:
            return self._loader(splits[0]) if splits else []
        return [self._loader(split) for split in splits]

    def test_dataloader(self) -> StatefulDataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> StatefulDataLoader:
        return self._loader("predict")

    # ------------------------------------------------------------------ predicting on inputs in memory

    @abstractmethod
    def input_columns(self) -> list[str]:
        """The columns a predict row needs, in the order a tuple input gives them (`predict_rows`)."""

    def predict_rows(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """Raw inputs as rows of a predict file (`data_checks.input_rows`: a string fills the one input column, a
        tuple several in order, a dict is a row); a task whose one value is a list (NER's words) makes its rows
        itself."""
        return input_rows(inputs, self.input_columns())

    def predict_loader(self, inputs: Any, batch_size: int | None = None) -> DataLoader:
        """Batches of raw inputs (see `predict_rows`; one input or a list) made exactly as a predict file's are:
        the same checks (`check_data`), tokenization (`preprocess`) and collator, all in memory."""
        inputs = [inputs] if isinstance(inputs, str | Mapping) else list(inputs)
        if not inputs:
            raise HFTrainError("Nothing to predict: give a list of inputs (strings, tuples or dicts).")
        raw = datasets.DatasetDict({"predict": datasets.Dataset.from_list(self.predict_rows(inputs))})
        self._predicting_inputs = True  # messages name the inputs (`source`), not the predict file
        try:
            self.check_data(raw)
            with console.library_progress_bars_off():
                encoded, notes = self._tokenize(raw)
            sources.say_notes(notes)
        finally:
            self._predicting_inputs = False
        return DataLoader(
            encoded["predict"],
            batch_size=batch_size or self.eval_batch_size or 2 * self.batch_size,
            collate_fn=KeepRows(self.collator),
        )
