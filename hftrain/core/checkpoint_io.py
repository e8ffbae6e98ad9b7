"""Checkpoint writes that a kill cannot tear.

Lightning's default writer goes through an fsspec transaction that stages the file in the system temp
folder and moves it into place: on a cluster where the run folder and /tmp are different filesystems
that move is a copy, and a kill in the middle of it leaves a truncated `last.ckpt` behind. Here the file
is written beside its destination, flushed to disk, and renamed over it: the rename is atomic, so the
path always holds either the previous checkpoint or the complete new one.
"""

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` that writes to `<name>.partial` in the same folder, fsyncs, then renames."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with partial.open("wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
