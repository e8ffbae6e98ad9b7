"""Faults injected into a training subprocess (importable there through PYTHONPATH=tests)."""

import os
import signal

import torch
from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILL this process right after optimizer step `step`: no handler, no cleanup, like an OOM kill."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillDuringSave(Callback):
    """SIGKILL this process half-way through writing its `save`-th checkpoint file."""

    def __init__(self, save: int) -> None:
        self.save, self.seen = save, 0

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.seen += 1
        if self.seen < self.save:
            return
        real_save = torch.save

        def torn_save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            f.flush()
            f.truncate(f.tell() // 2)  # the first half reached the disk, then the machine went away
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = torn_save
