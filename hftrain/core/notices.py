"""Notices that other libraries print on every run and that no hftrain user can act on, dropped by their full
text so that a changed or new message still shows.

Standard library only, so that `import hftrain` drops them from the start at no cost: from Python the first
of them come before any hftrain run is built (a notebook's `lightning.seed_everything(42)`, the model's load
report as the module is built), and the Python API must be as quiet as the command line.
`console.configure(verbose=True)` (the CLI's `--verbose`, `hftrain.trainer(verbose=True)`) lets every one
through again.
"""

import logging
import re
import warnings
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # the hftrain folder

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
        # a continued fit: the line after it, "Restored all states from the checkpoint at …", says the same
        r"Restoring states from the checkpoint path at .*",
    ),
    "lightning.pytorch.accelerators.cuda": (r"LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES: \[[\d,]*\]",),
    # RunHeader lists the newly initialized and unused weights instead of this 10-line table
    "transformers.modeling_utils": (
        r"\x1b\[1m\w+ LOAD REPORT\x1b\[0m from: .*",
        # packed conversations (tasks/chat_packing.py) come without a mask on purpose: their padding is a sequence
        # of its own; every other batch hftrain makes has one
        r"We strongly recommend passing in an `attention_mask` since your input_ids may be padded\. .*",
    ),
}

# (full text, category) of warnings dropped; the categories are the builtin ones the libraries' own subclass
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Lightning (a PossibleUserWarning) sees `srun` on the PATH of a Slurm login node; hftrain's Slurm scripts
    # do use srun
    (
        r"The `srun` command is available on your system but is not used\. HINT: If your intention is to run "
        r"Lightning on SLURM, prepend your python command with `srun` like so: .* \.\.\.",
        UserWarning,
    ),
    # torchdata's StatefulDataLoader calls `torch.set_vital`, which torch has deprecated, for every loader
    (r"'set_vital' is deprecated, please do not call", UserWarning),
    # torchmetrics on constructing the Spearman metric of regression tasks (a validation set's scores are small)
    (
        r"Metric `SpearmanCorrcoef` will save all targets and predictions in the buffer\. For large datasets, this "
        r"may lead to large memory footprint\.",
        UserWarning,
    ),
    # LightningCLI's `--optimizer`, in its words; TaskModule.on_fit_start says what replaced what, in the user's
    (r"`\w+\.configure_optimizers` will be overridden by `\w+\.configure_optimizers`\.", UserWarning),
    # Lightning 2.6's batch transfer builds a `LeafSpec`, which torch has deprecated
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated, use `isinstance\(treespec, TreeSpec\) and "
        r"treespec\.is_leaf\(\)` instead\.",
        FutureWarning,
    ),
)


class _DropMessages(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(p, re.DOTALL) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.fullmatch(message) for p in self.patterns)


_FILTERS = {name: _DropMessages(patterns) for name, patterns in QUIET_LOGS.items()}
_verbose = False


def drop_notices(verbose: bool = False) -> None:
    """Drop the notices listed above (`verbose` False), or let everything through again (True)."""
    global _verbose
    _verbose = verbose
    for name, log_filter in _FILTERS.items():
        (logging.getLogger(name).removeFilter if verbose else logging.getLogger(name).addFilter)(log_filter)
    for message, category in QUIET_WARNINGS:
        # the newest entry for a message comes first and wins, so switching back and forth works
        warnings.filterwarnings("default" if verbose else "ignore", message=message + r"\Z", category=category)


def is_verbose() -> bool:
    return _verbose


_python_format_warning = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    if Path(filename).resolve().is_relative_to(PACKAGE):
        return f"Warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


def own_warnings_as_lines() -> None:
    """Show hftrain's own warnings (rows cut at `data.max_length`, a column guessed) as one line a user acts on:
    Python's format adds the file and source line of the hftrain code that warned, which mean nothing to them.
    Other libraries' warnings keep Python's format; the warnings themselves (category, filters) are unchanged."""
    warnings.formatwarning = _format_warning
