"""The tokenized cache is written once per filesystem: by one process of one node while the others (other
ranks, other nodes sharing the folder) wait for it; a lock left by a dead writer is taken over. Its key
names the tokenizer by what it does, not by how it was last called."""

import json
import socket
import subprocess
import sys
import threading
import time

import datasets
import pytest
from helpers import classification_config, two_nodes_on_localhost

from hftrain.core import cache
from hftrain.core.cache import TokenizedCache


def built(calls: list[str], name: str, delay: float = 0.0):
    """A `build` for `write_once` that records its call and returns a one-row split."""

    def build():
        calls.append(name)
        time.sleep(delay)
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [len(calls)]})}), [f"note {name}"]

    return build


def test_a_second_writer_waits_for_the_first_and_reads_its_copy(tmp_path):
    calls: list[str] = []
    first, second = TokenizedCache(tmp_path / "key"), TokenizedCache(tmp_path / "key")
    writer = threading.Thread(target=first.write_once, args=(built(calls, "first", delay=1.0),))
    writer.start()
    while not first.lock.exists():
        time.sleep(0.01)
    second.write_once(built(calls, "second"))  # returns once the first's copy is in place
    writer.join()
    assert calls == ["first"] and not first.lock.exists()
    splits, notes = second.read()
    assert splits["train"]["x"][:] == [1] and notes == ["note first"]
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no partial folder, no lock left


def test_overwrite_rewrites_once_even_with_a_process_waiting(tmp_path):
    calls: list[str] = []
    TokenizedCache(tmp_path / "key").write_once(built(calls, "old"))
    first, second = TokenizedCache(tmp_path / "key", overwrite=True), TokenizedCache(tmp_path / "key", overwrite=True)
    writer = threading.Thread(target=first.write_once, args=(built(calls, "new", delay=1.0),))
    writer.start()
    while not first.lock.exists():
        time.sleep(0.01)
    second.write_once(built(calls, "again"))
    writer.join()
    assert calls == ["old", "new"] and second.read()[1] == ["note new"]


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    target = TokenizedCache(tmp_path / "key")
    target.lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    calls: list[str] = []
    target.write_once(built(calls, "me"))
    assert calls == ["me"] and target.path.is_dir() and not target.lock.exists()


def test_a_lock_from_another_host_is_stale_once_it_stops_changing(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "STALE_S", 0.5)
    target = TokenizedCache(tmp_path / "key")
    target.lock.write_text(json.dumps({"host": "another-node", "pid": 1}))
    calls: list[str] = []
    started = time.monotonic()
    target.write_once(built(calls, "me"))
    assert calls == ["me"] and 0.5 <= time.monotonic() - started < 5


@pytest.mark.processes  # two hftrain processes at once, one per simulated node
def test_two_nodes_sharing_the_cache_folder_tokenize_once_and_read_the_same_data(tiny_bert, sentiment_files, tmp_path):
    """Lightning runs `prepare_data` on the first process of every node; two nodes that share a filesystem
    used to tokenize the same cache side by side (and, with equal process ids, into one partial folder)."""
    log = tmp_path / "cache.log"
    slow = {"class_path": "faults.SlowCacheWrites", "init_args": {"log": str(log)}}
    config = classification_config(
        tmp_path / "nodes.yaml",
        tiny_bert,
        {split: sentiment_files[split] for split in ("train", "validation")},
        data__batch_size=8,
        data__cache_dir=str(tmp_path / "shared-cache"),
        trainer__callbacks=[slow],
    )
    two_nodes_on_localhost(config, "--trainer.max_steps", 1)
    lines = [line.split() for line in log.read_text().splitlines()]
    assert len([line for line in lines if line[0] == "write"]) == 1, lines
    reads = [line for line in lines if line[0] == "read"]
    assert len(reads) == 2 and reads[0][1] != reads[1][1] and reads[0][2] == reads[1][2], lines
    assert [p.suffix for p in (tmp_path / "shared-cache" / "datasets").iterdir()] == [""]  # no lock or partial left


def test_a_tokenizer_keeps_its_fingerprint_once_used_and_loses_it_when_changed(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    fingerprint = cache.tokenizer_fingerprint(tokenizer)
    tokenizer(["a b c d e f"] * 2, truncation=True, max_length=4, padding="max_length")  # sets the call's settings
    assert cache.tokenizer_fingerprint(tokenizer) == fingerprint  # a search's next trial finds its cache
    tokenizer.add_tokens(["zebra"])
    assert cache.tokenizer_fingerprint(tokenizer) != fingerprint
