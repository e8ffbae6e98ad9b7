"""Stop on SIGTERM, Ctrl-C or SLURM's requeue signal at the next step boundary, with a checkpoint that an exact
resume continues from.

Lightning's own handlers act inside the signal handler, wherever the main thread happens to be: its SLURM
handler saves the requeue checkpoint in the middle of a training step, pairing the previous step's weights
with a loader that already served this step's batch (the resumed run skips that batch and the epoch's
validation), and its SIGTERM handler runs a collective inside the handler, which breaks ranks that are in
another collective. Here the handler only records the signal. After each training batch and at each
epoch's end (where Lightning's own checkpoints are exact, and after a validation was recorded) all ranks
agree on it with one all-reduce of a CPU tensor (no device sync), save, and stop together.
"""

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from hftrain.core import internals
from hftrain.core.errors import HFTrainError
from hftrain.core.runs import LAST_CHECKPOINT


class RunInterrupted(HFTrainError):
    """A run stopped by a signal after saving where it stood; `exit_code` is the process's exit status, `stopped`
    what happened and what was saved, without the advice on resuming (a search gives its own)."""

    def __init__(self, message: str, exit_code: int, stopped: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.stopped = stopped or message


class StopOnSignal(Callback):
    """On SIGTERM (preemption, `scancel`, `timeout`), Ctrl-C, or the requeue signal of a SLURM job
    (`#SBATCH --signal=SIGUSR1@90`), finish the current step, save, and stop; a second Ctrl-C stops at once.

    In a SLURM job the checkpoint is Lightning's requeue checkpoint (`hpc_ckpt_N.ckpt` in the run folder),
    from which the job resumes by itself, and the requeue signal also requeues the job; elsewhere it is
    `last.ckpt`, for `--ckpt_path last`.
    """

    def __init__(self) -> None:
        self.received = 0
        self._requeue_signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._group = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after Trainer._run registered Lightning's handlers, which it restores (with the user's) at teardown
        self._requeue_signal = internals.slurm_requeue_signal(trainer)
        for signum in {signal.SIGTERM, signal.SIGINT, self._requeue_signal} - {None}:
            self._previous[signum] = signal.signal(signum, self._record)
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD

    def _record(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        if not self.received:
            self.received = signum
            hint = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
            # os.write, not print: a handler that prints while the main thread prints raises a reentrant error
            os.write(2, f"\n{signal.Signals(signum).name}: saving and stopping after this step{hint}.\n".encode())

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        self._stop_if_signalled(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after the epoch's validation was recorded and ranked (their callbacks run at validation end)
        self._stop_if_signalled(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end_fit()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._end_fit()

    def _end_fit(self) -> None:
        """Put the previous handlers back and forget the signal: a stop request belongs to the fit it stopped.
        A continued fit (`run.fit(epochs=1)` after the stop button) starts without one, and stops only on a
        signal of its own."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        self.received = 0

    def _agreed_signal(self) -> int:
        """The signal any rank received (the same answer on every rank), 0 for none."""
        if self._group is None:
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag.item())

    def _stop_if_signalled(self, trainer: Trainer) -> None:
        signum = self._agreed_signal()
        if not signum:
            return
        requeue = signum == self._requeue_signal
        if SLURMEnvironment.detect():
            path = internals.hpc_checkpoint_path(trainer)
        elif trainer.checkpoint_callback is not None:
            path = str(Path(trainer.checkpoint_callback.dirpath) / LAST_CHECKPOINT)
        else:
            path = None
        if path is not None:
            trainer.save_checkpoint(path, weights_only=False)  # a resumable state
        if path is not None and not SLURMEnvironment.detect():
            trainer.checkpoint_callback.last_model_path = path  # what a continued fit resumes from
        if requeue and trainer.is_global_zero:
            job = SLURMEnvironment.job_id()
            done = subprocess.run(["scontrol", "requeue", str(job)], capture_output=True, text=True)
            rank_zero_info(f"Requeued SLURM job {job}" if done.returncode == 0 else f"Requeue failed: {done.stderr}")
        name = signal.Signals(signum).name
        saved = f"saved {path}" if path else "no checkpoint callback, nothing saved"
        resume = "the requeued job resumes from it" if requeue else "resume with --ckpt_path last"
        stopped = f"Stopped by {name} at step {trainer.global_step}; {saved}"
        raise RunInterrupted(f"{stopped}: {resume}.", exit_code=0 if requeue else 128 + signum, stopped=stopped)
