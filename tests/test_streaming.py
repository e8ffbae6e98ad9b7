"""Streamed training data (`data.streaming`): local shards and Hub-style datasets read as training goes, each rank
and worker on its own shards, resumed exactly (same batches, same weights) after a kill on 1 and 2 processes,
bad input named with its file and line."""

import gzip
import io
import json
import pickle
import random
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from conftest import counting, sentiment_rows
from helpers import CPU_DDP, hftrain, run_cli
from test_slurm import slurm_cluster  # noqa: F401 - the cluster fixture of the Slurm tests

from hftrain.core.errors import HFTrainError
from hftrain.core.runs import read_results
from hftrain.core.streaming import StreamDataset, StreamLoader, local_shards, read_shard

LM = "hftrain.tasks.language_modeling"
TC = "hftrain.tasks.text_classification"


def write_shards(folder: Path, rows: list[dict], shards: int, suffix: str = ".jsonl") -> str:
    """`rows` dealt round-robin into `shards` files `part-<i><suffix>` (gzip for `.jsonl.gz`); their glob."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        lines = "".join(json.dumps(row) + "\n" for row in rows[i::shards])
        path = folder / f"part-{i}{suffix}"
        if suffix.endswith(".gz"):
            path.write_bytes(gzip.compress(lines.encode()))
        else:
            path.write_text(lines)
    return str(folder / f"part-*{suffix}")


def id_rows(count: int) -> list[dict]:
    return [{"id": i, "text": f"row {i}"} for i in range(count)]


def ids_of(examples) -> list[int]:
    return [example["id"] for example in examples]


def by_id(rows: list[dict], numbers: list[int]) -> list[dict]:
    return [{"id": row["id"], "input_ids": [row["id"]] * (1 + row["id"] % 3)} for row in rows]


def through_a_checkpoint(state: dict) -> dict:
    """`state` saved and loaded as a checkpoint is, read back as `torch.load(weights_only=True)` reads it."""
    saved = io.BytesIO()
    torch.save(state, saved)
    saved.seek(0)
    return torch.load(saved, weights_only=True)


def stream(pattern: str, examples: int, **options) -> StreamDataset:
    return StreamDataset(local_shards(pattern, "data.train_file"), by_id, examples=examples, seed=7, **options)


# ---------------------------------------------------------------------------------------------- the pipeline


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_state_dict_resumes_the_very_next_example_with_the_buffer_and_pass(tmp_path, suffix):
    pattern = write_shards(tmp_path / "data", id_rows(90), shards=3, suffix=suffix)
    straight = ids_of(stream(pattern, 200, buffer_size=16))
    assert sorted(straight[:90]) == list(range(90))  # a pass serves every row once before the next pass starts
    assert straight[:90] != list(range(90)) and straight[90:180] != straight[:90]  # shuffled, anew each pass
    for cut in (1, 17, 89, 90, 91, 150):
        first = stream(pattern, 200, buffer_size=16)
        served = iter(first)
        head = [next(served)["id"] for _ in range(cut)]
        state = first.state_dict()
        resumed = stream(pattern, 200, buffer_size=16)
        resumed.load_state_dict(through_a_checkpoint(state))
        assert head + ids_of(resumed) == straight, cut


def test_packer_leftover_tokens_are_part_of_the_state(tmp_path):
    pattern = write_shards(tmp_path / "data", id_rows(40), shards=2)

    def tokens(rows: list[dict], numbers: list[int]) -> list[dict]:
        return [
            {"input_ids": [row["id"]] * (1 + row["id"] % 3), "labels": [row["id"]] * (1 + row["id"] % 3)}
            for row in rows
        ]

    def make():
        shards = local_shards(pattern, "data.train_file")
        return StreamDataset(shards, tokens, examples=30, seed=7, buffer_size=4, block_size=5)

    straight = [block["input_ids"] for block in make()]
    assert all(len(block) == 5 for block in straight)
    first = make()
    served = iter(first)
    head = [next(served)["input_ids"] for _ in range(7)]
    state = first.state_dict()
    assert pickle.loads(state["held"])["leftover"]["input_ids"]  # tokens of a document cut between two blocks
    resumed = make()
    resumed.load_state_dict(state)
    assert head + [block["input_ids"] for block in resumed] == straight


def test_ranks_read_their_own_shards_and_use_each_row_once_per_pass(tmp_path):
    pattern = write_shards(tmp_path / "data", id_rows(60), shards=4)
    ranks = [ids_of(stream(pattern, 30, rank=r, world_size=2, buffer_size=8)) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(60))
    shard_of = {i: i % 4 for i in range(60)}
    assert {shard_of[i] for i in ranks[0]}.isdisjoint({shard_of[i] for i in ranks[1]})  # no shard read twice


def test_shards_that_do_not_divide_are_read_by_every_rank_and_said(tmp_path):
    from hftrain.core.streaming import sharding_note

    pattern = write_shards(tmp_path / "data", id_rows(60), shards=3)
    ranks = [ids_of(stream(pattern, 30, rank=r, world_size=2, buffer_size=8)) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(60))
    note = sharding_note(3, 2, 1)
    assert "3 shard(s) for 2 readers" in note and "2 times" in note and "multiple of 2" in note
    assert sharding_note(4, 2, 2) is None


def test_loader_state_is_every_ranks_and_refuses_another_world_or_worker_count(tmp_path):
    pattern = write_shards(tmp_path / "data", id_rows(30), shards=2)
    loader = StreamLoader(stream(pattern, 30, buffer_size=4), batches=8, batch_size=4, collate_fn=list)
    batches = iter(loader)
    next(batches)
    state = loader.state_dict()
    assert (state["world_size"], state["num_workers"], len(state["ranks"])) == (1, 0, 1)
    state["world_size"] = 2
    with pytest.raises(HFTrainError, match=r"saved by a streaming run of 2 process\(es\).*replay or skip"):
        StreamLoader(stream(pattern, 30), batches=8, batch_size=4, collate_fn=list).load_state_dict(state)


def test_loader_with_workers_resumes_the_same_batches(tmp_path):
    pattern = write_shards(tmp_path / "data", id_rows(48), shards=4)

    def make():
        return StreamLoader(
            stream(pattern, 40, buffer_size=6), batches=10, batch_size=4, collate_fn=ids_of, num_workers=2
        )

    straight = list(make())
    assert len(straight) == 10 and sorted(sum(straight, [])) == sorted(set(sum(straight, [])))
    first = make()
    batches = iter(first)
    head = [next(batches) for _ in range(5)]
    state = first.state_dict()
    del batches
    resumed = make()
    resumed.load_state_dict(state)
    assert head + list(resumed) == straight


# ---------------------------------------------------------------------------------------------- bad input


def test_a_glob_matching_nothing_is_named(tmp_path):
    with pytest.raises(HFTrainError, match=r"data.train_file 'nowhere/\*.jsonl' matches no file"):
        local_shards("nowhere/*.jsonl", "data.train_file")


def test_a_corrupt_or_truncated_shard_is_named_with_its_line_and_skipped_if_asked(tmp_path):
    folder = tmp_path / "data"
    pattern = write_shards(folder, id_rows(20), shards=2)
    with open(folder / "part-0.jsonl", "a") as f:
        f.write('{"id": 99, "text": "cut off\n')
        f.write(json.dumps({"id": 98, "text": "after"}) + "\n")
    with pytest.raises(HFTrainError, match=r"part-0\.jsonl, line 11: it is not valid JSON.*data.on_bad_row=skip"):
        list(stream(pattern, 25))
    with pytest.warns(UserWarning, match=r"part-0\.jsonl, line 11"):
        assert sorted(ids_of(stream(pattern, 21, on_bad_row="skip"))) == sorted([*range(20), 98])

    in_a_worker = StreamLoader(stream(pattern, 25), batches=7, batch_size=4, collate_fn=ids_of, num_workers=1)
    with pytest.raises(HFTrainError) as raised:
        list(in_a_worker)
    assert str(raised.value).startswith("The streamed training data has a row that cannot be used: ")
    assert "Traceback" not in str(raised.value)

    gz = tmp_path / "gz"
    gz.mkdir()
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in id_rows(200)).encode())
    (gz / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    rows = list(read_shard(local_shards(str(gz / "*.gz"), "x")[0], None))
    assert "ends early" in rows[-1][0].reason


def test_a_column_missing_from_some_shards_is_named(tmp_path):
    folder = tmp_path / "data"
    pattern = write_shards(folder, id_rows(20), shards=2)
    (folder / "part-1.jsonl").write_text("".join(json.dumps({"id": i, "body": "x"}) + "\n" for i in range(5)))
    dataset = StreamDataset(
        local_shards(pattern, "data.train_file"), by_id, examples=30, seed=7, needed_columns=("text",)
    )
    with pytest.raises(HFTrainError, match=r"part-1\.jsonl, line 1: it has no value in column\(s\) text"):
        list(dataset)


# ---------------------------------------------------------------------------------------------- fits


def lm_config(path: Path, model: str, train: str, validation: str, **data) -> Path:
    config = {
        "model": {
            "class_path": f"{LM}.LanguageModeling",
            "init_args": {"model_name_or_path": model, "learning_rate": 1e-3},
        },
        "data": {
            "class_path": f"{LM}.LanguageModelingData",
            "init_args": {
                "train_file": train,
                "validation_file": validation,
                "streaming": True,
                "block_size": 16,
                "batch_size": 4,
                "shuffle_buffer": 8,
                **data,
            },
        },
        "trainer": {
            "max_steps": 12,
            "val_check_interval": 6,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "accelerator": "cpu",
        },
        "checkpoint": {"every_n_train_steps": 2},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def lm_shards(tmp_path) -> tuple[str, str]:
    docs = [{"text": doc} for doc in counting(160, seed=1)]
    train = write_shards(tmp_path / "train", docs, shards=4, suffix=".jsonl.gz")
    validation = tmp_path / "valid.jsonl"
    validation.write_text("".join(json.dumps({"text": d}) + "\n" for d in counting(20, seed=2)))
    return train, str(validation)


@pytest.mark.processes  # a fit of 12 steps: ~10 s
def test_a_streamed_causal_lm_fit_trains_and_validates(tiny_gpt2, lm_shards, tmp_path):
    config = lm_config(tmp_path / "lm.yaml", tiny_gpt2, *lm_shards)
    assert run_cli("fit", "--config", config) == 0
    results = read_results(tmp_path / "runs" / "lm" / "version_0")
    assert results["global_step"] == 12 and len(results["history"]) == 2
    assert results["history"][1]["val/perplexity"] < results["history"][0]["val/perplexity"]


def test_streaming_needs_max_steps_or_an_epoch_size(tiny_gpt2, lm_shards):
    from hftrain.tasks.language_modeling import LanguageModelingData

    data = LanguageModelingData(tokenizer_name=tiny_gpt2, train_file=lm_shards[0], streaming=True, block_size=16)
    data.setup("fit")
    with pytest.raises(HFTrainError, match=r"has no length.*set trainer.max_steps.*or data.examples_per_epoch"):
        data.train_dataloader()


# ---------------------------------------------------------------------------------------------- kill and resume


def with_callbacks(config: Path, *callbacks: dict) -> Path:
    content = yaml.safe_load(config.read_text())
    content["trainer"]["callbacks"] = list(callbacks)
    config.write_text(yaml.safe_dump(content))
    return config


def recorder(folder: Path) -> dict:
    return {"class_path": "faults.RecordBatches", "init_args": {"folder": str(folder)}}


def batches(folder: Path, rank: int = 0) -> dict[int, list]:
    """The batches a run trained, by step (a resumed run's rewrite the steps it trains again)."""
    lines = (folder / f"rank{rank}.jsonl").read_text().splitlines()
    return {line["step"]: line["input_ids"] for line in map(json.loads, lines)}


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def assert_same_weights(reference: Path, result: Path) -> None:
    a, b = weights(reference), weights(result)
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-5, f"max weight difference {worst}"


@pytest.mark.processes  # runs killed and resumed as processes
@pytest.mark.parametrize(("how", "workers", "devices"), [("SIGKILL", 2, 1), ("SIGTERM", 1, 1), ("SIGKILL", 0, 2)])
def test_a_stream_stopped_mid_way_resumes_the_same_batches_and_weights(
    how, workers, devices, tiny_gpt2, lm_shards, tmp_path
):
    args = ["--data.num_workers", workers, "--data.split_by_length", "false"]
    if devices > 1:
        args += [*CPU_DDP, "--trainer.devices", devices]
    straight = lm_config(tmp_path / "straight.yaml", tiny_gpt2, *lm_shards)
    with_callbacks(straight, recorder(tmp_path / "straight-batches"))
    done = hftrain("fit", "--config", straight, *args)
    assert done.returncode == 0, done.stderr[-3000:]

    step = random.Random().randint(3, 11)
    if how == "SIGKILL":
        fault = {"class_path": "faults.KillAtStep", "init_args": {"step": step}}
    else:
        fault = {"class_path": "faults.SignalAt", "init_args": {"signum": 15, "point": "training_step", "step": step}}
    stopped = lm_config(tmp_path / "stopped.yaml", tiny_gpt2, *lm_shards)
    with_callbacks(stopped, recorder(tmp_path / "stopped-batches"), fault)
    first = hftrain("fit", "--config", stopped, *args)
    assert first.returncode in (-9, 143, 1), first.stderr[-3000:]
    run = tmp_path / "runs" / "stopped" / "version_0"
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert len(saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["ranks"]) == devices

    with_callbacks(stopped, recorder(tmp_path / "stopped-batches"))
    second = hftrain("fit", "--config", stopped, *args, "--ckpt_path", "last")
    assert second.returncode == 0, second.stderr[-3000:]
    for rank in range(devices):
        assert batches(tmp_path / "stopped-batches", rank) == batches(tmp_path / "straight-batches", rank), (how, step)
    assert_same_weights(
        tmp_path / "runs" / "straight" / "version_0" / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt"
    )
    assert read_results(run)["global_step"] == 12


@pytest.mark.processes  # two DDP processes
def test_a_resume_on_another_world_size_is_refused(tiny_gpt2, lm_shards, tmp_path):
    config = lm_config(tmp_path / "lm.yaml", tiny_gpt2, *lm_shards)
    with_callbacks(config, {"class_path": "faults.KillAtStep", "init_args": {"step": 5}})
    assert hftrain("fit", "--config", config, *CPU_DDP, "--trainer.devices", 2).returncode != 0
    with_callbacks(config)
    resumed = hftrain("fit", "--config", config, "--ckpt_path", "last")
    assert resumed.returncode == 2
    assert "saved by a streaming run of 2 process(es)" in resumed.stderr + resumed.stdout


# ---------------------------------------------------------------------------------------------- tasks and sources


def first_batch(data) -> dict:
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def test_text_classification_streams_compressed_csv_shards(tiny_bert, tmp_path):
    from conftest import write_csv

    from hftrain.tasks.text_classification import TextClassificationData

    folder = tmp_path / "train"
    folder.mkdir()
    for i in range(2):
        plain = write_csv(folder / f"part-{i}.csv", sentiment_rows(40, seed=i))
        (folder / f"part-{i}.csv.gz").write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()
    data = TextClassificationData(
        tokenizer_name=tiny_bert,
        train_file=str(folder / "*.csv.gz"),
        validation_file=str(write_csv(tmp_path / "dev.csv", sentiment_rows(16, seed=5))),
        streaming=True,
        examples_per_epoch=24,
        batch_size=8,
    )
    assert data.label_names == ["neg", "pos"]  # learnt from the stream's first rows
    batch = first_batch(data)
    assert batch["input_ids"].shape[0] == 8 and set(batch["labels"].tolist()) <= {0, 1}
    assert len(data.train_dataloader()) == 3
    assert len(data.datasets["validation"]) == 16  # map-style, tokenized ahead


def test_a_row_the_task_refuses_is_named_by_its_file_and_line(tiny_bert, tmp_path):
    """A label outside the label set, past the first rows that the checks read: named by its shard and line with
    the task's words, and left out with data.on_bad_row=skip."""
    from hftrain.tasks.text_classification import TextClassificationData

    rows = [{"text": row["text"], "label": row["label"]} for row in sentiment_rows(260, seed=3)]
    rows[250]["label"] = "neutral"
    pattern = write_shards(tmp_path / "data", rows, shards=1)

    def loader(policy: str):
        data = TextClassificationData(
            tokenizer_name=tiny_bert,
            train_file=pattern,
            streaming=True,
            batch_size=4,
            examples_per_epoch=259,
            label_names=["neg", "pos"],
            on_bad_row=policy,
        )
        data.setup("fit")
        return data.train_dataloader()

    with pytest.raises(HFTrainError, match=r"part-0\.jsonl, line 251: .*label 'neutral'.*data.on_bad_row=skip"):
        list(loader("stop"))
    with pytest.warns(UserWarning, match=r"Skipped a streamed training row \(.*part-0\.jsonl, line 251\)"):
        assert sum(len(batch["labels"]) for batch in loader("skip")) == 259


def test_seq2seq_streams_parquet_shards(tiny_t5, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hftrain.tasks.seq2seq import Seq2SeqData

    folder = tmp_path / "train"
    folder.mkdir()
    for i in range(2):
        rows = [{"source": f"a b c {j}", "target": f"c b a {j}"} for j in range(i * 20, i * 20 + 20)]
        pq.write_table(pa.Table.from_pylist(rows), folder / f"part-{i}.parquet", row_group_size=7)
    data = Seq2SeqData(
        tokenizer_name=tiny_t5,
        train_file=str(folder / "*.parquet"),
        streaming=True,
        examples_per_epoch=40,
        batch_size=4,
        shuffle_buffer=5,
    )
    batch = first_batch(data)
    assert batch["input_ids"].shape[0] == 4 and (batch["labels"] != -100).any()
    assert sum(len(b["input_ids"]) for b in data.train_dataloader()) == 40


def test_a_hub_dataset_streams_shard_by_shard(tiny_gpt2, tmp_path):
    from hftrain.tasks.language_modeling import LanguageModelingData

    hub = tmp_path / "hub"  # a dataset folder loads as a Hub repository does, offline
    write_shards(hub, [{"text": doc} for doc in counting(60, seed=1)], shards=2)
    for i in range(2):
        (hub / f"part-{i}.jsonl").rename(hub / f"train-{i}.jsonl")
    (hub / "validation.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in counting(30, seed=2)))
    data = LanguageModelingData(
        tokenizer_name=tiny_gpt2,
        dataset_name=str(hub),
        streaming=True,
        max_eval_samples=10,
        examples_per_epoch=12,
        block_size=16,
        batch_size=4,
    )
    assert len(data.shards) == 2 and len(data.raw["validation"]) == 10
    with pytest.warns(UserWarning, match=r"validation split is not used.*data.max_eval_samples rows, which is unset"):
        LanguageModelingData(tokenizer_name=tiny_gpt2, dataset_name=str(hub), streaming=True, block_size=16)
    batch = first_batch(data)
    assert batch["input_ids"].shape == (4, 16)
    loader = data.train_dataloader()
    iterator = iter(loader)
    head = [next(iterator)["input_ids"] for _ in range(2)]
    state = loader.state_dict()
    resumed = data.train_dataloader()
    resumed.load_state_dict(state)
    straight = [b["input_ids"] for b in data.train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(head + list(b["input_ids"] for b in resumed), straight, strict=True))


def test_tasks_that_need_whole_splits_refuse_streaming(tiny_bert, tmp_path):
    from hftrain.tasks.token_classification import TokenClassificationData

    train = write_shards(tmp_path / "data", [{"tokens": ["a"], "tags": ["O"]}], shards=1)
    with pytest.raises(HFTrainError, match=r"TokenClassificationData trains on map-style data only"):
        TokenClassificationData(tokenizer_name=tiny_bert, train_file=train, streaming=True)


# ---------------------------------------------------------------------------------------------- every row once


def numbered_docs(count: int) -> dict[str, int]:
    """`count` distinct counting documents (the tiny GPT-2's vocabulary), each with its row number."""
    pairs = [(start, length) for length in range(4, 12) for start in range(0, 80, 3)][:count]
    return {" ".join(str(n) for n in range(start, start + length)): i for i, (start, length) in enumerate(pairs)}


def one_pass_config(folder: Path, model: str, *callbacks: dict) -> Path:
    """64 documents in 4 shards, one example each (no packing): 8 steps of 4 examples on each of 2 ranks are
    exactly one pass over the data."""
    docs = numbered_docs(64)
    train = write_shards(folder / "train", [{"text": doc} for doc in docs], shards=4)
    config = lm_config(folder / "once.yaml", model, train, train.replace("*", "0"), packing=False, max_length=32)
    content = yaml.safe_load(config.read_text())
    content["trainer"].update(max_steps=8, val_check_interval=8)
    content["data"]["init_args"]["split_by_length"] = False
    config.write_text(yaml.safe_dump(content))
    return with_callbacks(config, *callbacks)


def rows_trained(folder: Path, model: str, ranks: int) -> list[list[int]]:
    """The row numbers each rank trained on, read back from the recorded token ids."""
    from transformers import AutoTokenizer

    tokenizer, docs = AutoTokenizer.from_pretrained(model), numbered_docs(64)
    seen = []
    for rank in range(ranks):
        ids = [row for batch in batches(folder, rank).values() for row in batch]
        seen.append([docs[tokenizer.decode(row, skip_special_tokens=True).strip()] for row in ids])
    return seen


@pytest.mark.processes  # two DDP processes
def test_two_ranks_train_on_every_row_of_a_pass_exactly_once(tiny_gpt2, tmp_path):
    config = one_pass_config(tmp_path, tiny_gpt2, recorder(tmp_path / "batches"))
    done = hftrain("fit", "--config", config, *CPU_DDP, "--trainer.devices", 2)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = rows_trained(tmp_path / "batches", tiny_gpt2, ranks=2)
    assert len(first) == len(second) == 32
    assert sorted(first + second) == list(range(64))


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_a_requeued_slurm_job_resumes_the_stream_exactly_and_uses_every_row_once(tiny_gpt2, tmp_path_factory):
    """Two nodes stream one pass; a second job gets SLURM's requeue signal inside step 4 of 8 on both ranks,
    saves, requeues and resumes: each rank trains the uninterrupted job's batches, to its weights."""
    from test_slurm import job_log, submit, wait_for_ranks, wait_job

    straight = tmp_path_factory.mktemp("stream-straight")
    job = submit(straight, one_pass_config(straight, tiny_gpt2, recorder(straight / "batches")))
    assert wait_job(job, straight)["JobState"] == "COMPLETED", job_log(straight, job)
    first, second = rows_trained(straight / "batches", tiny_gpt2, ranks=2)
    assert len(first) == len(second) == 32 and sorted(first + second) == list(range(64))

    folder = tmp_path_factory.mktemp("stream-requeued")
    ready = folder / "ready"
    ready.mkdir()
    pause = {
        "class_path": "faults.PauseInOptimizerStep",
        "init_args": {"step": 4, "seconds": 8, "ready_dir": str(ready)},
    }
    requeued = submit(folder, one_pass_config(folder, tiny_gpt2, recorder(folder / "batches"), pause))
    wait_for_ranks(ready, requeued, folder)
    subprocess.run(["scancel", "--signal=USR1", requeued], check=True, timeout=30)
    info = wait_job(requeued, folder)
    log = job_log(folder, requeued)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log
    assert "Restored all states from the checkpoint at" in log, log
    for rank in range(2):
        assert batches(folder / "batches", rank) == batches(straight / "batches", rank), rank
    assert_same_weights(
        straight / "runs" / "once" / f"version_{job}" / "checkpoints" / "last.ckpt",
        folder / "runs" / "once" / f"version_{requeued}" / "checkpoints" / "last.ckpt",
    )


def test_a_resumed_reader_seeks_to_its_position_instead_of_reading_the_rows_before(tmp_path):
    """The rows before the saved position are not read again (here they are made unreadable after the save):
    a resume costs the same wherever the run stopped."""
    folder = tmp_path / "data"
    pattern = write_shards(folder, id_rows(2000), shards=1)
    first = stream(pattern, 2000, buffer_size=4)
    served = iter(first)
    head = [next(served)["id"] for _ in range(1500)]
    state = first.state_dict()
    shard = folder / "part-0.jsonl"
    text = shard.read_bytes()
    cut = text.index(b"\n", len(text) // 2)
    shard.write_bytes(b"x" * cut + text[cut:])  # the first half of the file is no longer JSON
    resumed = stream(pattern, 2000, buffer_size=4)
    resumed.load_state_dict(state)
    assert sorted(head + ids_of(resumed)) == list(range(2000))
