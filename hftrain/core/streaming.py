"""Streamed training data: rows read from shards as training goes, tokenized in the dataloader workers, shuffled
through a seeded buffer, packed on the fly, and resumable exactly from a checkpoint on every rank and worker.

`datasets` streams a Hub dataset (`load_dataset(..., streaming=True)`) and torchdata's `StatefulDataLoader`
saves each worker's dataset state with the batches it serves; this module writes only what they lack:

- Local shards are read here, one row at a time with its byte offset (or row group), so a corrupt or truncated
  shard is named with its path and line, and `data.on_bad_row` can skip it; `datasets`' JSON and CSV readers
  fail a whole block of a streamed file with neither. A resumed run seeks to the saved offset: its start does
  not grow with the position (a compressed shard is decompressed up to the offset, at most one shard).
- The shuffle buffer's rows, the encoded examples not yet served and the packer's leftover tokens are part of
  the state (`datasets` drops its buffer on resume, so a resumed run would see other batches).
- Each reader (one per rank and worker) owns its shards of a pass, dealt as `split_dataset_by_node` deals them:
  shard `i` of the pass's shuffled order to reader `i mod R`; when the shard count is not a multiple of `R`,
  every reader reads every shard and keeps every R-th row instead (its "examples" strategy), which costs `R`
  times the reading and is said once.
- Lightning keeps the loader state of rank 0 only: `StreamLoader.state_dict` gathers every rank's, and each rank
  loads its own; a checkpoint from another world size or `num_workers` is refused, never replayed.
"""

import bz2
import csv
import gzip
import io
import json
import lzma
import math
import pickle
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from glob import glob
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow.parquet as pq
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import distributed as dist
from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from hftrain.core.corpus import pack_blocks
from hftrain.core.errors import HFTrainError
from hftrain.core.loaders import LoaderOptions
from hftrain.core.sources import MapSource

BadRowPolicy = Literal["stop", "skip"]
COMPRESSIONS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet")
# rows encoded together: the tokenizer's batch call is several times faster than row by row
ENCODE_ROWS = 64
STATE_FORMAT = 1
# how often a dataloader worker sends its state with a batch (torchdata's `snapshot_every_n_steps`): a resumed
# worker starts from its last snapshot and makes the batches since again, at most this many less one, a cost
# that does not grow with the position; a snapshot with every batch (torchdata's default) copies the shuffle
# buffer every time, which slowed a 10,000-row buffer's loading several times over
SNAPSHOT_STEPS = 16
# what a reader holds besides its position, saved as one blob (`StreamDataset.state_dict`)
HELD = ("buffer", "pending", "leftover")
PASS_END: Any = object()  # what `StreamDataset._rows` yields between passes
# errors that mean a compressed or plain shard ends early or holds bytes that are not its format
READ_ERRORS = (EOFError, zlib.error, lzma.LZMAError, OSError, UnicodeDecodeError)


# ---------------------------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    """One unit of a stream: a local file (`path`), or shard `index` of a streamed Hub dataset (`hub`)."""

    path: str | None = None
    hub: Any = None
    index: int = 0

    @property
    def name(self) -> str:
        return self.path if self.path else f"shard {self.index} of the Hub dataset"


def stream_format(path: str | Path) -> tuple[str, str | None]:
    """A shard's format suffix and compression suffix: `data-0.jsonl.gz` -> (`.jsonl`, `.gz`)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else None
    return (suffixes[-1] if suffixes else ""), compression


def local_shards(pattern: str, setting: str) -> list[Shard]:
    """The files a path or glob names (`data/train-*.jsonl.gz`, `corpus/**/*.parquet`), sorted; an error naming
    the pattern and the folder it was read in when nothing matches, or a file is of a type that cannot stream."""
    matches = sorted(p for p in glob(str(Path(pattern).expanduser()), recursive=True) if Path(p).is_file())
    if not matches:
        raise HFTrainError(
            f"{setting} '{pattern}' matches no file (looked from {Path.cwd()}). Check the path or glob; relative "
            "paths are read from the folder you run hftrain in, and '**' matches folders at any depth."
        )
    for path in matches:
        suffix, _ = stream_format(path)
        if suffix not in FORMATS:
            raise HFTrainError(
                f"{setting} '{pattern}' matches {path}, whose type '{suffix or '(none)'}' cannot be streamed. "
                f"Stream files of type {', '.join(FORMATS)}, optionally compressed ({', '.join(COMPRESSIONS)})."
            )
    return [Shard(path=path) for path in matches]


def hub_shards(dataset: Any) -> list[Shard]:
    """A streamed Hub dataset (`datasets.IterableDataset`) as its shards."""
    return [Shard(hub=dataset, index=i) for i in range(dataset.num_shards)]


@dataclass
class BadRow:
    """A row that could not be read: where (1-based line or row of its shard) and why."""

    where: str
    reason: str


def location(position: dict[str, int]) -> str:
    """A row's place in its shard, in words, from the position after it (`read_shard`)."""
    if "line" in position:
        return f"line {position['line']}"
    if "group" in position:
        return f"row group {position['group']}, row {position['row']}"
    return f"row {position['row']}"


def _open(path: str) -> io.BufferedIOBase:
    _, compression = stream_format(path)
    return COMPRESSIONS[compression](path, "rb") if compression else open(path, "rb")  # noqa: SIM115


def read_shard(
    shard: Shard, position: dict[str, int] | None, *, text_column: str = "text", encoding: str = "utf-8"
) -> Iterator[tuple[dict | BadRow, dict[str, int]]]:
    """Each row of a shard from `position` on (None: the start), with the position after it."""
    if shard.hub is not None:
        yield from _read_hub(shard, position)
        return
    suffix, _ = stream_format(shard.path)
    if suffix == ".parquet":
        yield from _read_parquet(shard.path, position)
    else:
        yield from _read_lines(shard.path, suffix, position or {"offset": 0, "line": 0}, text_column, encoding)


def _read_lines(
    path: str, suffix: str, position: dict[str, int], text_column: str, encoding: str
) -> Iterator[tuple[dict | BadRow, dict[str, int]]]:
    """JSON lines, CSV/TSV (a header line, then one record a line) and text (a line a document) by byte offset."""
    with _open(path) as f:
        header = None
        if suffix in (".csv", ".tsv"):
            first = f.readline()
            header = next(csv.reader([first.decode(encoding)], delimiter="\t" if suffix == ".tsv" else ","), [])
            header = [name.lstrip("\ufeff") for name in header]
        offset, line = position["offset"], position["line"]
        if offset:
            f.seek(offset)
        elif header is not None:
            offset, line = f.tell(), 1
        while True:
            try:
                raw = f.readline()
            except READ_ERRORS as err:
                yield BadRow(f"after line {line}", f"the file ends early or is corrupt ({err})"), {"offset": -1}
                return
            if not raw:
                return
            offset, line = offset + len(raw), line + 1
            after = {"offset": offset, "line": line}
            try:
                text = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as err:
                yield BadRow(f"line {line}", f"it is not {encoding} text ({err})"), after
                continue
            if not text.strip():
                continue
            yield _parse_line(text, suffix, header, text_column, line), after


def _parse_line(text: str, suffix: str, header: list[str] | None, text_column: str, line: int) -> dict | BadRow:
    if suffix == ".txt":
        return {text_column: text}
    if header is None:
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            return BadRow(f"line {line}", f"it is not valid JSON ({err})")
        if not isinstance(row, dict):
            return BadRow(
                f"line {line}", "it is not a JSON object: a streamed .json/.jsonl file holds one object a line"
            )
        return row
    values = next(csv.reader([text], delimiter="\t" if suffix == ".tsv" else ","), [])
    if len(values) != len(header):
        return BadRow(f"line {line}", f"it has {len(values)} fields where the header has {len(header)}")
    return dict(zip(header, values, strict=True))


def _read_parquet(path: str, position: dict[str, int] | None) -> Iterator[tuple[dict | BadRow, dict[str, int]]]:
    """A parquet file row group by row group; a resumed read starts at the saved row group."""
    group, row = (position["group"], position["row"]) if position else (0, 0)
    try:
        file = pq.ParquetFile(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a file that is not parquet
        yield BadRow("its footer", f"it is not a readable parquet file ({err})"), {"group": -1, "row": 0}
        return
    for number in range(group, file.num_row_groups):
        try:
            rows = file.read_row_group(number).to_pylist()
        except Exception as err:  # noqa: BLE001
            yield BadRow(f"row group {number}", f"it cannot be read ({err})"), {"group": number + 1, "row": 0}
            continue
        for i in range(row if number == group else 0, len(rows)):
            yield rows[i], {"group": number, "row": i + 1}


def _read_hub(shard: Shard, position: dict[str, int] | None) -> Iterator[tuple[dict | BadRow, dict[str, int]]]:
    """One shard of a streamed Hub dataset. `iter` (not a plain loop, which inside a dataloader worker would
    deal the one shard among the workers once more); a resumed read skips the rows of this shard before the
    position (a Hub shard has no byte offset to seek to)."""
    done = position["row"] if position else 0
    dataset = shard.hub.shard(num_shards=shard.hub.num_shards, index=shard.index)
    if done:
        dataset = dataset.skip(done)
    for batch in dataset.iter(batch_size=256):
        for values in zip(*batch.values(), strict=True):
            done += 1
            yield dict(zip(batch, values, strict=True)), {"row": done}


def first_rows(shards: list[Shard], count: int = 200, **options: Any) -> list[dict]:
    """The first `count` readable rows of the first shards: what the task's `check_data` checks and learns the
    label set from before training starts (bad rows are left to the stream, which names them)."""
    rows: list[dict] = []
    for shard in shards:
        for row, _ in read_shard(shard, None, **options):
            if not isinstance(row, BadRow):
                rows.append(row)
            if len(rows) >= count:
                return rows
    if not rows:
        raise HFTrainError(f"The streamed training data ({shards[0].name}, …) has no readable row.")
    return rows


def sharding_note(shards: int, world_size: int, workers: int) -> str | None:
    """What dealing `shards` to `world_size` processes of `workers` dataloader workers costs, when it does."""
    readers = world_size * max(workers, 1)
    if shards % readers == 0:
        return None
    return (
        f"The streamed training data has {shards} shard(s) for {readers} readers ({world_size} process(es) x "
        f"{max(workers, 1)} dataloader worker(s)), which do not divide: every reader reads every shard and keeps "
        f"every {readers}th row, so reading and parsing cost {readers} times what they would (tokenizing does not). "
        f"Give a multiple of {readers} files, or set data.num_workers so that the count divides."
    )


# ---------------------------------------------------------------------------------------------- the stream


def pack_stream(examples: list[dict[str, list]], leftover: dict[str, list], size: int) -> list[dict[str, list]]:
    """`examples` appended to the `leftover` tokens and cut into full blocks of `size` (`corpus.pack_blocks`);
    the shorter rest goes back into `leftover` for the next examples."""
    if not examples:
        return []
    keys = list(examples[0])
    joined = {key: [leftover.get(key, []), *(e[key] for e in examples)] for key in keys}
    blocks = pack_blocks(joined, size)
    rows = [dict(zip(keys, values, strict=True)) for values in zip(*(blocks[k] for k in keys), strict=True)]
    leftover.clear()
    if rows and len(rows[-1][keys[0]]) < size:
        leftover.update(rows.pop())
    return rows


@dataclass(eq=False)
class StreamDataset(IterableDataset):
    """The training rows of one rank, read from its shards, shuffled, encoded and (for causal LM) packed.

    Iterating serves `examples` examples per rank and epoch (shared among the workers), continuing the stream
    where the previous epoch stopped: passes over the shards follow each other for as long as training runs.

    Args:
        shards: Every shard of the training data (the same list on every rank).
        encode: Rows (dicts) and their numbers in the stream -> encoded examples (dicts of token lists).
        examples: Examples this rank serves per epoch.
        seed: Seed of the shard order (per pass) and of the buffer.
        buffer_size: Rows in the shuffle buffer (1: the shard order only).
        on_bad_row: What a row that cannot be read does: `stop` with an error, or `skip` it and say so.
        needed_columns: Columns every row must have (those the task reads).
        block_size: Pack encoded examples into blocks of this many tokens (causal LM); None: one per row.
        rank: This process's rank.
        world_size: Number of processes.
        text_column: The column a .txt line fills.
        encoding: The encoding of text-based shards.
    """

    shards: list[Shard]
    encode: Callable[[list[dict], list[int]], list[dict[str, list]]]
    examples: int
    seed: int = 0
    buffer_size: int = 10_000
    on_bad_row: BadRowPolicy = "stop"
    needed_columns: tuple[str, ...] = ()
    block_size: int | None = None
    rank: int = 0
    world_size: int = 1
    text_column: str = "text"
    encoding: str = "utf-8"
    _state: dict[str, Any] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        super().__init__()
        if not self.shards:
            raise HFTrainError("The streamed training data has no shards.")

    # ------------------------------------------------------------------ who reads what

    def reader(self) -> tuple[int, int, int, int]:
        """(this reader's index, number of readers, worker id, workers): one reader per rank and worker."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return self.rank * workers + worker, self.world_size * workers, worker, workers

    def quota(self) -> int:
        """The examples this worker serves per epoch: the rank's `examples` dealt among its workers."""
        _, _, worker, workers = self.reader()
        return self.examples // workers + (worker < self.examples % workers)

    def shards_of_pass(self, number: int) -> tuple[list[int], int]:
        """The shards this reader reads in pass `number`, and the step of rows it keeps of them (1: all)."""
        reader, readers, _, _ = self.reader()
        order = np.random.default_rng([self.seed, number]).permutation(len(self.shards)).tolist()
        if len(self.shards) % readers == 0:
            return order[reader::readers], 1
        return order, readers

    # ------------------------------------------------------------------ state

    def fresh_state(self) -> dict[str, Any]:
        reader, readers, _, _ = self.reader()
        return {
            "format": STATE_FORMAT,
            "reader": reader,
            "readers": readers,
            "pass": 0,
            "shard": 0,
            "position": None,
            "line_of_pass": 0,
            "buffer": [],
            "rng": np.random.default_rng([self.seed, 1_000_003, reader]).bit_generator.state,
            "pending": [],
            "leftover": {},
            "served": 0,
            "skipped": 0,
            "draining": False,
        }

    def state_dict(self) -> dict[str, Any]:
        """Where this reader is: pass, shard and offset, the buffer's rows, the encoded examples not yet
        served, the packer's leftover tokens, the buffer's random state and the examples served this epoch.

        The rows, examples and leftover tokens are one pickled blob: torchdata takes a worker's state with every
        batch it serves and compares it with the previous one, which for 10,000 rows as Python objects cost
        ten times the batch itself; a blob is serialized once and compared as bytes."""
        state = self._state or self.fresh_state()
        held = {key: state[key] for key in HELD}
        return {**{k: v for k, v in state.items() if k not in HELD}, "held": pickle.dumps(held, protocol=5)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        reader, readers, _, _ = self.reader()
        if state.get("format") != STATE_FORMAT or (state["reader"], state["readers"]) != (reader, readers):
            raise HFTrainError(
                f"The saved stream position belongs to reader {state.get('reader')} of {state.get('readers')} "
                f"(one per process and dataloader worker), but this is reader {reader} of {readers}. Resume with "
                "the same number of processes and data.num_workers as the run that saved the checkpoint."
            )
        self._state = {**{k: v for k, v in state.items() if k != "held"}, **pickle.loads(state["held"])}

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[dict[str, list]]:
        if self._state is None or self._state["reader"] != self.reader()[0]:
            self._state = self.fresh_state()
        state = self._state
        quota = self.quota()
        if state["served"] >= quota:  # the previous epoch ended: this is the next one
            state["served"] = 0
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state["rng"]
        rows = self._rows(state)
        while state["served"] < quota:
            if state["pending"]:
                example = state["pending"].pop(0)
                state["served"] += 1
                yield example
                continue
            chunk = []
            for _ in range(ENCODE_ROWS):
                buffer = state["buffer"]
                while not state["draining"] and len(buffer) < max(self.buffer_size, 1):
                    row = next(rows)
                    if row is PASS_END:  # serve the pass's last rows before any of the next pass
                        state["draining"] = True
                    else:
                        buffer.append(row)
                if not buffer:
                    state["draining"] = False
                    break
                i = int(rng.integers(len(buffer)))
                chunk.append(buffer[i])
                buffer[i] = buffer[-1]
                buffer.pop()
            if not chunk:
                continue
            encoded = self._encode(chunk, state)
            if self.block_size:
                encoded = pack_stream(encoded, state["leftover"], self.block_size)
            state["pending"].extend(encoded)
            state["rng"] = rng.bit_generator.state

    def _rows(self, state: dict[str, Any]) -> Iterator[tuple[int, dict]]:
        """(number in the stream, row) for this reader, pass after pass; keeps `state`'s position after each."""
        while True:
            shards, step = self.shards_of_pass(state["pass"])
            reader = self.reader()[0] % step if step > 1 else 0
            whole_pass, kept_any = state["shard"] == 0 and state["position"] is None, False
            while state["shard"] < len(shards):
                shard = self.shards[shards[state["shard"]]]
                for row, after in read_shard(
                    shard, state["position"], text_column=self.text_column, encoding=self.encoding
                ):
                    state["position"] = after
                    state["line_of_pass"] += 1
                    if step > 1 and (state["line_of_pass"] - 1) % step != reader:
                        continue
                    problem = row if isinstance(row, BadRow) else self._missing(row, after)
                    if problem is not None:
                        self._bad_row(shard, problem, state)
                        continue
                    kept_any = True
                    yield state["line_of_pass"], (shards[state["shard"]], after), row
                state["shard"] += 1
                state["position"] = None
            if whole_pass and not kept_any:
                raise HFTrainError(
                    f"The streamed training data ({self.shards[0].name}, … {len(self.shards)} shards) gave this "
                    "reader no usable row in a whole pass. Check the files, or use fewer data.num_workers."
                )
            state["pass"] += 1
            state["shard"] = 0
            state["line_of_pass"] = 0
            yield PASS_END

    def _missing(self, row: dict, after: dict[str, int]) -> BadRow | None:
        missing = [c for c in self.needed_columns if row.get(c) is None]
        if not missing:
            return None
        present = ", ".join(sorted(row)) or "none"
        return BadRow(location(after), f"it has no value in column(s) {', '.join(missing)} (its columns: {present})")

    def _encode(self, chunk: list[tuple[int, tuple[int, dict], dict]], state: dict[str, Any]) -> list[dict]:
        """The chunk's rows encoded; where the task refuses one (a label outside the label set, …), the rows
        one by one, so that the refused row is named by its file and line and `on_bad_row` decides."""
        try:
            return self.encode([row for _, _, row in chunk], [number for number, _, _ in chunk])
        except HFTrainError:
            encoded = []
            for number, (shard, after), row in chunk:
                try:
                    encoded.extend(self.encode([row], [number]))
                except HFTrainError as err:
                    self._bad_row(self.shards[shard], BadRow(location(after), str(err)), state)
            return encoded

    def _bad_row(self, shard: Shard, problem: BadRow, state: dict[str, Any]) -> None:
        where, reason = f"{shard.name}, {problem.where}", problem.reason.rstrip(".")
        if self.on_bad_row == "stop":
            raise HFTrainError(
                f"The streamed training data has a row that cannot be used: {where}: {reason}. Fix or "
                "remove it, or set data.on_bad_row=skip to leave such rows out (each is named in a warning)."
            )
        state["skipped"] += 1
        # every rank says its own (a rank-zero warning would hide the other ranks' rows)
        warnings.warn(f"Skipped a streamed training row ({where}): {reason} (data.on_bad_row=skip).", stacklevel=2)


# ---------------------------------------------------------------------------------------------- the loader


def distributed() -> tuple[int, int]:
    """(rank, world size) of the initialized process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batches_per_epoch(examples: int, batch_size: int, workers: int) -> int:
    """The batches a rank's loader serves for `examples` examples: each worker forms its own batches, so each
    worker's share ends in a batch of its own."""
    workers = max(workers, 1)
    shares = [examples // workers + (w < examples % workers) for w in range(workers)]
    return sum(math.ceil(share / batch_size) for share in shares)


class StreamLoader(StatefulDataLoader):
    """A `StatefulDataLoader` over a `StreamDataset` with a known number of batches per epoch, whose state is
    every rank's.

    Its length lets Lightning skip its one-batch prefetch (which would save a position one batch ahead) and
    time validation and checkpoints by batches. Lightning saves the loader state of rank 0 only: `state_dict`
    (called on every rank as a checkpoint is made) gathers all ranks' states, `load_state_dict` takes this
    rank's, and refuses a checkpoint of another world size or worker count.
    """

    def __init__(
        self, dataset: StreamDataset, batches: int, snapshot_every_n_steps: int = SNAPSHOT_STEPS, **options: Any
    ) -> None:
        super().__init__(dataset, snapshot_every_n_steps=snapshot_every_n_steps, **options)
        self.batches = batches

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[Any]:
        """The batches; an `HFTrainError` of a worker (a bad row) raised again as the paragraph it was, since
        torch wraps a worker's error in a message with the worker's traceback."""
        try:
            yield from super().__iter__()
        except HFTrainError as err:
            raise HFTrainError(str(err).rpartition("HFTrainError: ")[2].strip()) from None

    def state_dict(self) -> dict[str, Any]:
        own = super().state_dict()
        rank, world = distributed()
        states = [own]
        if world > 1:
            states = [None] * world
            dist.all_gather_object(states, own)
        return {"stream": STATE_FORMAT, "world_size": world, "num_workers": self.num_workers, "ranks": states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rank, world = distributed()
        if "stream" not in state:
            raise HFTrainError(
                "The checkpoint's training data position is not a streamed one: it was saved by a run that read "
                "map-style data (data.streaming=false). Resume with the same data settings, or start a new fit."
            )
        if (state["world_size"], state["num_workers"]) != (world, self.num_workers):
            raise HFTrainError(
                f"The checkpoint was saved by a streaming run of {state['world_size']} process(es) with "
                f"data.num_workers={state['num_workers']}; this run has {world} with data.num_workers="
                f"{self.num_workers}. Every process and worker reads its own shards and resumes at its own saved "
                "position, so another count would replay or skip data. Resume with the saved counts, or start a "
                "new fit from the exported weights."
            )
        super().load_state_dict(state["ranks"][rank])


# ---------------------------------------------------------------------------------------------- the source


@dataclass
class StreamSource:
    """The `sources.Source` of `data.streaming`: the training split streamed (`StreamDataset`), dealt to this
    rank and served by a `StreamLoader`; the other splits map-style, tokenized ahead by `evaluation`.

    Args:
        raw: The splits as `check_data` saw them: the others whole, and the stream's first rows as `train`.
        evaluation: The map-style source of the other splits (validation, test, predict).
        stream: The training stream as one process reads it.
    """

    raw: datasets.DatasetDict
    evaluation: MapSource
    stream: StreamDataset

    def prepare(self) -> None:
        if self.evaluation.raw:
            self.evaluation.prepare()

    def encoded(self) -> dict[str, Any]:
        return {**(self.evaluation.encoded() if self.evaluation.raw else {}), "train": self.stream}

    def loader(self, dataset: Any, options: LoaderOptions) -> StatefulDataLoader:
        if not isinstance(dataset, StreamDataset):
            return self.evaluation.loader(dataset, options)
        rank, world = (options.sharding["rank"], options.sharding["num_replicas"]) if options.sharding else (0, 1)
        note = sharding_note(len(dataset.shards), world, options.num_workers)
        if note:
            rank_zero_warn(note)
        stream = replace(dataset, examples=options.examples, rank=rank, world_size=world)
        return StreamLoader(
            stream,
            batches_per_epoch(stream.examples, options.batch_size, options.num_workers),
            batch_size=options.batch_size,
            collate_fn=options.collate,
            num_workers=options.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=options.num_workers > 0,
        )
