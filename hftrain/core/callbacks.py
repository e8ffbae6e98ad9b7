"""Callbacks Lightning lacks: checkpoints and early stopping on the task's metric, the `hf_model/` export,
`results.json`, predictions.

Every run folder (`runs/<name>/version_N/`, see `runs.py`) ends up holding what these write: the exported
model, a results file in the spirit of the HF Trainer's `all_results.json`, and prediction JSONL files.
None of them overwrites an earlier file the user may still need. What they need of the module is the
`TaskModule` contract (`monitor`, `monitor_mode`, `export`), read through `task_monitor`.
"""

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch import callbacks as pl_callbacks
from lightning.pytorch.utilities import rank_zero_info

from hftrain.core import internals
from hftrain.core.errors import HFTrainError
from hftrain.core.module import TaskModule, task_monitor
from hftrain.core.runs import EXPORT_DIR, free_path, update_results


def _numbers(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if k.startswith(prefix)}


class TaskCheckpoint(pl_callbacks.ModelCheckpoint):
    """Lightning's `ModelCheckpoint` with two differences: `monitor` defaults to the task's main validation
    metric, and `last.ckpt` always holds the latest weights.

    With `monitor` unset it watches the module's `monitor` (`val/accuracy` for classification,
    `val/f1` for NER, …) in the module's `monitor_mode`, so one config serves every task.
    Lightning 2.6 rewrites `last.ckpt` at epoch end only when a top-k checkpoint was saved at the same
    step: after an epoch without improvement it would hold stale weights and a resume would repeat work.
    With `every_n_train_steps`, `last.ckpt` is also written every that many optimizer steps, which is
    what an exact resume after a kill continues from.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.monitor is None:
            self.monitor, self.mode = task_monitor(pl_module, "checkpoint.monitor")
            self.kth_value = torch.tensor(math.inf if self.mode == "min" else -math.inf)
        super().setup(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # with a monitored metric Lightning defers step saves to the next validation; `last.ckpt` must not
        # wait, or a kill loses everything since the last epoch
        n = internals.every_n_train_steps(self)
        if n >= 1 and trainer.global_step % n == 0:
            internals.save_last_checkpoint(self, trainer, keep_step_open=True)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not internals.saves_at_train_epoch_end(self, trainer):
            internals.save_last_checkpoint(self, trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if internals.saves_at_train_epoch_end(self, trainer):
            internals.save_last_checkpoint(self, trainer)


class TaskEarlyStopping(pl_callbacks.EarlyStopping):
    """Lightning's `EarlyStopping` whose `monitor` and `mode` default to the task's main validation metric
    (Lightning's own needs `monitor` named).

    Args:
        monitor: Metric to watch; defaults to the task's main validation metric.
        mode: `min` or `max`; defaults to the task's.
        patience: Validation runs without improvement before training stops.
        min_delta: Smallest change that counts as an improvement.
        stopping_threshold: Stop as soon as the metric reaches this value.
        verbose: Log each decision.
    """

    def __init__(
        self,
        monitor: str | None = None,
        mode: Literal["min", "max"] | None = None,
        patience: int = 3,
        min_delta: float = 0.0,
        stopping_threshold: float | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(
            monitor=monitor or "",
            mode=mode or "min",
            patience=patience,
            min_delta=min_delta,
            stopping_threshold=stopping_threshold,
            verbose=verbose,
        )
        self._follow_task = (monitor is None, mode is None)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        follow_monitor, follow_mode = self._follow_task
        if follow_monitor:
            self.monitor, task_mode = task_monitor(pl_module, "the early stopping callback's monitor")
        if follow_mode:
            self.mode = task_mode if follow_monitor else self.mode
            self.min_delta = abs(self.min_delta) * (1 if self.monitor_op == torch.gt else -1)
            self.best_score = torch.tensor(math.inf if self.monitor_op == torch.lt else -math.inf)
        super().setup(trainer, pl_module, stage)


class StopOnNonFiniteLoss(pl_callbacks.Callback):
    """Stop training with a clear error when the loss becomes NaN or infinite, before a checkpoint of the
    broken weights is written.

    The check stays on the device (no host sync per step); it is read at each logging interval and
    before every checkpoint save, so the last checkpoint on disk is always one of finite weights.
    """

    def __init__(self) -> None:
        self._first_bad_step: torch.Tensor | None = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        step = torch.full_like(self._first_bad_step, trainer.global_step)
        bad = ~torch.isfinite(loss.detach()) & (self._first_bad_step < 0)
        self._first_bad_step = torch.where(bad, step, self._first_bad_step)
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            self._raise_if_bad(trainer)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._raise_if_bad(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._raise_if_bad(trainer)

    def _raise_if_bad(self, trainer: Trainer) -> None:
        if self._first_bad_step is None or int(self._first_bad_step) < 0:
            return
        last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        raise HFTrainError(
            f"The training loss became NaN or infinite at step {int(self._first_bad_step)}, so training stopped. "
            f"Usual causes: a learning rate too high (model.learning_rate), or fp16 overflow (try "
            f"trainer.precision bf16-mixed or 32-true). "
            + (
                f"The last good checkpoint is {last}: fix the setting and resume with --ckpt_path last."
                if last
                else "No checkpoint had been written yet."
            )
        )


class ExportHFModel(pl_callbacks.Callback):
    """At the end of `fit`, write the best checkpoint's weights as a `save_pretrained` folder `hf_model/`.

    The folder holds the model with its `id2label`, and the tokenizer, so
    `AutoModelFor….from_pretrained` and `transformers.pipeline` load it directly. Without a best
    checkpoint (no validation), the final weights are written. A sharded best checkpoint (a folder, as FSDP
    with `state_dict_type: sharded` writes) is gathered into full weights first.
    """

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank asks, once, before rank 0 goes on alone
        if log_dir is None or not trainer.is_global_zero or not isinstance(pl_module, TaskModule):
            return
        state_dict = best_weights(trainer)
        datamodule = trainer.datamodule
        tokenizer = getattr(datamodule, "tokenizer", None) if datamodule is not None else None
        folder = pl_module.export(Path(log_dir) / EXPORT_DIR, tokenizer, state_dict)
        rank_zero_info(f"Exported {'the best' if state_dict else 'the final'} model to {folder}")


def best_weights(trainer: Trainer) -> dict[str, torch.Tensor] | None:
    """The module weights of the trainer's best checkpoint (a file, or a sharded folder), None without one."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best and Path(best).is_file():
        return torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    if best and Path(best).is_dir():
        return load_sharded_weights(Path(best))
    return None


def load_sharded_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The module weights of a sharded checkpoint folder (Lightning's FSDP format: shards written by
    torch.distributed.checkpoint, weights under `model`), gathered by torch into one state dict here."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save  # torch >= 2.3, FSDP runs only

    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        dcp_to_torch_save(folder, Path(tmp) / "full.pt")
        return torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=False)["model"]


class ResultsWriter(pl_callbacks.Callback):
    """Keep `results.json` in the run folder: best and final validation metrics of `fit`, and the metrics of
    every `validate` / `test` run, merged into what the file already holds.
    """

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = _numbers(trainer.callback_metrics, "val/")
        if trainer.state.fn == "validate":
            self._merge(trainer, {"validate": metrics})
        elif metrics:
            self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics})

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        monitor, mode = task_monitor(pl_module, "results.json's best")
        scored = [h for h in self.history if monitor in h]
        best = (min if mode == "min" else max)(scored, key=lambda h: h[monitor]) if scored else None
        checkpoint = trainer.checkpoint_callback
        self._merge(
            trainer,
            {
                "monitor": monitor,
                "best": best,
                "final": self.history[-1] if self.history else None,
                "best_checkpoint": checkpoint.best_model_path if checkpoint else None,
                "last_checkpoint": checkpoint.last_model_path if checkpoint else None,
                "global_step": trainer.global_step,
                "history": self.history,
            },
        )

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._merge(trainer, {"test": _numbers(trainer.callback_metrics, "test/")})

    def _merge(self, trainer: Trainer, update: dict[str, Any]) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank asks, once, before rank 0 goes on alone
        if log_dir is not None and trainer.is_global_zero:
            update_results(log_dir, update)


class PredictionWriter(pl_callbacks.BasePredictionWriter):
    """Write what `predict_step` returns (one dict per example) as JSONL in the run folder.

    Args:
        output_file: Where to write; defaults to `predictions.jsonl` in the run folder (or
            `predictions-N.jsonl`, never overwriting an earlier file). Under DDP each rank writes its own
            `….rank<N>.jsonl`.
    """

    def __init__(self, output_file: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_file = output_file
        self._handle = None

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.output_file:
            path = Path(self.output_file)
        else:
            path = free_path(trainer.log_dir or ".", "predictions", ".jsonl")
        if trainer.world_size > 1:
            path = path.with_suffix(f".rank{trainer.global_rank}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle = path.open("w")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        for row in prediction:
            self._handle.write(json.dumps(row) + "\n")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._handle.close()
        rank_zero_info(f"Predictions written to {self.path}")
