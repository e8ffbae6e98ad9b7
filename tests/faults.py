"""Faults injected into a training subprocess (importable there through PYTHONPATH=tests)."""

import json
import os
import shutil
import signal
import time
from pathlib import Path

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


class PauseInOptimizerStep(Callback):
    """Pause `seconds` inside optimizer step `step` (its backward pass done, the weights not yet moved), after
    writing this rank's pid to `ready_dir/rank<R>`: a signal sent meanwhile lands inside the step, as a SLURM
    time-limit warning does on a job whose steps take most of its time. `ranks`: the ranks that pause (the
    others go on into the next collective and wait there). Only in a SLURM job's first run: the requeued run
    (SLURM_RESTART_COUNT >= 1) trains undisturbed."""

    def __init__(self, step: int, seconds: float, ready_dir: str, ranks: list[int] | None = None) -> None:
        self.step, self.seconds, self.ready_dir, self.ranks = step, seconds, Path(ready_dir), ranks

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step != self.step or int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
            return
        (self.ready_dir / f"rank{trainer.global_rank}").write_text(str(os.getpid()))
        if self.ranks is None or trainer.global_rank in self.ranks:
            time.sleep(self.seconds)  # a signal's Python handler runs during the sleep, then the sleep goes on


class SignalAt(Callback):
    """Send `signum` to this process once, at a moment of step `step` that is not a batch boundary: inside the
    training step (`training_step`, after the forward pass), inside the optimizer step (`optimizer_step`,
    gradients made, weights not yet moved), during a validation batch (`validation`), or in the middle of
    writing a checkpoint (`checkpoint_save`). Nothing else is disturbed: the run's own handler decides."""

    def __init__(self, signum: int, point: str, step: int) -> None:
        self.signum, self.point, self.step, self.sent = signum, point, step, False

    def _send(self, trainer, point: str) -> None:
        if point == self.point and trainer.global_step >= self.step and not self.sent and not trainer.sanity_checking:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._send(trainer, "training_step")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._send(trainer, "optimizer_step")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._send(trainer, "validation")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._send(trainer, "checkpoint_save")


class StartTogether(Callback):
    """Hold this process when the trainer's callbacks are built (after the config is read and the model loaded)
    until `go` exists, after writing its pid to `ready_dir`: processes started one after another then go on
    at one moment, as the tasks of a job array or a sweep's workers do."""

    def __init__(self, ready_dir: str, go: str, timeout: float = 300) -> None:
        (Path(ready_dir) / str(os.getpid())).write_text("ready")
        deadline = time.monotonic() + timeout
        while not Path(go).exists() and time.monotonic() < deadline:
            time.sleep(0.01)


class FillDisk(Callback):
    """After optimizer step `step`, write a ballast file that leaves only `leave` bytes free on its disk: the
    next checkpoint no longer fits."""

    def __init__(self, step: int, ballast: str, leave: int) -> None:
        self.step, self.ballast, self.leave = step, Path(ballast), leave

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.ballast.exists():
            free = shutil.disk_usage(self.ballast.parent).free
            self.ballast.write_bytes(b"\0" * max(0, free - self.leave))


def first_to_claim(marker: Path, owner: str) -> bool:
    """Whether `owner` holds `marker`: the first caller creates it (an exclusive create, atomic also across the
    processes of a job) and writes its name; later callers with the same owner hold it too, others do not."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        for _ in range(100):  # the creator may not have written its name yet
            if text := marker.read_text():
                return text == owner
            time.sleep(0.01)
        return False
    os.write(fd, owner.encode())
    os.close(fd)
    return True


class KillOnceAtStep(Callback):
    """SIGKILL this process right after optimizer step `step`, only in the first process to get there (it creates
    `marker`): the resumed trial, the other trials and a reference run with the same config go on undisturbed."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and first_to_claim(self.marker, str(os.getpid())):
            os.kill(os.getpid(), signal.SIGKILL)


class PauseOnceInOptimizerStep(PauseInOptimizerStep):
    """PauseInOptimizerStep in the first SLURM job whose ranks get there (it writes its job id to
    `ready_dir/job`), in that job's first run: a test then knows which worker of a job array to requeue mid-step,
    and the other workers, the requeued run and a reference run go on undisturbed."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        job = os.environ.get("SLURM_JOB_ID", "")
        if trainer.global_step == self.step and first_to_claim(self.ready_dir / "job", job):
            super().on_before_optimizer_step(trainer, pl_module, optimizer)


class SlowCacheWrites(Callback):
    """Every write of a tokenized cache in this process takes `delay` seconds longer and leaves a line
    `write <host> <pid>` in `log`; at setup, the process logs `read <pid> <digest>` of the training split it
    loaded. Patched in the constructor, which the CLI runs before Lightning's `prepare_data`."""

    def __init__(self, log: str, delay: float = 3.0) -> None:
        import socket

        import datasets

        self.record = Path(log)
        save = datasets.DatasetDict.save_to_disk

        def slow_save(dataset_dict, path, **options):
            with self.record.open("a") as out:
                out.write(f"write {socket.gethostname()} {os.getpid()}\n")
            time.sleep(delay)
            return save(dataset_dict, path, **options)

        datasets.DatasetDict.save_to_disk = slow_save

    def setup(self, trainer, pl_module, stage: str) -> None:
        import hashlib
        import json

        ids = trainer.datamodule.datasets["train"]["input_ids"]
        digest = hashlib.sha256(json.dumps(ids[:]).encode()).hexdigest()
        with self.record.open("a") as out:
            out.write(f"read {os.getpid()} {digest}\n")


class RecordBatches(Callback):
    """Append every training batch's token ids, with the step it trains, to `folder/rank<R>.jsonl`: to compare the
    batches of a resumed run with an uninterrupted one's, and the rows every rank saw."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        line = {"step": trainer.global_step, "input_ids": batch["input_ids"].tolist()}
        with (self.folder / f"rank{trainer.global_rank}.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")
