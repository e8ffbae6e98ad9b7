"""What a run prints: the lines a user acts on, and third-party notices filtered by their exact text.

By default a run starts with four lines of its own (`RunHeader`: where the run goes, the data, the model,
the device and precision) and then the progress bar. Notices that other libraries print on every run and
that no hftrain user can act on are dropped, each matched by its full text so that a changed or new
message still shows; `--verbose` (`configure(verbose=True)`) lets every one of them through again, and
turns Lightning's model summary back on. Multi-process runs keep Lightning's line per process and its start
banner: on a cluster they show which nodes joined. Warnings hftrain itself caused are fixed where they arise, not
filtered (the `log_every_n_steps` one by `training_log.TrainingLog`, which sizes the interval to the run).
"""

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator

import datasets
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from transformers.utils import logging as transformers_logging

from hftrain.core.runs import run_folder

# logger name -> full texts of the messages dropped from it (regular expressions matched against all of it)
QUIET_LOGS: dict[str, tuple[str, ...]] = {
    "lightning.fabric.utilities.seed": (r"(\[rank: \d+\] )?Seed set to \d+",),
    "lightning.pytorch.utilities.rank_zero": (
        r"GPU available: (True|False)( \(\w+\))?, used: (True|False)",  # RunHeader names the device
        r"TPU available: (True|False), using: \d+ TPU cores",
        r"💡 Tip: For seamless cloud logging and experiment tracking, try installing "
        r"\[litlogger\]\(https://pypi\.org/project/litlogger/\) to enable LitLogger, which logs metrics and "
        r"artifacts automatically to the Lightning Experiments platform\.",
        r"Loading `train_dataloader` to estimate number of stepping batches\.",
        r"`Trainer\.fit` stopped: `max_(epochs|steps)=\d+` reached\.",  # the run's normal end
    ),
    "lightning.pytorch.accelerators.cuda": (r"LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES: \[[\d,]*\]",),
    # RunHeader lists the newly initialized and unused weights instead of this 10-line table
    "transformers.modeling_utils": (r"\x1b\[1m\w+ LOAD REPORT\x1b\[0m from: .*",),
}

# (full text, category) of warnings dropped
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Lightning sees `srun` on the PATH of a Slurm login node; hftrain's Slurm scripts do use srun
    (
        r"The `srun` command is available on your system but is not used\. HINT: If your intention is to run "
        r"Lightning on SLURM, prepend your python command with `srun` like so: .* \.\.\.",
        PossibleUserWarning,
    ),
    # torchdata's StatefulDataLoader calls `torch.set_vital`, which torch has deprecated, for every loader
    (r"'set_vital' is deprecated, please do not call", UserWarning),
    # torchmetrics on constructing the Spearman metric of regression tasks (a validation set's scores are small)
    (
        r"Metric `SpearmanCorrcoef` will save all targets and predictions in the buffer\. For large datasets, this "
        r"may lead to large memory footprint\.",
        UserWarning,
    ),
    # Lightning 2.6's batch transfer builds a `LeafSpec`, which torch has deprecated
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated, use `isinstance\(treespec, TreeSpec\) and "
        r"treespec\.is_leaf\(\)` instead\.",
        FutureWarning,
    ),
)

# transformers progress bars RunHeader and ExportHFModel report in a line of their own
QUIET_BARS = ("Loading weights", "Writing model shards")


class _DropMessages(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(p, re.DOTALL) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.fullmatch(message) for p in self.patterns)


_FILTERS = {name: _DropMessages(patterns) for name, patterns in QUIET_LOGS.items()}
_quiet = False


def _quiet_bars(factory, args, kwargs):
    if kwargs.get("desc") in QUIET_BARS:
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def configure(verbose: bool = False) -> None:
    """Drop the notices listed above (`verbose` False), or let everything through again (True)."""
    global _quiet
    _quiet = not verbose
    for name, log_filter in _FILTERS.items():
        (logging.getLogger(name).removeFilter if verbose else logging.getLogger(name).addFilter)(log_filter)
    for message, category in QUIET_WARNINGS:
        # the newest entry for a message comes first and wins, so switching back and forth works
        warnings.filterwarnings("default" if verbose else "ignore", message=message + r"\Z", category=category)
    previous = transformers_logging.set_tqdm_hook(None if verbose else _quiet_bars)
    if previous not in (None, _quiet_bars):  # someone else's hook: leave it in place
        transformers_logging.set_tqdm_hook(previous)


def is_verbose() -> bool:
    return not _quiet


@contextlib.contextmanager
def datasets_bars_hidden() -> Iterator[None]:
    """Hide `datasets`' progress bars for a step that takes a second on local files (reading a csv, saving the
    tokenized cache), unless verbose; the tokenization bars, which can run for minutes, stay."""
    hide = _quiet and not datasets.are_progress_bars_disabled()
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
    """Print where the run goes, its data, model, device and precision as a run starts (rank 0)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        log_dir = run_folder(trainer)  # every rank asks
        if not trainer.is_global_zero:
            return
        lines = [f"Run folder: {log_dir}   (tensorboard --logdir {log_dir})"]
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
        sizes = [f"{len(dataset):,} {split}" for split, dataset in raw.items() if split.split("/")[0] in used]
        labels = getattr(datamodule, "label_names", None)
        described = f"; {len(labels)} labels: {_listing(labels, 6)}" if labels else ""
        return f"Data: {', '.join(sizes)} rows{described}" if sizes else None

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
