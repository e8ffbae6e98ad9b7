"""The tokenized cache: where a data module's tokenized splits are saved, under a key of everything that
changes them, and how several processes (ranks, nodes) get one copy written once.

A cache folder is written whole or not at all: into `<key>.partial-<host>-<pid>` beside it, renamed into place.
Who writes it is decided by a lock file beside it, created exclusively (`O_EXCL`, atomic on local disks and
on NFS v3 and later): on a filesystem that several nodes share, the first process to create it tokenizes and
the others, on any node, wait for the folder; nodes that do not share one each see no lock but their own,
so each writes its own copy. The filesystem tells them apart, not a rank or a host name. A lock whose
writer died (killed mid-tokenizing) stops being refreshed and is taken over after `STALE_S` seconds, or at
once on the same host when its process is gone; two processes taking over together both tokenize, and one
rename wins: more work, never a torn cache.
"""

import hashlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from lightning.pytorch.utilities import rank_zero_info
from transformers import PreTrainedTokenizerBase

from hftrain.core import console

# bumped whenever the columns of the tokenized cache, or what is kept with it, change, so that no run reads an
# older layout
CACHE_FORMAT = 3
# what tokenizing found worth saying (rows cut at max_length), kept with the cache and said by every run reusing it
NOTES_FILE = "hftrain_notes.json"
# how often the writer refreshes its lock, and how long a lock unchanged is taken as its writer's death
HEARTBEAT_S = 10.0
STALE_S = 120.0


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
    parts.append(_backend_text(backend) if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items())))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _backend_text(backend) -> str:
    """The fast tokenizer's serialized form without its `truncation` and `padding` settings, which lead it: each
    call sets them from its own arguments, so they say how the tokenizer was last called, not what it does. With
    them, a tokenizer used once (a search's shared one, after its first trial) would miss its own cache."""
    text = backend.to_str()
    start = text.find('"added_tokens":')
    return text[start:] if start >= 0 else text


def cache_path(root: Path, name: str, key: dict[str, Any]) -> Path:
    """The folder under `root` for tokenized data described by `key` (task, settings, files, tokenizer): any
    change to one of them gives another folder. `name` (the data module's class) keeps the folders readable."""
    digest = hashlib.sha256(json.dumps({**key, "format": CACHE_FORMAT}, sort_keys=True, default=str).encode())
    return root / "datasets" / f"{name}-{digest.hexdigest()[:20]}"


@dataclass
class TokenizedCache:
    """One cache folder: `write_once` tokenizes into it unless a copy exists (or `overwrite`), `read` loads it."""

    path: Path
    overwrite: bool = False

    @property
    def lock(self) -> Path:
        return self.path.with_name(f"{self.path.name}.lock")

    def write_once(self, build: Callable[[], tuple[datasets.DatasetDict, list[str]]]) -> None:
        """Save what `build` returns (the tokenized splits and their notes), unless the folder exists; the
        first process to take the lock builds, the others wait for it (see the module's docstring)."""
        while True:
            if self.path.is_dir() and not self.overwrite:
                rank_zero_info(f"Reusing tokenized data from {self.path}")
                return
            if self._take_lock():
                try:
                    self._write(build)
                finally:
                    self.lock.unlink(missing_ok=True)
                return
            self._wait_for_lock()
            self.overwrite = False  # the lock's holder wrote it: this run's copy

    def _write(self, build: Callable[[], tuple[datasets.DatasetDict, list[str]]]) -> None:
        stop = threading.Event()
        heartbeat = threading.Thread(target=self._refresh_lock, args=(stop,), daemon=True)
        heartbeat.start()
        try:
            if self.overwrite:
                shutil.rmtree(self.path, ignore_errors=True)
                self.overwrite = False
            elif self.path.is_dir():  # written between our look and our lock
                return
            splits, notes = build()
            partial = self.path.with_name(f"{self.path.name}.partial-{socket.gethostname()}-{os.getpid()}")
            with console.datasets_bars_hidden():
                splits.save_to_disk(str(partial))
            (partial / NOTES_FILE).write_text(json.dumps(notes))
            try:
                partial.rename(self.path)
            except OSError:  # a process that took over a lock it thought stale finished first
                shutil.rmtree(partial, ignore_errors=True)
            rank_zero_info(f"Tokenized data cached in {self.path}")
        finally:
            stop.set()
            heartbeat.join()

    def read(self) -> tuple[datasets.DatasetDict, list[str]]:
        """The tokenized splits and the notes tokenizing left."""
        return datasets.load_from_disk(str(self.path)), json.loads((self.path / NOTES_FILE).read_text())

    def _take_lock(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(handle, "w") as lock:
            lock.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        return True

    def _refresh_lock(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.lock)
            except FileNotFoundError:
                return

    def _wait_for_lock(self) -> None:
        """Wait until the lock is gone; remove it if its writer is dead (gone from this host, or its lock not
        refreshed for `STALE_S` seconds of our own clock, so clocks that differ between nodes do not matter)."""
        rank_zero_info(f"Waiting for another process to finish tokenizing into {self.path} ({self.lock} exists)")
        seen, since = None, time.monotonic()
        while True:
            try:
                stamp, holder = self.lock.stat().st_mtime_ns, json.loads(self.lock.read_text() or "{}")
            except (FileNotFoundError, json.JSONDecodeError):
                stamp, holder = None, {}
            if stamp is None and not self.lock.exists():
                return
            if stamp != seen:
                seen, since = stamp, time.monotonic()
            if time.monotonic() - since > STALE_S or _dead_here(holder):
                self.lock.unlink(missing_ok=True)
                return
            time.sleep(0.2)


def _dead_here(holder: dict[str, Any]) -> bool:
    """Whether a lock's writer ran on this host and its process is gone."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False
