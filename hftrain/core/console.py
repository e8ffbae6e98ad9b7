"""What a run prints: the lines a user acts on, and third-party notices filtered by their exact text.

By default a run starts with four lines of its own (`RunHeader`: where the run goes, the data, the model,
the device and precision), once per run however many of `Run`'s calls use its trainer, and then the progress
bar. Notices that other libraries print on every run and that no hftrain user can act on are dropped from
`import hftrain` on (`notices.py`, each matched by its full text so that a changed or new message still
shows), and so are the library bars below; `--verbose` (`configure(verbose=True)`) lets every one of them
through again, and turns Lightning's model summary back on. Multi-process runs keep Lightning's line per
process and its start banner: on a cluster they show which nodes joined. Warnings hftrain itself caused are
fixed where they arise, not filtered (the `log_every_n_steps` one by `training_log.TrainingLog`, which sizes the
interval to the run).
"""

import contextlib
import logging
from collections.abc import Iterator

import datasets
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from transformers.utils import logging as transformers_logging

from hftrain.core import notices
from hftrain.core.runs import run_folder

# transformers progress bars RunHeader and ExportHFModel report in a line of their own
QUIET_BARS = ("Loading weights", "Writing model shards")


def _quiet_bars(factory, args, kwargs):
    if kwargs.get("desc") in QUIET_BARS:
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def _hide_bars(verbose: bool) -> None:
    previous = transformers_logging.set_tqdm_hook(None if verbose else _quiet_bars)
    if previous not in (None, _quiet_bars):  # someone else's hook: leave it in place
        transformers_logging.set_tqdm_hook(previous)


def configure(verbose: bool = False) -> None:
    """Drop the notices of `notices.py` and the bars above (`verbose` False), or let everything through again
    (True)."""
    notices.drop_notices(verbose)
    _hide_bars(verbose)


_hide_bars(notices.is_verbose())  # as `import hftrain` set it (quiet) or a verbose run changed it


def is_verbose() -> bool:
    return notices.is_verbose()


@contextlib.contextmanager
def datasets_read_errors_hidden() -> Iterator[None]:
    """Drop the line `datasets`' file builders log as a read fails (`Failed to read file '…' with error …`),
    unless verbose: the reader raises right after, and hftrain reports that error in its own message, with
    the fix, so the line only repeated it ahead of the message."""
    builders = logging.getLogger("datasets.packaged_modules")
    level = builders.level
    if not is_verbose():
        builders.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        builders.setLevel(level)


@contextlib.contextmanager
def datasets_bars_hidden() -> Iterator[None]:
    """Hide `datasets`' progress bars for a step that takes a second on local files (reading a csv, saving the
    tokenized cache), unless verbose; the tokenization bars, which can run for minutes, stay."""
    hide = not is_verbose() and not datasets.are_progress_bars_disabled()
    if hide:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if hide:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def library_progress_bars_off() -> Iterator[None]:
    """Turn the tqdm bars of transformers and datasets off for a while: a few inputs to predict on, or the
    export's "Writing model shards", would each leave a bar among the run's own output."""
    enabled = (transformers_logging.is_progress_bar_enabled(), not datasets.are_progress_bars_disabled())
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled[0]:
            transformers_logging.enable_progress_bar()
        if enabled[1]:
            datasets.enable_progress_bars()


def _count(n: int) -> str:
    return f"{n / 1e9:.1f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"


def _listing(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


SPLITS_USED = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",), "predict": ("predict",)}


class RunHeader(Callback):
    """Print where the run goes, its data, model, device and precision as a run starts (rank 0), once per run
    folder: a `Run`'s `validate`, `test` or second `fit` on the same trainer adds nothing new (and its model
    line would call a trained head "newly initialized")."""

    def __init__(self) -> None:
        self.shown_for: str | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        log_dir = run_folder(trainer)  # every rank asks
        if not trainer.is_global_zero or log_dir == self.shown_for:
            return
        self.shown_for = log_dir
        tensorboard = any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers)
        lines = [f"Run folder: {log_dir}" + (f"   (tensorboard --logdir {log_dir})" if tensorboard else "")]
        data = self.data_line(trainer.datamodule, stage)
        if data:
            lines.append(data)
        lines.append(self.model_line(pl_module, with_load_report=stage == "fit"))
        lines.append(self.device_line(trainer))
        rank_zero_info("\n".join(lines))

    @staticmethod
    def data_line(datamodule, stage: str) -> str | None:
        raw = getattr(datamodule, "raw", None)
        if raw is None:
            return None
        used = SPLITS_USED.get(stage, ())
        streamed = getattr(datamodule, "streaming", False)  # the train split holds only the stream's first rows
        sizes = [
            f"{len(dataset):,} {split}"
            for split, dataset in raw.items()
            if split.split("/")[0] in used and not (streamed and split == "train")
        ]
        parts = [f"{', '.join(sizes)} rows"] if sizes else []
        if streamed and "train" in used:
            parts.append(f"train streamed from {len(datamodule.shards)} shard(s)")
        labels = getattr(datamodule, "label_names", None)
        described = f"; {len(labels)} labels: {_listing(labels, 6)}" if labels else ""
        return f"Data: {', '.join(parts)}{described}" if parts else None

    @staticmethod
    def model_line(pl_module: LightningModule, with_load_report: bool) -> str:
        model = getattr(pl_module, "model", pl_module)
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        size = f"{_count(total)} parameters" + (f" ({_count(trainable)} trained)" if trainable < total else "")
        line = f"Model: {type(model).__name__} from {getattr(pl_module, 'model_name_or_path', '?')}, {size}"
        report = getattr(pl_module, "load_report", None) if with_load_report else None
        if report:
            new = report["missing_keys"] + report["mismatched_keys"]
            if new:
                line += f"; newly initialized: {_listing(new)}"
            if report["unexpected_keys"]:
                line += f"; unused from the checkpoint: {_listing(report['unexpected_keys'])}"
        return line

    @staticmethod
    def device_line(trainer: Trainer) -> str:
        device = trainer.strategy.root_device
        name = device.type if device.type == "cpu" else str(device)
        if device.type == "cuda":
            import torch

            name += f" ({torch.cuda.get_device_name(device)})"
        processes = f"{trainer.world_size} process" + ("es" if trainer.world_size > 1 else "")
        return f"Device: {name}, precision {trainer.precision}, {processes}"
