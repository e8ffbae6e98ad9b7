"""Which validation metric a fit is judged by, decided in one place.

The best checkpoint (and so `hf_model/`), early stopping, the training log's `val/best_<metric>` (TensorBoard's
HPARAMS view), `results.json`'s `best`, the progress line and a search's objective must all mean the same
metric. When each worked it out for itself they drifted apart in the corner cases: with several validation
sets the training log looked for `val/accuracy` while the logged names were `val/<set>/accuracy`, and a
custom `checkpoint.monitor` chose the checkpoint but not the best score shown. So every one of them asks
`monitored_metric`.
"""

from typing import Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from hftrain.core.errors import HFTrainError
from hftrain.core.module import TaskModule

Mode = Literal["min", "max"]


def monitored_metric(trainer: Trainer, module: LightningModule) -> tuple[str, Mode] | None:
    """The metric a fit is judged by and whether higher is better: the checkpoint callback's `monitor` and
    `mode` when set (`checkpoint.monitor`, e.g. a custom metric), else the task's main metric on its first
    validation set (`val/accuracy`, or `val/<first set>/accuracy`). None when neither names one: a plain
    `LightningModule` under a checkpoint callback without a monitor.

    A function of the trainer and module rather than of a callback, so that code outside the callbacks (a
    search's objective) gets the same answer.
    """
    checkpoint = trainer.checkpoint_callback
    if isinstance(checkpoint, ModelCheckpoint) and checkpoint.monitor:
        return checkpoint.monitor, checkpoint.mode
    if not isinstance(module, TaskModule):
        return None
    monitor = module.monitor
    if module.validation_sets and monitor.startswith("val/"):
        monitor = f"{module.val_stages[0]}/{monitor.removeprefix('val/')}"
    return monitor, module.monitor_mode


def required_monitored_metric(trainer: Trainer, module: LightningModule, needed_for: str) -> tuple[str, Mode]:
    """`monitored_metric`, for what cannot do without one (`needed_for`, named in the error)."""
    monitored = monitored_metric(trainer, module)
    if monitored is None:
        raise HFTrainError(
            f"{type(module).__name__} is not an hftrain task module, so it names no metric for {needed_for}. "
            "Set the monitor (and mode) explicitly, or train a TaskModule subclass."
        )
    return monitored
