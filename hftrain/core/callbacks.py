"""Callbacks Lightning lacks: checkpoints and early stopping on the task's metric, the `hf_model/` export,
`results.json`, predictions.

Every run folder (`runs/<name>/version_N/`, see `runs.py`) ends up holding what these write: the exported
model, a results file in the spirit of the HF Trainer's `all_results.json`, and prediction JSONL files.
None of them overwrites an earlier file the user may still need. What they need of the module is the
`TaskModule` contract (`monitor`, `monitor_mode`, `export`); which metric ranks validations is
`monitor.monitored_metric`'s answer.
"""

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch import callbacks as pl_callbacks
from lightning.pytorch.utilities import rank_zero_info

from hftrain.core import internals
from hftrain.core.data import TaskDataModule
from hftrain.core.errors import HFTrainError
from hftrain.core.model_card import framework_versions, model_card, with_test_results
from hftrain.core.module import TaskModule
from hftrain.core.monitor import monitored_metric, required_monitored_metric
from hftrain.core.runs import EXPORT_DIR, LAST_CHECKPOINT, free_path, read_results, run_folder, update_results
from hftrain.core.writes import replacing, write_text


def _numbers(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if k.startswith(prefix)}


def ranking_key(monitor: str, mode: str):
    """How validations rank (smallest first): by the monitored metric, a tie going to the lower `val/loss`, then
    to the earlier validation. `results.json`'s best and the best checkpoint (`hf_model/`) rank alike."""

    def key(metrics: dict[str, float]) -> tuple[float, float]:
        value = float(metrics[monitor])
        return (-value if mode == "max" else value, float(metrics.get("val/loss", math.inf)))

    return key


class TaskCheckpoint(pl_callbacks.ModelCheckpoint):
    """Lightning's `ModelCheckpoint` with the differences a fine-tuning run needs.

    - `monitor` defaults to the task's main validation metric (`val/accuracy`, `val/f1`, …, on the first of
      several validation sets) and mode.
    - Only a state that was just validated can become the best: top-k checkpoints are ranked at the end of
      each validation. A checkpoint written every `every_n_train_steps` only refreshes `last.ckpt`, the
      resume point (Lightning would rank it on the previous validation's metrics, and with
      `every_n_train_steps` set it would rank no validation at all).
    - A tie on the monitored metric goes to the lower `val/loss` (`ranking_key`).
    - `last.ckpt` always holds the latest state (Lightning 2.6 refreshes it only with a top-k save): a
      symbolic link to the checkpoint saved for that very state when there is one (no second copy of a best
      checkpoint on disk), else a full file. Requeue checkpoints (`hpc_ckpt_N.ckpt`) it supersedes are removed.
    """

    def _ModelCheckpoint__validate_init_configuration(self) -> None:  # noqa: N802 - Lightning's name for it
        internals.check_checkpoint_settings(self, pl_callbacks.ModelCheckpoint)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not hasattr(self, "validated"):
            self.validated: dict[str, dict[str, float]] = {}  # top-k checkpoint path -> its step and val/loss
            self._last_step = -1
        if self.monitor is None:
            self.monitor, self.mode = required_monitored_metric(trainer, pl_module, "checkpoint.monitor")
            self.kth_value = torch.tensor(math.inf if self.mode == "min" else -math.inf)
        self._run_folder = Path(run_folder(trainer))  # every rank asks
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero:
            # a fit's run folder has checkpoints/ from its start, so `--ckpt_path last` finds an interrupted
            # run even before its first save (and names it, rather than taking an older run)
            Path(self.dirpath).mkdir(parents=True, exist_ok=True)

    def _ModelCheckpoint__warn_if_dir_not_empty(self, dirpath) -> None:  # noqa: N802 - Lightning's name for it
        """Lightning's notice that the checkpoint folder already holds files, except in the run folder's own
        `checkpoints/`: every new fit gets a new run folder, so the files there are this run's, from before the
        resume or requeue that continues it."""
        if Path(dirpath).parent.resolve() != self._run_folder.resolve():
            internals.warn_if_dir_not_empty(self, pl_callbacks.ModelCheckpoint, dirpath)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        n = internals.every_n_train_steps(self)
        if n >= 1 and trainer.global_step % n == 0:
            self.refresh_last(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or trainer.fast_dev_run:
            return
        n = self.every_n_epochs  # 0 with every_n_train_steps: then every validation is ranked
        if n >= 1 and (trainer.current_epoch + 1) % n:
            self.refresh_last(trainer)
            return
        before = set(self.best_k_models)
        internals.save_topk_checkpoint(self, trainer)
        loss = float(trainer.callback_metrics.get("val/loss", math.inf))
        for path in set(self.best_k_models) - before:
            self.validated[path] = {"step": trainer.global_step, "val/loss": loss}
        if self.best_k_models:  # best and k-th (the next to go) by the same ranking as results.json
            key = ranking_key("score", self.mode)
            ranked = sorted(self.best_k_models, key=lambda p: key(self._metrics_of(p)))
            self.best_model_path, self.kth_best_model_path = ranked[0], ranked[-1]
            self.best_model_score = self.best_k_models[self.best_model_path]
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        self.refresh_last(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.refresh_last(trainer)  # the validation at this epoch's end (if any) ranked and saved already

    def refresh_last(self, trainer: Trainer) -> None:
        """Make `last.ckpt` the current state, once per step."""
        if (
            not self.save_last
            or trainer.sanity_checking
            or trainer.fast_dev_run
            or self._last_step == trainer.global_step
        ):
            return
        last = Path(self.dirpath) / LAST_CHECKPOINT
        self.last_model_path = str(last)  # part of the state being saved
        same_state = internals.checkpoint_saved_at(self, trainer.global_step)
        if same_state and Path(same_state) != last:
            if trainer.is_global_zero:
                with replacing(last, needed=lambda: 0) as partial:
                    partial.symlink_to(os.path.relpath(same_state, last.parent))
            trainer.strategy.barrier()
        else:
            trainer.save_checkpoint(last, weights_only=self.save_weights_only)
        self._last_step = trainer.global_step
        run = Path(self.dirpath).parent
        if trainer.is_global_zero and Path(trainer.default_root_dir).resolve() == run.resolve():
            for requeue_checkpoint in run.glob("hpc_ckpt_*.ckpt"):
                requeue_checkpoint.unlink()

    def check_monitor_top_k(self, trainer: Trainer, current: torch.Tensor | None = None) -> bool:
        """Lightning's rule, plus: a tie with the k-th best enters when its `val/loss` is lower."""
        if super().check_monitor_top_k(trainer, current):
            return True
        kth = self.best_k_models.get(self.kth_best_model_path)
        loss = trainer.callback_metrics.get("val/loss")
        return bool(
            current is not None
            and kth is not None
            and loss is not None
            and current == kth
            and float(loss) < self.validated.get(self.kth_best_model_path, {}).get("val/loss", math.inf)
        )

    def _metrics_of(self, path: str) -> dict[str, float]:
        return {"score": float(self.best_k_models[path]), **self.validated.get(path, {})}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "validated": self.validated}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.validated = dict(state_dict.get("validated", {}))


class TaskEarlyStopping(pl_callbacks.EarlyStopping):
    """Lightning's `EarlyStopping` whose `monitor` and `mode` default to the metric the best checkpoint is
    chosen by (`checkpoint.monitor`, else the task's main validation metric; Lightning's own needs `monitor`
    named).

    Args:
        monitor: Metric to watch; defaults to the one the best checkpoint is chosen by.
        mode: `min` or `max`; defaults to that metric's.
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
            self.monitor, monitored_mode = required_monitored_metric(
                trainer, pl_module, "the early stopping callback's monitor"
            )
        if follow_mode:
            self.mode = monitored_mode if follow_monitor else self.mode
            self.min_delta = abs(self.min_delta) * (1 if self.monitor_op == torch.gt else -1)
            self.best_score = torch.tensor(math.inf if self.monitor_op == torch.lt else -math.inf)
        super().setup(trainer, pl_module, stage)


class StopOnNonFiniteLoss(pl_callbacks.Callback):
    """Stop training with a clear error when the loss becomes NaN or infinite, before a checkpoint of the
    broken weights is written.

    Each step only keeps its loss (a device tensor: no host sync); the losses kept are checked together at
    each logging step and before every checkpoint save, so the last checkpoint on disk is always one of
    finite weights and the error names the first bad step.
    """

    def __init__(self) -> None:
        self._losses: list[tuple[int, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._losses.append((trainer.global_step, loss.detach()))
        if internals.logs_this_step(trainer):
            self._raise_if_bad(trainer)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._raise_if_bad(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._raise_if_bad(trainer)

    def _raise_if_bad(self, trainer: Trainer) -> None:
        if not self._losses:
            return
        steps, losses = zip(*self._losses, strict=True)
        self._losses = []
        finite = torch.isfinite(torch.stack(losses)).tolist()
        if all(finite):
            return
        last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        raise HFTrainError(
            f"The training loss became NaN or infinite at step {steps[finite.index(False)]}, so training stopped. "
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
        log_dir = run_folder(trainer)  # every rank asks, once, before rank 0 goes on alone
        if not trainer.is_global_zero or not isinstance(pl_module, TaskModule):
            return
        state_dict = best_weights(trainer)
        datamodule = trainer.datamodule
        tokenizer = getattr(datamodule, "tokenizer", None) if datamodule is not None else None
        folder = pl_module.export(Path(log_dir) / EXPORT_DIR, tokenizer, state_dict)
        rank_zero_info(f"Exported {'the best' if state_dict else 'the final'} model to {folder}")


class WriteModelCard(pl_callbacks.Callback):
    """At the end of `fit`, once `hf_model/` and `results.json` are written, add the model card
    `hf_model/README.md` (task, base model, data, best and final metrics, hyperparameters, versions), as the HF
    Trainer does; `huggingface_hub.ModelCard` reads it and the Hub shows it once the folder is uploaded."""

    # data settings that say where data lives or how it is served, not how the model was trained
    SKIPPED = ("tokenizer_", "trust_remote_code", "cache_dir", "num_workers", "overwrite_cache", "reader_options")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A test of the exported weights (`hftrain test --ckpt_path best`: the checkpoint `hf_model/` holds)
        adds its metrics to the card; a test of other weights does not describe the card's model."""
        log_dir = run_folder(trainer)  # every rank asks, once
        card = Path(log_dir) / EXPORT_DIR / "README.md"
        if not trainer.is_global_zero or not card.is_file():
            return
        results = read_results(log_dir)
        exported = results.get("best_checkpoint") or results.get("last_checkpoint")
        tested = trainer.ckpt_path
        if tested and exported and Path(tested).resolve() == Path(exported).resolve():
            where = "the weights of this folder"
            text = with_test_results(
                card.read_text(encoding="utf-8"), where, _numbers(trainer.callback_metrics, "test/")
            )
            write_text(card, text)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = run_folder(trainer)  # every rank asks, once
        if not trainer.is_global_zero or not isinstance(pl_module, TaskModule):
            return
        folder = Path(log_dir) / EXPORT_DIR
        datamodule = trainer.datamodule
        if not folder.is_dir() or not isinstance(datamodule, TaskDataModule):
            return
        text = model_card(
            name=Path(log_dir).parent.name,
            pipeline_tag=pl_module.pipeline_tag,
            base_model=pl_module.model_name_or_path,
            data={
                split: f"{datamodule.source(split)} ({self.rows_used(trainer, datamodule, split, len(rows))})"
                for split, rows in datamodule.raw.items()
                if split != "predict"
            },
            hub_dataset=datamodule.dataset_name,
            hyperparameters=self.hyperparameters(trainer, pl_module, datamodule),
            results=read_results(log_dir),
            versions=framework_versions(),
        )
        write_text(folder / "README.md", text)

    @staticmethod
    def rows_used(trainer: Trainer, datamodule: TaskDataModule, split: str, rows: int) -> str:
        """A split's size, and for the training data cut by `trainer.limit_train_batches` how many of its rows
        an epoch trained on (at most: the batches it took, full)."""
        batches = trainer.num_training_batches if split == "train" else math.inf
        used = batches * datamodule.batch_size * trainer.world_size
        if used >= rows:
            return f"{rows} rows"
        return f"{rows} rows, of which at most {used} trained per epoch: trainer.limit_train_batches"

    def hyperparameters(self, trainer: Trainer, module: TaskModule, data: TaskDataModule) -> dict[str, Any]:
        def shown(values: dict[str, Any], prefix: str) -> dict[str, Any]:
            return {
                f"{prefix}.{key}": value if isinstance(value, int | float | str | bool) else json.dumps(value)
                for key, value in values.items()
                if value is not None and not key.startswith("_")
            }

        replaced = module.replaced_optimizer()  # its settings are the card's, not AdamW's, which did not run
        unused = {"model_name_or_path", "label_names", *(module.optimizer_settings if replaced else ())}
        hparams = {k: v for k, v in module.hparams.items() if k not in unused}
        settings = {
            k: v
            for k, v in data.settings().items()
            if not k.endswith(("_file", "_name", "_names")) and not k.startswith(self.SKIPPED)
        }
        run = {
            "max_epochs": trainer.max_epochs,
            "max_steps": trainer.max_steps,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
            "precision": trainer.precision,
            "world_size": trainer.world_size,
            "seed": internals.global_seed(),
        }
        optimizer = {k: "none" if v is None else v for k, v in (replaced or {}).items()}
        return {**shown(hparams, "model"), **optimizer, **shown(settings, "data"), **shown(run, "trainer")}


def best_weights(trainer: Trainer) -> dict[str, torch.Tensor] | None:
    """The module weights of the trainer's best checkpoint (a file, or a sharded folder), None without one."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best and Path(best).is_file():
        # mapped, not read: the optimizer state in the file (twice the weights, with AdamW) stays on disk
        return torch.load(best, map_location="cpu", weights_only=False, mmap=True)["state_dict"]
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
        checkpoint = trainer.checkpoint_callback
        monitor, mode = monitored_metric(trainer, pl_module) or (None, "min")  # the metric that chose hf_model/
        best_step = getattr(checkpoint, "validated", {}).get(getattr(checkpoint, "best_model_path", ""), {}).get("step")
        scored = [h for h in self.history if monitor in h]
        best = next((h for h in scored if h["step"] == best_step), None)
        if best is None and scored:
            best = min(scored, key=ranking_key(monitor, mode))
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
        log_dir = run_folder(trainer)  # every rank asks, once, before rank 0 goes on alone
        if trainer.is_global_zero:
            update_results(log_dir, update)


class PredictionWriter(pl_callbacks.BasePredictionWriter):
    """Write what `predict_step` returns (one dict per example) as JSONL in the run folder, in input order
    (batches are formed longest first; the rows are put back in the order of the predict file).

    Args:
        output_file: Where to write; defaults to `predictions.jsonl` in the run folder (or
            `predictions-N.jsonl`, never overwriting an earlier file). Under DDP each rank writes its own
            `….rank<N>.jsonl`.
    """

    def __init__(self, output_file: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_file = output_file
        self._rows: dict[int, dict] = {}
        self.predictions: list[dict] = []  # the last predict's rows, in input order (what `Run.predict` returns)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.output_file:
            path = Path(self.output_file)
        else:
            path = free_path(run_folder(trainer), "predictions", ".jsonl")
        if trainer.world_size > 1:
            path = path.with_suffix(f".rank{trainer.global_rank}.jsonl")
        self.path = path
        self._rows = {}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        for index, row in zip(batch_indices, prediction, strict=True):
            self._rows[index] = row

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.predictions = [self._rows[i] for i in sorted(self._rows)]
        self._rows = {}
        write_text(self.path, "".join(json.dumps(row) + "\n" for row in self.predictions))
        rank_zero_info(f"Predictions written to {self.path}")
