"""Length-grouped batching: a random permutation whose batches have similar lengths, resumable mid-epoch,
intact under DDP sharding, and switched on by `data.group_by_length`."""

import random

import datasets
import numpy as np
import pytest
from conftest import FILLER, write_csv

from hftrain.core.errors import HFTrainError
from hftrain.core.sampling import LengthGroupedSampler, pad_fraction, sequence_lengths
from hftrain.tasks.text_classification import TextClassificationData

_rng = random.Random(0)
LENGTHS = [_rng.randint(5, 120) for _ in range(1000)]


def test_each_epoch_is_a_seeded_permutation_of_length_homogeneous_batches():
    sampler = LengthGroupedSampler(LENGTHS, batch_size=16, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(len(LENGTHS))) and len(sampler) == len(LENGTHS)
    assert list(LengthGroupedSampler(LENGTHS, batch_size=16, seed=1)) == first
    assert list(LengthGroupedSampler(LENGTHS, batch_size=16, seed=2)) != first
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == sorted(first) and second != first
    shuffled = np.random.default_rng(0).permutation(len(LENGTHS))
    assert pad_fraction(LENGTHS, first, 16) < 0.1 < 0.3 < pad_fraction(LENGTHS, shuffled, 16)
    # the longest batch comes first, so an out-of-memory error shows on the first step
    assert max(LENGTHS[i] for i in first[:16]) == max(LENGTHS)


def test_batch_order_is_shuffled_not_longest_to_shortest_per_megabatch():
    order = list(LengthGroupedSampler(LENGTHS, batch_size=10, seed=0, megabatch_mult=25))
    batch_max = [max(LENGTHS[i] for i in order[s : s + 10]) for s in range(0, len(order), 10)]
    assert batch_max[1:25] != sorted(batch_max[1:25], reverse=True)


def test_resume_mid_epoch_serves_exactly_the_rest():
    sampler = LengthGroupedSampler(LENGTHS, batch_size=16, seed=3)
    sampler.set_epoch(2)
    expected = list(sampler)
    iterator = iter(sampler)
    served = [next(iterator) for _ in range(100)]
    state = sampler.state_dict()
    assert state == {"epoch": 2, "seed": 3, "yielded": 100}
    resumed = LengthGroupedSampler(LENGTHS, batch_size=16, seed=0)
    resumed.load_state_dict(state)
    assert served + list(resumed) == expected
    assert list(resumed) == expected  # the next pass over the same epoch starts from the beginning again


def test_stateful_dataloader_resumes_mid_epoch_with_the_next_batch():
    StatefulDataLoader = pytest.importorskip("torchdata.stateful_dataloader").StatefulDataLoader

    def loader():
        sampler = LengthGroupedSampler(LENGTHS, batch_size=8, seed=0)
        sampler.set_epoch(1)
        return StatefulDataLoader(range(len(LENGTHS)), batch_size=8, sampler=sampler)

    full = [b.tolist() for b in loader()]
    first = loader()
    iterator = iter(first)
    head = [next(iterator).tolist() for _ in range(7)]
    state = first.state_dict()
    second = loader()
    second.load_state_dict(state)
    assert head + [b.tolist() for b in second] == full


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_ranks_get_homogeneous_shares_of_the_grouped_order_and_lose_nothing(
    world, tiny_bert, tmp_path, monkeypatch
):
    """Each rank's training loader as Lightning hands it to the fit loop (`_process_dataloader`, whose own
    wrapper would reshuffle any training sampler): rank r serves positions r, r + W, … of the grouped order,
    sorted in units of one step of all ranks, so every rank's batches stay length-homogeneous."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.trainer.connectors.data_connector import _process_dataloader
    from lightning.pytorch.trainer.states import RunningStage, TrainerFn
    from lightning.pytorch.utilities.rank_zero import rank_zero_only
    from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only

    for process_rank in (rank_zero_only, utils_rank_zero_only):  # set_world_ranks sets them; restore after
        monkeypatch.setattr(process_rank, "rank", process_rank.rank)

    rng = random.Random(0)
    rows = [
        {"text": " ".join(rng.choices(FILLER, k=rng.randint(1, 60))), "label": rng.choice("ab")} for _ in range(1200)
    ]
    options = {"tokenizer_name": tiny_bert, "train_file": str(write_csv(tmp_path / "train.csv", rows)), "batch_size": 8}
    shards = []
    for rank in range(world):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        trainer = Trainer(accelerator="cpu", strategy="ddp", devices=world, logger=False)
        trainer.strategy.set_world_ranks()
        data = TextClassificationData(**options, group_by_length=True)
        data.trainer = trainer
        data.setup("fit")
        loader = _process_dataloader(trainer, TrainerFn.FITTING, RunningStage.TRAINING, data.train_dataloader())
        served = list(loader.sampler)
        shards.append(served)
        lengths = sequence_lengths(data.datasets["train"])
        order = list(LengthGroupedSampler(lengths, 8, data.seed, num_replicas=world))
        order += order[: -len(order) % world]  # DistributedSampler's padding to equal shares
        assert served == order[rank::world]
        # less than half the padding of random batches
        assert pad_fraction(lengths, served, 8) < pad_fraction(lengths, range(len(lengths)), 8) / 2
    assert {i for shard in shards for i in shard} == set(range(len(lengths)))


def test_data_module_groups_training_batches_by_length(tiny_bert, tmp_path):
    rng = random.Random(0)
    rows = [
        {"text": " ".join(rng.choices(FILLER, k=rng.randint(1, 40))), "label": rng.choice("ab")} for _ in range(256)
    ]
    train = str(write_csv(tmp_path / "train.csv", rows))
    options = {"tokenizer_name": tiny_bert, "train_file": train, "batch_size": 16}
    grouped = TextClassificationData(**options, group_by_length=True)
    plain = TextClassificationData(**options)  # the default
    assert grouped.cache_path() == plain.cache_path()  # a loader setting: the tokenized cache is shared
    grouped.setup("fit")
    plain.setup("fit")

    def padding(data):
        batches = list(data.train_dataloader())
        return sum((b["attention_mask"] == 0).sum().item() for b in batches) / sum(
            b["attention_mask"].numel() for b in batches
        )

    assert isinstance(grouped.train_dataloader().sampler, LengthGroupedSampler)
    assert padding(grouped) < padding(plain) / 2
    # groups of one batch sort nothing across batches: the padding of random batches
    ungrouped = TextClassificationData(**options, group_by_length=True, length_group_batches=1)
    ungrouped.setup("fit")
    assert padding(ungrouped) > 2 * padding(grouped)
    with pytest.raises(HFTrainError, match="length_group_batches"):
        TextClassificationData(**options, group_by_length=True, length_group_batches=0)


def test_lengths_of_rows_holding_several_windows_count_all_their_tokens():
    # question answering keeps a question's windows in one evaluation row; counting windows (1 for nearly
    # every question) would leave its evaluation batches unsorted by length
    windows = [[[1] * 300, [1] * 40], [[1] * 12], [[1] * 384], [[1] * 5, [1] * 5, [1] * 5]]
    parts = [
        datasets.Dataset.from_dict({"input_ids": windows[:2]}),
        datasets.Dataset.from_dict({"input_ids": windows[2:]}),
    ]
    nested = datasets.concatenate_datasets(parts)  # two Arrow chunks: row indices must not restart per chunk
    assert sequence_lengths(nested).tolist() == [340, 12, 384, 15]
    flat = datasets.Dataset.from_dict({"input_ids": [[1] * 7, [1] * 3]})
    assert sequence_lengths(flat).tolist() == [7, 3]
