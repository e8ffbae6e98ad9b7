"""What a fit logs besides the task's metrics: learning rate, gradient norm, throughput, the best score.

TensorBoard then shows, for every run however short: `train/loss`, `train/lr`, `train/grad_norm`,
`train/samples_per_sec` and `train/tokens_per_sec` (`TrainingLog`), `val/<metric>` per validation and
`val/best_<metric>` (the best so far of the metric that picks the checkpoint, `monitored_metric`: also on the
first of several validation sets, `val/<set>/best_<metric>`, or a custom `checkpoint.monitor`), which the
HPARAMS tab shows beside each run's hyperparameters. Every other logger (CSV, MLflow, W&B, Comet) gets the same
figures.

Nothing here reads a number from the device between logging steps: the gradient norm and token count
stay device tensors, read in one transfer at logging steps, when Lightning converts the logged loss anyway.
"""

import math
import time
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from hftrain.core import internals
from hftrain.core.length_split import batch_parts
from hftrain.core.monitor import monitored_metric

# Lightning's default interval, kept for runs long enough to get this many points from it
DEFAULT_LOG_EVERY_N_STEPS = 50
POINTS_PER_RUN = 50


def log_interval(total_steps: float) -> int:
    """Steps between logged points: enough points for a curve in a short run (every step of a 50-step run),
    Lightning's 50 from 2,500 steps on."""
    if math.isinf(total_steps):
        return DEFAULT_LOG_EVERY_N_STEPS
    return max(1, min(DEFAULT_LOG_EVERY_N_STEPS, int(total_steps) // POINTS_PER_RUN))


def best_tag(monitor: str) -> str:
    """`val/accuracy` -> `val/best_accuracy`: the best so far sits next to the metric in TensorBoard."""
    stage, _, name = monitor.rpartition("/")
    return f"{stage}/best_{name}" if stage else f"best_{name}"


class TrainingLog(Callback):
    """Log the learning rate, gradient norm and throughput at every logging step, and the best validation
    score after every validation; with `scale_log_interval`, size `log_every_n_steps` to the run first.

    `train/samples_per_sec` and `train/tokens_per_sec` (non-padding tokens) count all processes (rank 0's
    count times their number) over the wall time since the previous logging step, leaving out validation.
    `train/grad_norm` is the total L2 norm before clipping; it is left out under sharded strategies (FSDP,
    DeepSpeed), where each process holds only part of the gradients.

    Args:
        scale_log_interval: Set the trainer's `log_every_n_steps` from the run's length (`log_interval`);
            the CLI sets it when `trainer.log_every_n_steps` is not given.
    """

    def __init__(self, scale_log_interval: bool = False) -> None:
        self.scale_log_interval = scale_log_interval
        self.best: float | None = None
        self._hparams_written = False
        self._window_start = time.perf_counter()
        self._samples = 0
        self._tokens: torch.Tensor | int = 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self.scale_log_interval:
            trainer.log_every_n_steps = 1  # building the loader below compares the interval to its length
            trainer.log_every_n_steps = log_interval(trainer.estimated_stepping_batches)

    # ------------------------------------------------------------------ training steps

    def _restart_window(self) -> None:
        self._window_start = time.perf_counter()
        self._samples, self._tokens = 0, 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restart_window()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        for part in batch_parts(batch):
            inputs = part.get("input_ids") if isinstance(part, Mapping) else None
            if inputs is None:
                return
            self._samples += len(inputs)
            mask = part.get("attention_mask")
            self._tokens = self._tokens + (mask.sum() if mask is not None else inputs.numel())

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if not internals.logs_this_step(trainer):
            return
        if trainer.is_global_zero and trainer.loggers:
            self._write_step(trainer, pl_module, optimizer)
        self._restart_window()

    def _write_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        """Write this logging step's figures to the loggers directly, as Lightning's `LearningRateMonitor`
        does: through `self.log` each would cost about 0.5 ms on CPU (Lightning copies a metric's settings on
        every call), 2 ms per logging step, more than a small model's whole step. Device values are read
        in one transfer, at logging steps only."""
        figures: dict[str, Any] = {"train/lr": optimizer.param_groups[0]["lr"]}
        if isinstance(trainer.strategy, SingleDeviceStrategy | DDPStrategy):
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            if grads:
                figures["train/grad_norm"] = torch.nn.utils.get_total_norm(grads)
        elapsed = time.perf_counter() - self._window_start
        if self._samples and elapsed > 0:
            figures["train/samples_per_sec"] = self._samples * trainer.world_size / elapsed
            figures["train/tokens_per_sec"] = self._tokens * trainer.world_size / elapsed
        on_device = [name for name, value in figures.items() if isinstance(value, torch.Tensor)]
        if on_device:
            values = torch.stack([figures[name].float() for name in on_device]).tolist()
            figures.update(zip(on_device, values, strict=True))
        step = internals.logged_step(trainer)
        for logger in trainer.loggers:
            logger.log_metrics(figures, step=step)

    # ------------------------------------------------------------------ validation

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._restart_window()
        monitor, mode = monitored_metric(trainer, pl_module) or (None, None)
        if monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[monitor])
        better = max if mode == "max" else min
        self.best = value if self.best is None or math.isnan(self.best) else better(self.best, value)
        if trainer.is_global_zero:
            self._log_best(trainer, best_tag(monitor))

    def _log_best(self, trainer: Trainer, tag: str) -> None:
        """The best score so far, at the step of the validation's metrics, to every logger; to TensorBoard the
        first time in a process with the run's hyperparameters, so that the HPARAMS tab lists it beside them
        (the other loggers keep the hyperparameters Lightning logged and the score as a metric beside them)."""
        step = internals.logged_step(trainer)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and not self._hparams_written:
                logger.log_hyperparams(logger.hparams, metrics={tag: self.best}, step=step)
            else:
                logger.log_metrics({tag: self.best}, step=step)
        self._hparams_written = True
