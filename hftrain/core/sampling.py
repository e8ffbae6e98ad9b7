"""Length-grouped batching: batches of similar lengths, so little of each batch is padding.

A random batch of sentence pairs pads every row to the longest one; on MRPC about a third of the tokens
the model computes on are padding. Sorting by length removes the waste but also the randomness SGD needs,
so, like the HF Trainer's `LengthGroupedSampler`, we shuffle, cut the order into megabatches of
`megabatch_mult * batch_size` examples and sort inside each megabatch. Two differences: the order of the
batches is shuffled too (the HF sampler serves each megabatch longest to shortest, a small curriculum
repeated every megabatch), and the sampler is resumable mid-epoch (`state_dict` / `load_state_dict`).
The longest batch still comes first, so an out-of-memory error shows on the first step, not hours in.

Under DDP the data module gives rank `r` the positions `r, r + W, r + 2W, …` of this order
(`DistributedSamplerWrapper` without a reshuffle; Lightning's own wrapping would reshuffle every training
sampler). Batches are therefore shuffled in units of `batch_size * W` consecutive indices (one step of all
ranks, cut from one sorted megabatch), so rank `r`'s batch is its share of one such unit and stays
length-homogeneous; as with `DistributedSampler`, up to `W - 1` examples are repeated to give every rank
the same count, and none are dropped.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from torch import distributed as dist
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of `range(size)` that depends only on `(seed, epoch)`, resumable mid-epoch.

    torch's `RandomSampler` draws each epoch's order from a generator that runs on from epoch to epoch;
    a run resumed from a checkpoint taken at an epoch's end gets that epoch's generator state back
    (torchdata keeps the state from the epoch's start) and repeats its order. Here the order is a
    function of the epoch number, which Lightning passes to `set_epoch` before every epoch, so a
    resumed run shuffles exactly as an uninterrupted one.

    Args:
        size: Number of examples.
        seed: Seed of the shuffle.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.yielded = 0
        self._resume_at = 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        # Lightning announces the epoch again after a resume has restored its position: keep that position
        if epoch != self.epoch:
            self.epoch, self._resume_at = epoch, 0

    def order(self) -> np.ndarray:
        """This epoch's full order of indices."""
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        self.yielded, self._resume_at = self._resume_at, 0
        for index in order[self.yielded :].tolist():
            self.yielded += 1
            yield index

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seed": self.seed, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` was taken: the next iteration serves the rest of that epoch's order."""
        self.epoch, self.seed = state["epoch"], state["seed"]
        self.yielded = self._resume_at = state["yielded"]


class LengthGroupedSampler(EpochShuffleSampler):
    """A permutation of `range(len(lengths))` in which each run of `batch_size` indices has similar lengths.

    The order depends only on `(seed, epoch)`: call `set_epoch` before each epoch for a new order.

    Args:
        lengths: Length (in tokens) of every example.
        batch_size: Examples per batch (per device); runs of this many consecutive indices form a batch.
        seed: Seed of the shuffle.
        megabatch_mult: Batches per sorted megabatch. Larger groups lengths more tightly but keeps less
            randomness; it is capped so that there are at least 4 megabatches (as in the HF Trainer).
        num_replicas: Number of DDP ranks that will shard this order; by default the world size of
            `torch.distributed` when it is initialized, else 1. Batches are shuffled in units of
            `batch_size * num_replicas` (one step of all ranks), so every rank's batch stays homogeneous.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        megabatch_mult: int = 50,
        num_replicas: int | None = None,
    ) -> None:
        if batch_size < 1 or megabatch_mult < 1:
            raise ValueError(f"batch_size and megabatch_mult must be >= 1: {batch_size}, {megabatch_mult}")
        super().__init__(len(lengths), seed)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.megabatch_mult = megabatch_mult
        self.num_replicas = num_replicas

    def order(self) -> np.ndarray:
        """This epoch's full order of indices (vectorized: fine for millions of examples)."""
        n = len(self.lengths)
        distributed = dist.is_available() and dist.is_initialized()
        world = self.num_replicas or (dist.get_world_size() if distributed else 1)
        step = self.batch_size * world  # the examples all ranks take in one step
        rng = np.random.default_rng([self.seed, self.epoch])
        permutation = rng.permutation(n)
        megabatch = step * max(1, min(self.megabatch_mult, n // (4 * step)))
        lengths = self.lengths[permutation]
        # sort by megabatch, then by length, longest first
        order = permutation[np.lexsort((-lengths, np.arange(n) // megabatch))]
        full = n // step
        if full < 2:
            return order
        steps = order[: full * step].reshape(full, step)
        steps = steps[rng.permutation(full)]
        longest = self.lengths[steps[:, 0]].argmax()  # a step's first index is its longest
        steps[[0, longest]] = steps[[longest, 0]]
        return np.concatenate([steps.reshape(-1), order[full * step :]])


class LongestFirstSampler(Sampler[int]):
    """Evaluation and prediction order: longest example first, so each batch holds examples of similar length
    (little padding, and generation stops for the whole batch at about the same time) and an out-of-memory
    error shows on the first batch. Metrics do not depend on the order; the prediction writer puts rows back
    in input order.

    Args:
        lengths: Length (in tokens) of every example.
    """

    def __init__(self, lengths: Sequence[int]) -> None:
        self.order = np.argsort(-np.asarray(lengths), kind="stable")

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())


def sequence_lengths(dataset: Any, column: str = "input_ids") -> np.ndarray:
    """Token counts of a tokenized `datasets.Dataset`, read column-wise from Arrow (no per-row Python).

    A row that holds a list of sequences (question answering keeps all windows of a question in one
    evaluation row) counts the tokens of all of them: counting its windows would leave evaluation batches
    unsorted by length, as nearly every question has one.
    """
    values = dataset.with_format("arrow")[column]
    if not pa.types.is_list(values.type.value_type) and not pa.types.is_large_list(values.type.value_type):
        return pc.list_value_length(values).to_numpy(zero_copy_only=False)
    rows = values.combine_chunks()
    windows = pc.list_value_length(pc.list_flatten(rows)).to_numpy(zero_copy_only=False)
    return np.bincount(pc.list_parent_indices(rows).to_numpy(), weights=windows, minlength=len(rows)).astype(np.int64)


def pad_fraction(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """Share of the tokens in padded batches (each padded to its longest row) that are padding."""
    lengths = np.asarray(lengths)[np.asarray(order)]
    real = padded = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start : start + batch_size]
        real += int(batch.sum())
        padded += int(batch.max()) * len(batch)
    return 1 - real / padded if padded else 0.0
