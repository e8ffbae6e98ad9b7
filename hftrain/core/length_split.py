"""Training batches split into parts of similar length, so random batches carry little padding.

A random batch pads every row to its longest one: on MRPC a third of what the model computes is padding.
Grouping batches by length (`data.group_by_length`) removes it but changes which examples meet in a step,
and over seeds it scored lower (docs/performance.md). Splitting keeps the batch and removes most
of its padding: its rows are sorted by length, cut into a few consecutive parts, and each part is padded
only to its own longest row. The module runs the parts one after the other and weighs their mean losses by
what each averages over (examples, or tokens for a token-level loss), so the step's loss and gradient are
the whole batch's: without dropout, training takes the steps of unsplit batches up to float rounding; with
it, the rows draw other dropout masks (as another seed would), not a different kind of training.

A part has a fixed cost besides its rows (one more pass through every layer, smaller matrix products), so a
batch is cut only where that pays: the cut minimizes padded positions plus `PART_COST` per part. The plan
depends on the batch alone, so a resumed run splits every batch as the uninterrupted run did.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

# positions a part must save to pay for itself: of the costs tried (0-256), 64 trained fastest or within 2% of
# the fastest on CPU on MRPC, CoNLL-2003, SQuAD and Multi30k (docs/benchmarks/2026-11-30-cpu-journal.md, "Changes" 10)
PART_COST = 64
# the batch key under which a split batch holds its parts
PARTS = "parts"


def split_points(lengths: list[int], part_cost: int) -> list[tuple[int, int]]:
    """Row ranges `[(start, stop), …]` of `lengths`, sorted longest first, that minimize the padded positions
    (each part's rows times its first row's length) plus `part_cost` per part. Exact (dynamic programming
    over the cut points), quadratic in the batch size: 0.06 ms for a batch of 32 (docs/performance.md)."""
    best = [0] + [None] * len(lengths)
    cut = [0] * (len(lengths) + 1)
    for stop in range(1, len(lengths) + 1):
        for start in range(stop):
            cost = best[start] + (stop - start) * lengths[start] + part_cost
            if best[stop] is None or cost < best[stop]:
                best[stop], cut[stop] = cost, start
    ranges, stop = [], len(lengths)
    while stop > 0:
        ranges.append((cut[stop], stop))
        stop = cut[stop]
    return ranges[::-1]


@dataclass
class LengthSplit:
    """A collator that serves a training batch whole, or, where cutting it saves more than the parts cost
    (`split_points`), as `{"parts": [batch, …]}`: its rows sorted longest first and collated part by part."""

    collate: Callable
    # the feature whose length is the row's length (the tokenizer's first model input)
    length_key: str

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = [row_length(f[self.length_key]) for f in features]
        order = sorted(range(len(features)), key=lambda i: -lengths[i])
        ranges = split_points([lengths[i] for i in order], PART_COST)
        if len(ranges) == 1:
            return self.collate(features)
        return {PARTS: [self.collate([features[i] for i in order[start:stop]]) for start, stop in ranges]}


def row_length(ids: list) -> int:
    """The positions a row takes in a padded batch: its tokens, or for a row of several sequences (a
    multiple-choice row's choices, each padded to the longest) their count times the longest one's."""
    if ids and isinstance(ids[0], list):
        return len(ids) * max(map(len, ids))
    return len(ids)


def batch_parts(batch: Any) -> list:
    """The parts a training batch is served in: `[batch]` unless `LengthSplit` cut it."""
    return batch[PARTS] if isinstance(batch, Mapping) and PARTS in batch else [batch]


def batch_size(batch: Any) -> int:
    """Examples in a batch (a dict or a tokenizer's `BatchEncoding`, or its parts when split by length): the
    first dimension of its first tensor."""
    if len(parts := batch_parts(batch)) > 1:
        return sum(map(batch_size, parts))
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, list | tuple) else [batch]
    return next((len(v) for v in values if torch.is_tensor(v) and v.dim() > 0), 0)
