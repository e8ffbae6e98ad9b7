"""The progress display of every hftrain run: one line per epoch that updates in place in a terminal and in
Jupyter, and a line every `log_every_seconds` when the output goes to a file.

Lightning's own bars fail one of the three. `RichProgressBar` (its default when rich is installed) redirects
stderr into a live display: in a Jupyter kernel anything written to stderr meanwhile (the export's tqdm bar)
loops through ipykernel's flush into a RecursionError, and without ipywidgets it shows only a warning.
`TQDMProgressBar` in a notebook without ipywidgets saves every refresh as a new line with escape codes, and
in a log file its carriage-return updates pile up into one unreadable line that is written out at the end.
This one draws plain text: `\\r`-rewritten in a terminal, a display that is updated in place in a notebook
(`IPython.display`, which every Jupyter front end supports without widgets), whole lines in a file.
"""

import math
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.trainer.states import TrainerFn

from hftrain.core.length_split import batch_size
from hftrain.core.monitor import monitored_metric


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (terminal IPython has no `kernel`)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def duration(seconds: float) -> str:
    """`1:02:03` or `2:03`."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class LineOutput:
    """Where the progress line goes: rewritten in place (`live`) or written whole every `log_every` seconds."""

    def __init__(self, log_every: float) -> None:
        self.notebook = in_notebook()
        self.live = self.notebook or sys.stdout.isatty()
        self.log_every = log_every
        self.handle = None
        self.width = 0
        self.last_write = -math.inf
        self.last_text = ""

    def due(self, final: bool = False, now: float | None = None) -> bool:
        """Whether `show` would write now (a file gets a line only every `log_every` seconds)."""
        now = time.monotonic() if now is None else now
        return self.live or final or now - self.last_write >= self.log_every

    def show(self, text: str, final: bool = False) -> None:
        """Show the current state; `final` ends the line, so the next `show` starts a new one."""
        now = time.monotonic()
        if self.notebook:
            from IPython.display import display

            if self.handle is None:
                self.handle = display({"text/plain": text}, raw=True, display_id=True)
            else:
                self.handle.update({"text/plain": text}, raw=True)
            if final:
                self.handle = None
        elif self.live:
            if not final:  # a line longer than the terminal wraps, and `\r` then rewrites only its last row
                columns = shutil.get_terminal_size().columns - 1
                text = text if len(text) <= columns else text[: columns - 1] + "…"
            sys.stdout.write("\r" + text.ljust(self.width) + ("\n" if final else ""))
            sys.stdout.flush()
            self.width = 0 if final else len(text)
        elif self.due(final, now) and text != self.last_text:  # a log file does not get the same line twice
            print(text, flush=True)
            self.last_write, self.last_text = now, text

    def break_line(self) -> None:
        """End a half-drawn terminal line, so that other output starts on a line of its own."""
        if self.live and not self.notebook and self.width:
            sys.stdout.write("\n")
            self.width = 0
        self.handle = None


class TrainingProgress(ProgressBar):
    """Progress of fit, validate, test and predict as one line of plain text: epoch, step, loss, learning rate,
    samples per second, elapsed time and time left, and the last validation metrics.

    In a terminal and in Jupyter the line is updated in place (at most every `refresh_seconds`) and kept at
    the end of each epoch; when the output goes to a file, a line is written every `log_every_seconds` and at
    the end of each epoch.

    Args:
        refresh_seconds: Shortest time between two updates of the line in a terminal or notebook.
        log_every_seconds: Time between two progress lines when the output is a file (e.g. a SLURM log).
    """

    def __init__(self, refresh_seconds: float = 0.5, log_every_seconds: float = 30.0) -> None:
        super().__init__()
        self.refresh_seconds = refresh_seconds
        self.log_every_seconds = log_every_seconds
        self._enabled = True
        self._output: LineOutput | None = None
        self._last_refresh = -math.inf
        self._line_open = False
        self._evaluating = ""

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._output is not None:
            self._output.break_line()
        print(*args, **kwargs)

    # ------------------------------------------------------------------ what the line says

    def _train_text(self, trainer: Trainer, pl_module: LightningModule) -> str:
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        steps = f"/{self._total_steps}" if math.isfinite(self._total_steps) else ""
        parts = [f"epoch {trainer.current_epoch + 1}{epochs}", f"step {trainer.global_step}{steps}"]
        loss = trainer.callback_metrics.get("train/loss")  # as of the last logging step (not on the bar: no sync)
        if loss is not None:
            parts.append(f"loss {float(loss):.4g}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        train_seconds = time.monotonic() - self._start - self._eval_seconds
        done = trainer.global_step - self._start_step
        if done > 0 and train_seconds > 0:
            parts.append(f"{self._samples / train_seconds:.1f} samples/s")
            left = self._total_steps - trainer.global_step
            eta = f" ETA {duration(left * train_seconds / done)}" if math.isfinite(left) else ""
            parts.append(f"{duration(time.monotonic() - self._start)}{eta}")
        if self._evaluating:  # ahead of the metrics: a terminal line cut to its width keeps it
            parts.append(self._evaluating)
        parts += [f"{k} {v:.4g}" for k, v in self._validation_metrics(trainer, pl_module).items()]
        return " · ".join(parts)

    def _validation_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """The last validation's metrics on the line: the monitored one (`monitored_metric`, the one the best
        checkpoint and `results.json` go by) first, also when it is not a progress-bar metric (a custom
        `checkpoint.monitor`), then the task's progress-bar metrics."""
        shown = {
            k: float(v)
            for k, v in self.get_metrics(trainer, pl_module).items()
            if k != "v_num" and isinstance(v, int | float)
        }
        monitor, _ = monitored_metric(trainer, pl_module) or (None, None)
        if monitor in trainer.callback_metrics:
            shown = {monitor: float(trainer.callback_metrics[monitor]), **shown}
        return shown

    def _show(self, text: Callable[[], str], final: bool = False) -> None:
        """Show `text()` if it is time to. The text is made only then: reading the loss as a number waits for
        the device, which should not happen every step."""
        if not self._enabled:
            return
        if self._output is None:  # decided per run: the same process may move between terminal and file
            self._output = LineOutput(self.log_every_seconds)
        now = time.monotonic()
        if (final or now - self._last_refresh >= self.refresh_seconds) and self._output.due(final):
            self._output.show(text(), final)
            self._last_refresh = now
            self._line_open = not final

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._output = None

    # ------------------------------------------------------------------ training

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._start_step = time.monotonic(), trainer.global_step
        self._samples, self._eval_seconds = 0, 0.0
        self._total_steps = trainer.estimated_stepping_batches

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        self._samples += batch_size(batch)
        self._show(lambda: self._train_text(trainer, pl_module))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._show(lambda: self._train_text(trainer, pl_module), final=True)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._line_open:  # stopped inside an epoch (max_steps, early stopping)
            self._show(lambda: self._train_text(trainer, pl_module), final=True)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self._output is not None:
            self._output.break_line()

    # ------------------------------------------------------------------ validation, test, predict

    @staticmethod
    def _fitting(trainer: Trainer) -> bool:
        """Whether an evaluation is part of a fit (its progress then goes on the training line)."""
        return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking

    def _eval_start(self, what: str) -> None:
        self._eval_began = time.monotonic()
        self._eval_what = what
        self._evaluating = what

    def _eval_text(self) -> str:
        return f"{self._evaluating} · {duration(time.monotonic() - self._eval_began)}"

    def _eval_batch(self, trainer: Trainer, pl_module: LightningModule, batch_idx: int, total: float) -> None:
        self._evaluating = f"{self._eval_what} {batch_idx + 1}" + (f"/{total}" if math.isfinite(total) else "")
        if self._fitting(trainer):
            self._show(lambda: self._train_text(trainer, pl_module))
        else:
            self._show(self._eval_text)

    def _eval_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._fitting(trainer):
            self._eval_seconds += time.monotonic() - self._eval_began
            self._evaluating = ""
            self._show(lambda: self._train_text(trainer, pl_module))
        else:
            self._show(self._eval_text, final=True)
            self._evaluating = ""

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_start("sanity check" if trainer.sanity_checking else "validating")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.has_dataloader_changed(dataloader_idx)
        self._eval_batch(trainer, pl_module, batch_idx, self.total_val_batches_current_dataloader)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:  # its line is overwritten by the first training step's
            self._evaluating = ""
        else:
            self._eval_end(trainer, pl_module)
        self.reset_dataloader_idx_tracker()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_start("testing")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.has_dataloader_changed(dataloader_idx)
        self._eval_batch(trainer, pl_module, batch_idx, self.total_test_batches_current_dataloader)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_end(trainer, pl_module)
        self.reset_dataloader_idx_tracker()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_start("predicting")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.has_dataloader_changed(dataloader_idx)
        self._eval_batch(trainer, pl_module, batch_idx, self.total_predict_batches_current_dataloader)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_end(trainer, pl_module)
        self.reset_dataloader_idx_tracker()
