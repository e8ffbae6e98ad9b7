"""Every use of a private member of Lightning, torchmetrics or transformers, in one place.

hftrain relies on a few behaviours these libraries do not expose publicly (the fit loop's pending loader
state, `ModelCheckpoint`'s bookkeeping, torchmetrics' ROUGE tokenizer). Each is reached through a
function here, so a new release that renames one fails at once with a message naming the version range
hftrain is tested with (`pyproject.toml` pins it), instead of misbehaving quietly mid-run.
"""

import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from hftrain.core.errors import HFTrainError

# the versions whose private members this module was written against; pyproject.toml pins the same
TESTED = {"lightning": ">=2.6,<2.7", "torchmetrics": ">=1.9,<1.10"}


def _private(owner: Any, name: str, library: str = "lightning") -> Any:
    """`owner.name`, or an error naming the library's version when this release lacks it."""
    try:
        return getattr(owner, name)
    except AttributeError:
        owner_name = getattr(owner, "__name__", type(owner).__name__)
        raise HFTrainError(
            f"hftrain needs {owner_name}.{name}, which {library} {version(library)} does not have. hftrain is "
            f"tested with {library}{TESTED[library]}: install a version in that range "
            f"(`pip install '{library}{TESTED[library]}'`)."
        ) from None


# ---------------------------------------------------------------------------------------------- fit loop


def restore_loader_position(trainer) -> None:
    """Give a resumed run its dataloader position back.

    `configure_optimizers` reads `trainer.estimated_stepping_batches`, which builds the train loader before
    the checkpoint is restored; Lightning then skips loading the saved loader state (Lightning issue
    #20550) and a run resumed mid-epoch would start the epoch over. Load the pending state and restart the
    fetcher's iterator, as Lightning's own resume path does.
    """
    fit_loop = trainer.fit_loop
    if fit_loop.restarting and _private(fit_loop, "_combined_loader_states_to_load"):
        _private(fit_loop, "_load_combined_loader_states")()
        iter(_private(fit_loop, "_data_fetcher"))


def batches_trained(trainer) -> int:
    """Training batches run so far in the whole fit (across epochs), restored on resume."""
    return _private(trainer.fit_loop.epoch_loop, "total_batch_idx")


def set_fit_limits(trainer, max_epochs: int, max_steps: int) -> None:
    """Change a trainer's `max_epochs` / `max_steps` between two fits (the Trainer's own properties are
    read-only; Lightning's docs set the fit loop's, whose class is private)."""
    trainer.fit_loop.max_epochs = max_epochs
    _private(trainer.fit_loop, "epoch_loop").max_steps = max_steps


def global_seed() -> int:
    """The seed `seed_everything` set, which Lightning keeps in `PL_GLOBAL_SEED` (also for spawned ranks)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


# ------------------------------------------------------------------------------------- ModelCheckpoint


def every_n_train_steps(callback) -> int:
    """A `ModelCheckpoint`'s `every_n_train_steps` (0 when off)."""
    return _private(callback, "_every_n_train_steps")


def saves_at_train_epoch_end(callback, trainer) -> bool:
    """Whether a `ModelCheckpoint` saves at the end of the training epoch rather than after validation."""
    return _private(callback, "_should_save_on_train_epoch_end")(trainer)


def save_last_checkpoint(callback, trainer, keep_step_open: bool = False) -> None:
    """Write a `ModelCheckpoint`'s `last.ckpt` now, unless this step was saved already.

    Lightning 2.6 rewrites `last.ckpt` only when it saves a top-k checkpoint at the same step. With
    `keep_step_open`, the callback still counts this step as unsaved, so a validation right after it
    saves its top-k (and a fresher last) checkpoint.
    """
    if not callback.save_last or _private(callback, "_should_skip_saving_checkpoint")(trainer):
        return
    saved_before = _private(callback, "_last_global_step_saved")
    _private(callback, "_save_last_checkpoint")(trainer, _private(callback, "_monitor_candidates")(trainer))
    if keep_step_open:
        callback._last_global_step_saved = saved_before


# --------------------------------------------------------------------------------------- checkpoint files


def best_model_path_in(checkpoint: str | Path) -> str | None:
    """The best checkpoint that a checkpoint file's `ModelCheckpoint` state recorded (Lightning keys callback
    states by the callback's class name and settings)."""
    states = torch.load(checkpoint, map_location="cpu", weights_only=False).get("callbacks", {})
    return next((s.get("best_model_path") for k, s in states.items() if k.startswith("ModelCheckpoint")), None)


def task_class_of(checkpoint: str | Path) -> str | None:
    """The task class that wrote a checkpoint: LightningCLI stores it as `_class_path` in the hyperparameters."""
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})
    return hparams.get("_class_path")


# ------------------------------------------------------------------------------------ torchmetrics, HF


def rouge_tokens(text: str, stemmer) -> list[str]:
    """torchmetrics' ROUGE normalization and tokenization of one sentence (stemmed when `stemmer` is given)."""
    from torchmetrics.functional.text import rouge

    return _private(rouge, "_normalize_and_tokenize_text", "torchmetrics")(text, stemmer)


def rouge_lsum_fmeasure(predicted: list[list[str]], reference: list[list[str]]) -> float:
    """torchmetrics' ROUGE-Lsum F-measure of sentence-split, tokenized texts."""
    from torchmetrics.functional.text import rouge

    return float(_private(rouge, "_rouge_lsum_score", "torchmetrics")(predicted, reference)["fmeasure"])


def mark_generation_config_as_set(config) -> None:
    """Flag a `GenerationConfig` as set on purpose: loaders (transformers 4.x pipelines) rebuild a config
    flagged as derived from the model config, dropping the settings in it."""
    config._from_model_config = False
