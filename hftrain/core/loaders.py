"""Dataloaders for tokenized map-style splits: the sampler that orders them (shuffled per epoch, grouped by
length, or longest first for evaluation), this rank's share under DDP, and the collator that keeps each row's
`row` for predictions. Every loader is a `StatefulDataLoader`, whose position a checkpoint keeps."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torchdata.stateful_dataloader import StatefulDataLoader

from hftrain.core.sampling import EpochShuffleSampler, LengthGroupedSampler, LongestFirstSampler, sequence_lengths


@dataclass(frozen=True)
class LoaderOptions:
    """What a loader is built from, gathered by `TaskDataModule` from its settings and the trainer.

    Args:
        train: Serve training batches (shuffled, this rank's share) rather than evaluation ones (in order).
        batch_size: Examples per batch.
        collate: Turns a list of examples into a batch (the task's collator, wrapped in `KeepRows`, and in
            `LengthSplit` where training batches are split by length).
        num_workers: Dataloader worker processes.
        seed: Seeds the shuffle, so the order is the same in every run and after a resume.
        input_name: The model input whose lengths order evaluation batches and group training ones.
        group_by_length: Shuffle training examples in groups of similar length.
        length_group_batches: With `group_by_length`, how many batches are sorted together.
        sharding: Under DDP, this rank's share of the training order: `num_replicas` and `rank`.
        examples: Streamed training data: the examples this rank serves per epoch (a stream has no length).
    """

    train: bool
    batch_size: int
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    num_workers: int = 0
    seed: int = 42
    input_name: str = "input_ids"
    group_by_length: bool = False
    length_group_batches: int = 50
    sharding: dict[str, int] | None = None
    examples: int | None = None


def map_loader(dataset: datasets.Dataset, options: LoaderOptions) -> StatefulDataLoader:
    """A dataloader over a map-style split whose position (shuffle order and batches served) is saved in
    checkpoints, so a run resumed mid-epoch continues with the very next batch (Lightning saves any stateful
    loader). Under DDP the ranks' shares are dealt here (positions r, r + W, …) because Lightning's own wrapper
    reshuffles every training sampler it wraps, which would scatter length groups and make a step of all ranks
    differ from the batch one process takes."""
    sharding = options.sharding if options.train else None
    if options.train and options.group_by_length:
        sampler = LengthGroupedSampler(
            sequence_lengths(dataset, options.input_name),
            options.batch_size,
            options.seed,
            megabatch_mult=options.length_group_batches,
            num_replicas=sharding["num_replicas"] if sharding else 1,
        )
    elif options.train:
        sampler = EpochShuffleSampler(len(dataset), options.seed)
    else:
        sampler = LongestFirstSampler(sequence_lengths(dataset, options.input_name))
    if sharding:
        sampler = DistributedSamplerWrapper(sampler, shuffle=False, **sharding)
    return StatefulDataLoader(
        dataset,
        batch_size=options.batch_size,
        sampler=sampler,
        collate_fn=options.collate,
        num_workers=options.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=options.num_workers > 0,
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
