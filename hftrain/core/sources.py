"""Where a data module's splits come from: local files or a Hub dataset, read, held out and cut to size, and
the `Source` interface through which a data module turns its splits into model inputs and batches.

Two sources stand behind that interface: `MapSource` here (every split read whole, tokenized once into the
on-disk cache of `core/cache.py`, served by the samplers of `core/loaders.py`) and a streaming source (splits
read and tokenized as batches are served). `TaskDataModule` picks one and asks it; a task never sees which.
"""

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import datasets
import pyarrow as pa
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchdata.stateful_dataloader import StatefulDataLoader

from hftrain.core import console, reuse
from hftrain.core.cache import TokenizedCache
from hftrain.core.errors import HFTrainError
from hftrain.core.loaders import LoaderOptions, map_loader

SPLITS = ("train", "validation", "test", "predict")

# file suffix -> (datasets builder, its default reader options)
READERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}

Split = datasets.Dataset | datasets.IterableDataset
# a split's raw rows (a batch of them: column name -> values) -> what `encode` made of them, and the notes
# tokenizing found worth saying (rows cut at max_length)
Tokenize = Callable[[datasets.DatasetDict], tuple[datasets.DatasetDict, list[str]]]


class Source(Protocol):
    """How a data module's splits become model inputs and batches; `TaskDataModule` calls these three in order.

    `prepare` runs once before training, in one process per node (Lightning's `prepare_data`): the work done
    ahead, such as tokenizing into the cache. `encoded` runs in every process (`setup`) and gives each split as
    model inputs: the tokenized copy loaded, or a stream that tokenizes as it is read. `loader` serves one of
    those splits in batches whose position a checkpoint keeps (`options` carries the batch size, the collator,
    this rank's share and the seed).
    """

    raw: Mapping[str, Split]
    """Every split as read and checked, before tokenizing (the task's `check_data` saw these)."""

    def prepare(self) -> None: ...

    def encoded(self) -> Mapping[str, Split]: ...

    def loader(self, dataset: Split, options: LoaderOptions) -> StatefulDataLoader: ...


@dataclass
class MapSource:
    """Map-style splits: read whole, tokenized once by `tokenize` into `cache` (written by one process however
    many nodes share its filesystem, see `TokenizedCache.write_once`), served in the samplers' order."""

    raw: datasets.DatasetDict
    tokenize: Tokenize
    cache: TokenizedCache

    def prepare(self) -> None:
        self.cache.write_once(lambda: self.tokenize(self.raw))

    def encoded(self) -> datasets.DatasetDict:
        if not self.cache.path.is_dir():  # a process that Lightning's `prepare_data` skipped: a node of its own
            self.prepare()
        splits, notes = self.cache.read()
        say_notes(notes)
        return splits

    def loader(self, dataset: datasets.Dataset, options: LoaderOptions) -> StatefulDataLoader:
        return map_loader(dataset, options)


def say_notes(notes: list[str]) -> None:
    """What tokenizing found worth saying, as warnings from the first process."""
    for note in notes:
        rank_zero_warn(note)


def column(data: datasets.Dataset | Mapping[str, list], name: str) -> list:
    """The values of a column of a dataset (or of a batch of its rows) as a list. A dataset's column is read
    from Arrow at once: iterating `dataset[name]`, a lazy `datasets.Column`, formats row by row (~10 µs a
    row), which made the data checks take 3 s at every start on SST-2's 67k rows."""
    values = data[name]
    return values if isinstance(values, list) else values[:]


# ---------------------------------------------------------------------------------------------- local files


def file_encoding(reader_options: dict[str, Any] | None) -> str:
    """The encoding of local files: the reader options' `encoding`, else UTF-8."""
    return (reader_options or {}).get("encoding") or "utf-8"


def read_table(path: Path, reader_options: dict[str, Any] | None) -> datasets.Dataset:
    """One local csv/tsv/json/jsonl/parquet file as a `Dataset`, every reader error as one paragraph. A search's
    trials read it once (`reuse`), unless it changed on disk in between."""
    stat = path.stat()
    key = ("table", str(path.resolve()), stat.st_mtime_ns, stat.st_size, json.dumps(reader_options, sort_keys=True))
    return reuse.once(key, lambda: _read_table(path, reader_options))


def _read_table(path: Path, reader_options: dict[str, Any] | None) -> datasets.Dataset:
    builder, options = READERS[path.suffix.lower()]
    options = {**options, **(reader_options or {})}
    try:
        with console.datasets_bars_hidden(), console.datasets_read_errors_hidden():
            dataset = datasets.load_dataset(builder, data_files={"data": str(path)}, split="data", **options)
    except Exception as err:  # noqa: BLE001 - datasets wraps reader errors in many types
        if "corresponds to no data" in str(err):  # a header without rows: report it as an empty split
            return datasets.Dataset.from_dict({})
        cause = err.__cause__ or err
        if isinstance(cause, UnicodeDecodeError):
            raise encoding_error(path, str(cause), reader_options) from err
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
            raise encoding_error(path, f"{where} holds bytes that are not UTF-8", reader_options) from err
    # a UTF-8 byte-order mark sticks to the first column name of some files (the GLUE MRPC TSVs)
    renames = {c: c.lstrip("\ufeff") for c in dataset.column_names if c.startswith("\ufeff")}
    return dataset.rename_columns(renames) if renames else dataset


def read_text(path: Path, reader_options: dict[str, Any] | None) -> str:
    """The text of a plain-text file (CoNLL, .txt, parallel lines) in `file_encoding`."""
    encoding = file_encoding(reader_options)
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise encoding_error(path, f"line {line}: {err}", reader_options) from err
    except LookupError as err:
        raise HFTrainError(
            f"data.reader_options has encoding '{encoding}', which Python does not know ({err}). Use a codec "
            "name such as utf-8, latin-1 or cp1252."
        ) from err


def encoding_error(path: Path, detail: str, reader_options: dict[str, Any] | None) -> HFTrainError:
    """The error for a file that is not text in the expected encoding, with the option that reads it."""
    encoding = "UTF-8" if file_encoding(reader_options) == "utf-8" else file_encoding(reader_options)
    options = {**(reader_options or {}), "encoding": "latin-1"}
    plain = {k: v if isinstance(v, str) and re.fullmatch(r"[\w.-]+", v) else json.dumps(v) for k, v in options.items()}
    flow = "{" + ", ".join(f"{k}: {v}" for k, v in plain.items()) + "}"
    return HFTrainError(
        f"Could not read {path}: it is not {encoding} text ({detail}). If it was saved in another encoding, "
        f"such as Latin-1 (ISO-8859-1), name it: --data.reader_options '{flow}' on the command line, or "
        f"reader_options: {flow} under data's init_args in a config. Or convert the file to UTF-8."
    )


def load_splits(
    files: dict[str, str],
    hub: tuple[str, str | None] | None,
    reader_options: dict[str, Any] | None,
    read: Callable[[Path], datasets.Dataset],
    suffixes: list[str],
    describe: Callable[[str], str],
) -> datasets.DatasetDict:
    """Every split: a Hub dataset's (`hub`: its name and configuration) with `files` (split -> path, read with
    `read`) replacing their own splits; the predict split is the test split unless given. An empty split is an
    error (`describe` names a split in words)."""
    if hub:
        raw = load_hub_dataset(*hub, reader_options)
    elif files:
        raw = datasets.DatasetDict()
    else:
        raise HFTrainError(
            "No data given: set data.dataset_name to a Hugging Face Hub dataset, or data.train_file "
            "(and optionally validation_file, test_file, predict_file) to local files."
        )
    if any(split.startswith("validation/") for split in files):  # named sets replace a Hub validation split
        raw.pop("validation", None)
    for split, file in files.items():
        raw[split] = read(existing_file(split_setting(split), file, suffixes))
    if "predict" not in raw and "test" in raw:
        raw["predict"] = raw["test"]
    for split, dataset in raw.items():
        if len(dataset) == 0:
            raise HFTrainError(
                f"The {split} split ({describe(split)}) has no rows. Give a file with at least one "
                f"example, or leave {split_setting(split)} unset."
            )
    return raw


def split_setting(split: str) -> str:
    """The config key of a split's file: `data.train_file`, `data.validation_file.<name>`."""
    split, _, name = split.partition("/")
    return f"data.{split}_file" + (f".{name}" if name else "")


def existing_file(setting: str, file: str, suffixes: list[str]) -> Path:
    """The path of the file a split setting (`data.train_file`) names, if it exists and has a type we read."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise HFTrainError(
            f"{setting} '{file}' does not exist (looked in {path.resolve()}). Check the path; "
            "relative paths are read from the folder you run hftrain in."
        )
    if path.suffix.lower() not in suffixes:
        raise HFTrainError(
            f"{setting} '{file}' has an unsupported file type '{path.suffix}'. Use one of "
            f"{', '.join(suffix or '(none: plain text)' for suffix in suffixes)}."
        )
    return path


# ---------------------------------------------------------------------------------------------- the Hub


def load_hub_dataset(
    name: str, config: str | None, reader_options: dict[str, Any] | None, streaming: bool = False
) -> datasets.DatasetDict:
    """Every split of a Hub dataset, under our split names (`hub_split_name`); with `streaming`, as streams
    (`datasets.IterableDataset`) that read it as they are iterated."""
    try:
        raw = datasets.load_dataset(name, config, streaming=streaming, **(reader_options or {}))
    except Exception as err:  # noqa: BLE001 - network, missing dataset and config errors all land here
        raise HFTrainError(
            f"Could not load the dataset '{name}'{f' ({config})' if config else ''} from the Hugging "
            f"Face Hub: {type(err).__name__}: {err}. Check the name and your network connection; offline, "
            "point data.train_file / validation_file at local files instead."
        ) from err
    return datasets.DatasetDict({hub_split_name(split, raw): d for split, d in raw.items()})


def hub_split_name(split: str, raw: Mapping[str, Any]) -> str:
    """Our split name for a Hub split: `dev`/`valid` are validation, and where there is no plain
    `validation` (`test`), the first of `validation_matched`, … (MNLI) takes its place."""
    if split in ("dev", "valid"):
        return "validation"
    for plain in ("validation", "test"):
        variants = sorted(s for s in raw if s.startswith(f"{plain}_"))
        if plain not in raw and variants and split == variants[0]:
            return plain
    return split


# ---------------------------------------------------------------------------------------------- shaping splits


def hold_out_validation(raw: datasets.DatasetDict, percentage: float, seed: int, train_source: str) -> None:
    """Without a validation split, hold out `percentage` of the training rows, the same ones for a `seed`."""
    has_validation = any(split.startswith("validation") for split in raw)
    if has_validation or "train" not in raw or percentage <= 0:
        return
    if len(raw["train"]) < 2:
        raise HFTrainError(
            f"The training data ({train_source}) has {len(raw['train'])} row: too few to hold out a validation "
            "split. Add rows, give data.validation_file, or set data.validation_split_percentage to 0."
        )
    held_out = raw["train"].train_test_split(test_size=percentage / 100, seed=seed)
    raw["train"], raw["validation"] = held_out["train"], held_out["test"]
    rank_zero_info(
        f"No validation split given: holding out {len(raw['validation'])} of the training rows ({percentage:g}%)."
    )


def limit_rows(raw: datasets.DatasetDict, train: int | None, evaluation: int | None, predict: int | None) -> None:
    """Keep the first `train` rows of the training split, `evaluation` of each validation split and `predict`
    of the test and predict splits (None: all)."""
    for split, dataset in raw.items():
        if split == "train":
            limit = train
        else:
            limit = predict if split in ("test", "predict") else evaluation
        if limit is not None and limit < len(dataset):
            raw[split] = dataset.select(range(limit))
