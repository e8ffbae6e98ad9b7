"""Checkpoint writes that a kill cannot tear and a full disk reports in a paragraph (see `writes.py`)."""

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from hftrain.core.writes import replacing


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` that writes through `writes.replacing`: to `<name>.partial` in the same folder, fsynced,
    then renamed over the destination."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with replacing(Path(path), needed=lambda: serialized_size(checkpoint)) as partial, partial.open("wb") as f:
            torch.save(checkpoint, f)  # a file object: torch then raises the system's error, not only its own


def serialized_size(obj: Any) -> int:
    """The bytes `torch.save(obj)` writes, counted without writing them anywhere."""
    counter = _ByteCounter()
    torch.save(obj, counter)
    return counter.size


class _ByteCounter:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass
