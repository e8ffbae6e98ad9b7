"""The base data module: load a Hub dataset or local files, tokenize once into an on-disk cache, serve batches.

A task's data module is a dataclass that adds its own fields (columns, lengths) to the ones here and must
provide four things, abstract here so that a task missing one cannot be built: `check_data` (columns and
values, plus anything learnt from the data such as the label set), `encode` (a batch of raw rows to model
inputs, run by `datasets.map(batched=True)` over every split in `preprocess`), `collator`, and
`input_columns` (what one raw input to `predict` fills).
Everything else — reading csv/tsv/json/jsonl/parquet or a Hub dataset, carving a validation split,
caching the tokenized splits so a second run skips tokenization, dataloaders — lives here once.
"""

import hashlib
import json
import os
import re
import shutil
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import datasets
import pyarrow as pa
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from hftrain import __version__
from hftrain.core import console, internals
from hftrain.core.errors import HFTrainError
from hftrain.core.length_split import LengthSplit
from hftrain.core.pretrained import load_tokenizer
from hftrain.core.sampling import EpochShuffleSampler, LengthGroupedSampler, LongestFirstSampler, sequence_lengths

SPLITS = ("train", "validation", "test", "predict")
# bumped whenever the columns of the tokenized cache, or what is kept with it, change, so that no run reads an
# older layout
CACHE_FORMAT = 3
# what tokenizing found worth saying (rows cut at max_length), kept with the cache and said by every run reusing it
NOTES_FILE = "hftrain_notes.json"

# file suffix -> (datasets builder, its default reader options)
READERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}


def column(data: datasets.Dataset | Mapping[str, list], name: str) -> list:
    """The values of a column of a dataset (or of a batch of its rows) as a list. A dataset's column is read
    from Arrow at once: iterating `dataset[name]`, a lazy `datasets.Column`, formats row by row (~10 µs a
    row), which made the data checks take 3 s at every start on SST-2's 67k rows."""
    values = data[name]
    return values if isinstance(values, list) else values[:]


def default_cache_root() -> Path:
    """Where tokenized splits are cached: ``$HFTRAIN_CACHE``, else ``~/.cache/hftrain``."""
    return Path(os.environ.get("HFTRAIN_CACHE", Path.home() / ".cache" / "hftrain"))


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything about a tokenizer that changes its output, so a changed tokenizer misses the cache."""
    parts = [
        type(tokenizer).__name__,
        str(tokenizer.model_max_length),
        tokenizer.padding_side,
        tokenizer.truncation_side,
        json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
        str(getattr(tokenizer, "chat_template", None)),  # renders conversations (language modelling)
    ]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts.append(backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items())))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


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

    # whether the tokenizer pads with its end-of-sequence token when it has no padding token (causal LMs)
    pad_with_eos: ClassVar[bool] = False
    # whether the training loss counts a batch's padded positions (question answering's start and end softmax
    # runs over every position), so that a batch split by length, each part padded less, has another loss
    loss_reads_padding: ClassVar[bool] = False
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
        }
    )

    def __post_init__(self) -> None:
        super().__init__()
        if self.seed is None:
            self.seed = internals.global_seed(default=42)
        self._check_settings()
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._cache_path: Path | None = None
        self._predicting_inputs = False
        self._notes: list[str] = []
        self.datasets: datasets.DatasetDict | None = None
        self.raw = self.load_raw()
        self.check_data(self.raw)
        if self.id_column:
            self.require_columns({k: v for k, v in self.raw.items() if k != "train"}, {"id_column": self.id_column})
        self.hold_out_validation(self.raw)
        self.limit_rows(self.raw)
        self.save_hyperparameters()
        # the CLI records the config as given; add what was learnt from the data (the label set)
        self.save_hyperparameters({**self.hparams, **self.settings()})

    def settings(self) -> dict[str, Any]:
        """The current value of every field, including those filled in from the data."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # ------------------------------------------------------------------ what each task provides

    @abstractmethod
    def check_data(self, raw: datasets.DatasetDict) -> None:
        """Check the raw splits' columns and values, and fill in settings learnt from them (the label set)."""

    @abstractmethod
    def encode(self, batch: dict[str, list], split: str) -> dict[str, list]:
        """Turn a batch of raw rows of `split` into model inputs (token ids, labels). A task whose messages
        name rows maps it with `map_splits(..., with_indices=True)`, which also passes `rows`, the batch's
        positions in its split."""

    def row_fields(self, batch: dict[str, list], split: str) -> dict[str, list] | None:
        """What each row of an evaluation or predict split carries through to predictions.jsonl and the
        TensorBoard examples, besides its id: the input text and, where the data has it, the gold answer
        (key `gold`), as columns of the batch's rows. None: no rows (the split's encoded rows are not one
        per input row)."""
        return None

    def preprocess(self, raw: datasets.DatasetDict) -> datasets.DatasetDict:
        """Turn raw splits into model inputs with `encode`; called once, then cached on disk."""
        return self.map_splits(raw, self.encode)

    def tokenize_truncated(
        self, texts: list[list[str]], max_length: int, as_target: bool = False
    ) -> tuple[dict[str, list], list[int]]:
        """`texts` (one column, or two for pairs; targets with `as_target`) tokenized and cut to `max_length`,
        and each row's length before the cut, for `report_truncation`. Rows are tokenized whole first; the few
        longer than `max_length` again with the tokenizer's own truncation, which keeps the special tokens and
        cuts a pair's longer text first."""

        def tokenize(columns: list[list[str]], **options: Any) -> dict[str, list]:
            return dict(
                self.tokenizer(text_target=columns[0], **options) if as_target else self.tokenizer(*columns, **options)
            )

        encoded = tokenize(texts, verbose=False)  # not verbose: rows longer than the model takes are cut below
        lengths = [len(ids) for ids in encoded["input_ids"]]
        long = [i for i, length in enumerate(lengths) if length > max_length]
        if long:
            cut = tokenize([[values[i] for i in long] for values in texts], truncation=True, max_length=max_length)
            for key, values in cut.items():
                for i, value in zip(long, values, strict=True):
                    encoded[key][i] = value
        return encoded, lengths

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
        limit = getattr(self, setting)
        for split, encoded in processed.items():
            if lengths not in encoded.column_names:
                continue
            cut = [n for n in column(encoded, lengths) if n > limit]
            if cut:
                self._notes.append(
                    f"{len(cut)} of {len(encoded)} {rows} in the {split} split ({self.source(split)}) are longer than "
                    f"data.{setting}={limit} {unit} (the longest has {max(cut)}): "
                    f"{effect(split, encoded) if callable(effect) else effect}. Raise data.{setting} to keep them."
                )
            processed[split] = encoded.remove_columns(lengths)
        return processed

    @staticmethod
    def _say_notes(notes: list[str]) -> None:
        for note in notes:
            rank_zero_warn(note)

    def map_splits(
        self, raw: datasets.DatasetDict, function: Callable, desc: str = "Tokenizing", **options: Any
    ) -> datasets.DatasetDict:
        """`function(batch, split=…)` (with `with_indices`: `function(batch, split=…, rows=…)`) over every split
        with `datasets.map(batched=True)`, replacing the raw columns by what it returns, plus the `row` column
        of `row_fields` outside the training split; other `options` go to `map`."""
        with_indices = options.pop("with_indices", False)
        return datasets.DatasetDict(
            {
                split: dataset.map(
                    self._encode_with_rows,
                    batched=True,
                    with_indices=True,
                    fn_kwargs={"split": split, "function": function, "with_indices": with_indices},
                    remove_columns=dataset.column_names,
                    num_proc=self.preprocessing_num_workers,
                    desc=f"{desc} {split}",
                    **options,
                )
                for split, dataset in raw.items()
            }
        )

    def _encode_with_rows(
        self, batch: dict[str, list], indices: list[int], split: str, function: Callable, with_indices: bool
    ) -> dict[str, list]:
        encoded = function(batch, split=split, rows=indices) if with_indices else function(batch, split=split)
        fields = self.row_fields(batch, split) if split != "train" else None
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
        builder, options = READERS[path.suffix.lower()]
        options = {**options, **(self.reader_options or {})}
        try:
            with console.datasets_bars_hidden(), console.datasets_read_errors_hidden():
                dataset = datasets.load_dataset(builder, data_files={"data": str(path)}, split="data", **options)
        except Exception as err:  # noqa: BLE001 - datasets wraps reader errors in many types
            if "corresponds to no data" in str(err):  # a header without rows: report it as an empty split
                return datasets.Dataset.from_dict({})
            cause = err.__cause__ or err
            if isinstance(cause, UnicodeDecodeError):
                raise self.encoding_error(path, str(cause)) from err
            raise HFTrainError(
                f"Could not read {path}: {type(cause).__name__}: {cause}. Check that the file is valid "
                f"{path.suffix}; reader options can be passed with data.reader_options."
            ) from err
        if builder == "json":  # pyarrow's JSON reader takes bytes that are not UTF-8 into text columns unchecked
            try:
                dataset.data.table.validate(full=True)
            except pa.ArrowInvalid as err:
                found = re.match(r"Column (\d+)", str(err))
                where = f"column '{dataset.column_names[int(found[1])]}'" if found else "a text column"
                raise self.encoding_error(path, f"{where} holds bytes that are not UTF-8") from err
        # a UTF-8 byte-order mark sticks to the first column name of some files (the GLUE MRPC TSVs)
        renames = {c: c.lstrip("\ufeff") for c in dataset.column_names if c.startswith("\ufeff")}
        return dataset.rename_columns(renames) if renames else dataset

    def supported_suffixes(self) -> list[str]:
        return sorted(READERS)

    @property
    def file_encoding(self) -> str:
        """The encoding of local files: data.reader_options' `encoding`, else UTF-8. The csv and json readers
        take the option themselves; the plain-text readers (`read_text`) and SQuAD JSON read it here, so the one
        option reads every file type."""
        return (self.reader_options or {}).get("encoding") or "utf-8"

    def read_text(self, path: Path) -> str:
        """The text of a plain-text file (CoNLL, .txt, parallel lines) in `file_encoding`."""
        encoding = self.file_encoding
        try:
            return path.read_text(encoding=encoding)
        except UnicodeDecodeError as err:
            line = err.object[: err.start].count(b"\n") + 1
            raise self.encoding_error(path, f"line {line}: {err}") from err
        except LookupError as err:
            raise HFTrainError(
                f"data.reader_options has encoding '{encoding}', which Python does not know ({err}). Use a codec "
                "name such as utf-8, latin-1 or cp1252."
            ) from err

    def encoding_error(self, path: Path, detail: str) -> HFTrainError:
        """The error for a file that is not text in the expected encoding, with the option that reads it."""
        encoding = "UTF-8" if self.file_encoding == "utf-8" else self.file_encoding
        options = {**(self.reader_options or {}), "encoding": "latin-1"}
        plain = {
            k: v if isinstance(v, str) and re.fullmatch(r"[\w.-]+", v) else json.dumps(v) for k, v in options.items()
        }
        flow = "{" + ", ".join(f"{k}: {v}" for k, v in plain.items()) + "}"
        return HFTrainError(
            f"Could not read {path}: it is not {encoding} text ({detail}). If it was saved in another encoding, "
            f"such as Latin-1 (ISO-8859-1), name it: --data.reader_options '{flow}' on the command line, or "
            f"reader_options: {flow} under data's init_args in a config. Or convert the file to UTF-8."
        )

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
        """Every split given as a local file: split name -> path (named validation sets one by one)."""
        files = {split: getattr(self, f"{split}_file") for split in SPLITS if getattr(self, f"{split}_file")}
        if self.validation_sets:
            del files["validation"]
            files.update({f"validation/{name}": path for name, path in self.validation_file.items()})
        return files

    @staticmethod
    def setting(split: str) -> str:
        """The config key of a split's file: `data.train_file`, `data.validation_file.<name>`."""
        split, _, name = split.partition("/")
        return f"data.{split}_file" + (f".{name}" if name else "")

    def source(self, split: str) -> str:
        """Where a split comes from, in words for error messages."""
        if split == "predict" and self._predicting_inputs:
            return "the inputs given to predict"
        path = self.files().get(split)
        if path:
            return path
        if split == "validation" and self.train_file and not self.validation_file:
            return f"{self.train_file} (held-out part)"
        if split == "predict" and self.test_file:
            return self.test_file  # predict falls back to the test split
        return f"{self.dataset_name}[{split}]"

    def load_raw(self) -> datasets.DatasetDict:
        """Load every configured split and reject empty ones.

        A training file replaces a Hub dataset set alongside it (a config's `dataset_name: glue` with
        `--data.train_file` on the command line reads the files, as the HF scripts do, and never goes to the
        Hub); without one, files replace only their own splits of the Hub dataset.
        """
        files = self.files()
        if self.dataset_name and self.train_file:
            rank_zero_info(
                f"data.train_file is set, so it replaces the Hub dataset '{self.dataset_name}' (data.dataset_name), "
                "which is not loaded."
            )
            self.dataset_name = self.dataset_config_name = None
        if self.dataset_name:
            raw = self._load_hub_dataset()
        elif files:
            raw = datasets.DatasetDict()
        else:
            raise HFTrainError(
                "No data given: set data.dataset_name to a Hugging Face Hub dataset, or data.train_file "
                "(and optionally validation_file, test_file, predict_file) to local files."
            )
        if self.validation_sets:  # named sets replace a Hub dataset's own validation split
            raw.pop("validation", None)
        for split, file in files.items():
            raw[split] = self.read_file(self._existing_file(split, file))
        if "predict" not in raw and "test" in raw:
            raw["predict"] = raw["test"]
        for split, dataset in raw.items():
            if len(dataset) == 0:
                raise HFTrainError(
                    f"The {split} split ({self.source(split)}) has no rows. Give a file with at least one "
                    f"example, or leave {self.setting(split)} unset."
                )
        return raw

    def hold_out_validation(self, raw: datasets.DatasetDict) -> None:
        """Without a validation split, hold out `validation_split_percentage` of the training rows (after
        `check_data`, so its error messages count rows as they stand in the training file)."""
        has_validation = any(split.startswith("validation") for split in raw)
        if not has_validation and "train" in raw and self.validation_split_percentage > 0:
            if len(raw["train"]) < 2:
                raise HFTrainError(
                    f"The training data ({self.source('train')}) has {len(raw['train'])} row: too few to hold "
                    "out a validation split. Add rows, give data.validation_file, or set "
                    "data.validation_split_percentage to 0."
                )
            held_out = raw["train"].train_test_split(test_size=self.validation_split_percentage / 100, seed=self.seed)
            raw["train"], raw["validation"] = held_out["train"], held_out["test"]
            rank_zero_info(
                f"No validation split given: holding out {len(raw['validation'])} of the training rows "
                f"({self.validation_split_percentage:g}%)."
            )

    def limit_rows(self, raw: datasets.DatasetDict) -> None:
        """Keep the first `max_train_samples` / `max_eval_samples` / `max_predict_samples` rows of each split."""
        for split, dataset in raw.items():
            if split == "train":
                limit = self.max_train_samples
            else:
                limit = self.max_predict_samples if split in ("test", "predict") else self.max_eval_samples
            if limit is not None and limit < len(dataset):
                raw[split] = dataset.select(range(limit))

    def _existing_file(self, split: str, file: str) -> Path:
        path = Path(file).expanduser()
        if not path.is_file():
            raise HFTrainError(
                f"{self.setting(split)} '{file}' does not exist (looked in {path.resolve()}). Check the path; "
                "relative paths are read from the folder you run hftrain in."
            )
        if path.suffix.lower() not in self.supported_suffixes():
            raise HFTrainError(
                f"{self.setting(split)} '{file}' has an unsupported file type '{path.suffix}'. Use one of "
                f"{', '.join(suffix or '(none: plain text)' for suffix in self.supported_suffixes())}."
            )
        return path

    def _load_hub_dataset(self) -> datasets.DatasetDict:
        try:
            raw = datasets.load_dataset(self.dataset_name, self.dataset_config_name, **(self.reader_options or {}))
        except Exception as err:  # noqa: BLE001 - network, missing dataset and config errors all land here
            raise HFTrainError(
                f"Could not load the dataset '{self.dataset_name}'"
                f"{f' ({self.dataset_config_name})' if self.dataset_config_name else ''} from the Hugging "
                f"Face Hub: {type(err).__name__}: {err}. Check the name and your network connection; offline, "
                "point data.train_file / validation_file at local files instead."
            ) from err
        return datasets.DatasetDict({self._hub_split_name(split, raw): d for split, d in raw.items()})

    @staticmethod
    def _hub_split_name(split: str, raw: datasets.DatasetDict) -> str:
        """Our split name for a Hub split: `dev`/`valid` are validation, and where there is no plain
        `validation` (`test`), the first of `validation_matched`, … (MNLI) takes its place."""
        if split in ("dev", "valid"):
            return "validation"
        for plain in ("validation", "test"):
            variants = sorted(s for s in raw if s.startswith(f"{plain}_"))
            if plain not in raw and variants and split == variants[0]:
                return plain
        return split

    def require_columns(self, raw: dict[str, datasets.Dataset], columns: dict[str, str | None], optional=()) -> None:
        """Fail early when a configured column is missing from a split.

        `columns` maps setting names (`text_column`) to column names; columns in `optional` may be absent
        from the predict split, which has no labels.
        """
        for split, dataset in raw.items():
            for setting, column in columns.items():
                if column is None or column in dataset.column_names:
                    continue
                if split == "predict" and setting in optional:
                    continue
                raise HFTrainError(
                    f"The {split} data ({self.source(split)}) has no column '{column}' (data.{setting}). "
                    f"Its columns are: {', '.join(dataset.column_names)}. Set data.{setting} to one of them."
                )

    @staticmethod
    def class_names(dataset: datasets.Dataset, column: str) -> list[str] | None:
        """The names of a column of ClassLabel ids, or of lists of them (Hub datasets), else None."""
        feature = dataset.features.get(column)
        inner = getattr(feature, "feature", feature)
        return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None

    @staticmethod
    def distinct_labels(values: Iterable) -> list[str]:
        """A label set learnt from the data: the distinct values, numbers in numeric order before strings."""
        return [str(v) for v in sorted(set(values), key=lambda v: (isinstance(v, str), v))]

    def require_text(self, raw: datasets.DatasetDict, columns: list[str | None]) -> None:
        """Fail early, naming the row, when a text column holds an empty cell (None) instead of a string;
        columns a split does not have (the predict split's labels) are skipped."""
        for split, dataset in raw.items():
            for name in columns:
                if name is None or name not in dataset.column_names:
                    continue
                missing = [i for i, text in enumerate(column(dataset, name)) if not isinstance(text, str)]
                if missing:
                    raise HFTrainError(
                        f"The {split} data ({self.source(split)}) has no text in column '{name}' at row "
                        f"{missing[0] + 1} ({len(missing)} such rows). Fill in or drop those rows."
                    )

    # ------------------------------------------------------------------ tokenization cache

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
            sources: dict[str, Any] = {}
            for split, file in self.files().items():
                stat = Path(file).stat()
                sources[split] = [str(Path(file).resolve()), stat.st_size, stat.st_mtime_ns]
            settings = {k: v for k, v in self.settings().items() if k not in self.loader_settings}
            payload = {
                "task": f"{type(self).__module__}.{type(self).__qualname__}",
                "hftrain": __version__,
                "format": CACHE_FORMAT,
                "settings": settings,
                "sources": sources,
                "tokenizer": tokenizer_fingerprint(self.tokenizer),
            }
            key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]
            root = Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_root()
            self._cache_path = root / "datasets" / f"{type(self).__name__}-{key}"
        return self._cache_path

    def prepare_data(self) -> None:
        """Tokenize every split once and save it; later runs (and the other DDP ranks) load the saved copy."""
        path = self.cache_path()
        if path.is_dir() and self.overwrite_cache:
            shutil.rmtree(path)
        if path.is_dir():
            rank_zero_info(f"Reusing tokenized data from {path}")
            return
        self._notes = []
        processed = self.preprocess(self.raw)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
        with console.datasets_bars_hidden():
            processed.save_to_disk(str(partial))
        (partial / NOTES_FILE).write_text(json.dumps(self._notes))
        try:
            partial.rename(path)
        except OSError:  # another process finished the same cache first
            shutil.rmtree(partial, ignore_errors=True)
        rank_zero_info(f"Tokenized data cached in {path}")

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is None:
            if not self.cache_path().is_dir():
                self.prepare_data()
            self.datasets = datasets.load_from_disk(str(self.cache_path()))
            self._say_notes(json.loads((self.cache_path() / NOTES_FILE).read_text()))

    # ------------------------------------------------------------------ dataloaders

    def _check_settings(self) -> None:
        for name, file in (self.validation_file if isinstance(self.validation_file, dict) else {}).items():
            if not re.fullmatch(r"[\w.-]+", name) or not isinstance(file, str):
                raise HFTrainError(
                    f"data.validation_file maps names to files, but has {name!r}: {file!r}. Use names of letters, "
                    "digits, '_', '-' and '.' (they become metric keys: val/<name>/...), each with one file path."
                )
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise HFTrainError(f"data.{name} must be a positive integer (or unset), got {getattr(self, name)}.")
        for name in ("batch_size", "max_length", "length_group_batches"):
            if getattr(self, name) < 1:
                raise HFTrainError(f"data.{name} must be a positive integer, got {getattr(self, name)}.")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise HFTrainError(f"data.eval_batch_size must be a positive integer, got {self.eval_batch_size}.")
        if self.num_workers < 0:
            raise HFTrainError(f"data.num_workers must be 0 or more, got {self.num_workers}.")
        if self.split_by_length and self.loss_reads_padding:
            raise HFTrainError(
                f"data.split_by_length is true, but {type(self).__name__}'s training loss counts the padded "
                "positions of a batch (the answer's start and end are picked among all of them), so a batch split "
                "into less padded parts would train on another loss. Leave data.split_by_length unset or false."
            )
        if not 0 <= self.validation_split_percentage < 100:
            raise HFTrainError(
                f"data.validation_split_percentage must be in [0, 100), got {self.validation_split_percentage}."
            )

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
        dataset = self.datasets[split]
        sharding = self._sharding() if train else None
        if train and self.group_by_length:
            sampler = LengthGroupedSampler(
                self._lengths(dataset),
                self.batch_size,
                self.seed,
                megabatch_mult=self.length_group_batches,
                num_replicas=sharding["num_replicas"] if sharding else 1,
            )
        elif train:
            sampler = EpochShuffleSampler(len(dataset), self.seed)
        else:
            sampler = LongestFirstSampler(self._lengths(dataset))
        if sharding:
            sampler = DistributedSamplerWrapper(sampler, shuffle=False, **sharding)
        collate = KeepRows(self.collator)
        if train and self._splits_batches():
            collate = LengthSplit(collate, self.tokenizer.model_input_names[0])
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size or 2 * self.batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def _sharding(self) -> dict[str, int] | None:
        """Under DDP, this rank's share of the training order (`num_replicas`, `rank`): positions r, r + W, …,
        dealt here because Lightning's own wrapper reshuffles every training sampler it wraps, which would
        scatter length groups and make a step of all ranks differ from the batch one process takes."""
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

    def _lengths(self, dataset: datasets.Dataset):
        return sequence_lengths(dataset, self.tokenizer.model_input_names[0])

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
        """Raw inputs as rows of a predict file. A dict is a row as it would stand in the file (keys are column
        names); otherwise an input fills `input_columns`: a string the only one, a tuple or list of strings
        several in order (a text pair). An input that fits neither (a pair for a model of single texts) is an
        error saying so; a task whose one value is a list (NER's words) makes its rows itself."""
        columns = self.input_columns()
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
                raise HFTrainError(self._input_shape_error(number, item, columns))
        return rows

    @staticmethod
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

    def predict_loader(self, inputs: Any, batch_size: int | None = None) -> DataLoader:
        """Batches of raw inputs (see `predict_rows`; one input or a list) made exactly as a predict file's are:
        the same checks (`check_data`), tokenization (`preprocess`) and collator, all in memory."""
        inputs = [inputs] if isinstance(inputs, str | Mapping) else list(inputs)
        if not inputs:
            raise HFTrainError("Nothing to predict: give a list of inputs (strings, tuples or dicts).")
        raw = datasets.DatasetDict({"predict": datasets.Dataset.from_list(self.predict_rows(inputs))})
        # the checks and `encode` read a split's features from `self.raw` and name it with `source`
        files, self.raw, self._predicting_inputs = self.raw, raw, True
        try:
            self.check_data(raw)
            self._notes = []
            with console.library_progress_bars_off():
                encoded = self.preprocess(raw)["predict"]
            self._say_notes(self._notes)
        finally:
            self.raw, self._predicting_inputs = files, False
        return DataLoader(
            encoded,
            batch_size=batch_size or self.eval_batch_size or 2 * self.batch_size,
            collate_fn=KeepRows(self.collator),
        )


@dataclass
class KeepRows:
    """A task's collator, with each example's `row` (id, input text, gold answer; see `row_fields`) passed
    on as the batch's list `row`, for `predict_step` and the validation examples; the model never sees it."""

    collate: Callable

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if "row" not in features[0]:
            return self.collate(features)
        batch = self.collate([{k: v for k, v in f.items() if k != "row"} for f in features])
        batch["row"] = [f["row"] for f in features]
        return batch
