"""Every use of a private member of Lightning, torchmetrics, transformers or Optuna, in one place.

hftrain relies on a few behaviours these libraries do not expose publicly (the fit loop's pending loader
state, `ModelCheckpoint`'s bookkeeping, torchmetrics' ROUGE tokenizer). Each is reached through a
function here, so a new release that renames one fails at once with a message naming the version range
hftrain is tested with (`pyproject.toml` pins it), instead of misbehaving quietly mid-run.
"""

import json
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from hftrain.core.errors import HFTrainError

# the versions whose private members this module was written against; pyproject.toml pins the same
TESTED = {"lightning": ">=2.6,<2.7", "torchmetrics": ">=1.9,<1.10", "jsonargparse": ">=4.53,<5", "optuna": ">=4,<6"}


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


# ---------------------------------------------------------------------------------------------- parser


def dump_parsed_config(cli) -> None:
    """What `LightningCLI._dump_config` does, which `HFTrainCLI` overrides: the parsed config as a dict
    (`cli.config_dump`), from which the model and data modules take their hyperparameters. Lightning's also checks
    the config once more, which `parse_arguments` has just done: the second check cost as much as the parse, about
    a tenth of a search trial's start-up. The dict goes through JSON rather than Lightning's YAML, whose
    pure-Python reader and writer cost twice as much for the same dict."""
    if hasattr(cli, "config_dump"):
        return
    dumped = cli.parser.dump(cli.config, skip_link_targets=False, skip_unset=False, skip_validation=True, format="json")
    cli.config_dump = json.loads(dumped)
    if "subcommand" in cli.config:
        cli.config_dump = cli.config_dump[cli.config.subcommand]


def set_option_help(parser, dest: str, text: str) -> None:
    """Replace the `--help` text of an option that a signature put on the parser (argparse keeps its actions
    in a private list; jsonargparse, built on it, has no public way to change a help text)."""
    for action in _private(parser, "_actions", "jsonargparse"):
        if action.dest == dest:
            action.help = text
            return
    raise HFTrainError(f"hftrain could not find the option --{dest} to document it: report this as a bug.")


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
    """Give a trainer new fit loops with these limits, for a fit that continues from a checkpoint in the same
    process (the Trainer's own `max_epochs` / `max_steps` are read-only).

    New loops, as a new process has, not the finished ones with new limits: restoring a checkpoint saved by
    the validation after an epoch's last batch into used loops leaves the epoch loop "restarting" at that
    last batch, and every later epoch then runs no batch. The checkpoint restores all their state.
    """
    from lightning.pytorch.loops import fit_loop, training_epoch_loop

    old = trainer.fit_loop
    loop = _private(fit_loop, "_FitLoop")(trainer, min_epochs=old.min_epochs, max_epochs=max_epochs)
    epoch_loop = _private(training_epoch_loop, "_TrainingEpochLoop")
    loop.epoch_loop = epoch_loop(trainer, min_steps=old.epoch_loop.min_steps, max_steps=max_steps)
    trainer.fit_loop = loop


def logs_this_step(trainer) -> bool:
    """Whether the loggers write at the current training step (every `log_every_n_steps`, and at the end)."""
    return _private(trainer, "_logger_connector").should_update_logs


def steps_after_this_batch(trainer) -> bool:
    """Whether the optimizer steps after the current training batch (its accumulation is complete, or the
    epoch ends), rather than accumulating it with the next."""
    return not _private(trainer.fit_loop.epoch_loop, "_should_accumulate")()


def shards_data(trainer) -> bool:
    """Whether the trainer deals each dataloader's examples to the DDP ranks (`use_distributed_sampler`, on
    by default, and a distributed strategy)."""
    connector = _private(trainer, "_accelerator_connector")
    return connector.use_distributed_sampler and connector.is_distributed


def logged_step(trainer) -> int:
    """The step Lightning writes the current logs at (optimizer steps before this one, counted from 0)."""
    return _private(trainer.fit_loop.epoch_loop, "_batches_that_stepped")


def global_seed(default: int = 0) -> int:
    """The seed `seed_everything` set, which Lightning keeps in `PL_GLOBAL_SEED` (also for spawned ranks)."""
    return int(os.environ.get("PL_GLOBAL_SEED", default))


def slurm_requeue_signal(trainer) -> int | None:
    """The signal on which the trainer's SLURM environment requeues the job, None outside SLURM or without
    auto-requeue (`SLURMEnvironment(auto_requeue=False)`)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = _private(trainer, "_accelerator_connector").cluster_environment
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
        return environment.requeue_signal
    return None


def hpc_checkpoint_path(trainer) -> str:
    """Where Lightning saves a SLURM requeue checkpoint (`hpc_ckpt_N.ckpt` in the run folder), from which the
    requeued job resumes by itself."""
    return _private(trainer, "_checkpoint_connector").hpc_save_path(trainer.default_root_dir)


# ------------------------------------------------------------------------------------- ModelCheckpoint


def every_n_train_steps(callback) -> int:
    """A `ModelCheckpoint`'s `every_n_train_steps` (0 when off)."""
    return _private(callback, "_every_n_train_steps")


def save_topk_checkpoint(callback, trainer) -> None:
    """Rank the current state among a `ModelCheckpoint`'s top-k by the metrics just logged, saving it if it enters."""
    _private(callback, "_save_topk_checkpoint")(trainer, _private(callback, "_monitor_candidates")(trainer))


def check_checkpoint_settings(callback, checkpoint_class) -> None:
    """Lightning's checks of a `ModelCheckpoint`'s settings, except the one that refuses `save_top_k` > 1
    without a `monitor`: an hftrain checkpoint without one watches the task's metric, named at setup."""
    top_k, callback.save_top_k = callback.save_top_k, min(callback.save_top_k, 1)
    try:
        _private(checkpoint_class, "_ModelCheckpoint__validate_init_configuration")(callback)
    finally:
        callback.save_top_k = top_k


def warn_if_dir_not_empty(callback, checkpoint_class, dirpath) -> None:
    """`ModelCheckpoint`'s notice that its folder already holds files (`TaskCheckpoint` keeps it for folders
    other than its run folder's)."""
    _private(checkpoint_class, "_ModelCheckpoint__warn_if_dir_not_empty")(callback, dirpath)


def checkpoint_saved_at(callback, step: int) -> str | None:
    """The file a `ModelCheckpoint` saved at optimizer step `step` (a top-k checkpoint of this very state), if any."""
    if _private(callback, "_last_global_step_saved") == step:
        return _private(callback, "_last_checkpoint_saved") or None
    return None


# --------------------------------------------------------------------------------------- checkpoint files


def best_model_path_in(checkpoint: str | Path) -> str | None:
    """The best checkpoint that a checkpoint file's `ModelCheckpoint` state recorded (Lightning keys callback
    states by the callback's class name and settings)."""
    states = torch.load(checkpoint, map_location="cpu", weights_only=False).get("callbacks", {})
    return next((s.get("best_model_path") for k, s in states.items() if k.startswith("ModelCheckpoint")), None)


def checkpoint_hyperparameters(checkpoint: str | Path) -> dict[str, Any]:
    """A checkpoint's hyperparameters (the task's settings, its label set among them), read without unpickling
    code or reading the weights into memory."""
    return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})


def task_class_of(checkpoint: str | Path) -> str | None:
    """The task class that wrote a checkpoint: LightningCLI stores it as `_class_path` in the hyperparameters."""
    return checkpoint_hyperparameters(checkpoint).get("_class_path")


# ------------------------------------------------------------------------------------ torchmetrics, HF


def rouge_tokens(text: str, stemmer) -> list[str]:
    """torchmetrics' ROUGE normalization and tokenization of one sentence (stemmed when `stemmer` is given)."""
    from torchmetrics.functional.text import rouge

    return _private(rouge, "_normalize_and_tokenize_text", "torchmetrics")(text, stemmer)


def rouge_lsum_fmeasure(predicted: list[list[str]], reference: list[list[str]]) -> float:
    """torchmetrics' ROUGE-Lsum F-measure of sentence-split, tokenized texts."""
    from torchmetrics.functional.text import rouge

    return float(_private(rouge, "_rouge_lsum_score", "torchmetrics")(predicted, reference)["fmeasure"])


def bleu_counts(preds, target, n_gram: int, tokenizer) -> tuple[list[int], list[int], int, int]:
    """torchmetrics' BLEU statistics of a batch as Python numbers: matched and total n-grams per order, the
    predictions' length and the closest references' length. Its update works on Python lists as on the
    tensors it is written for, and many times faster."""
    from torchmetrics.functional.text import bleu

    matched, total = [0] * n_gram, [0] * n_gram
    update = _private(bleu, "_bleu_score_update", "torchmetrics")
    preds_len, target_len = update(preds, target, matched, total, 0, 0, n_gram, tokenizer)
    return matched, total, preds_len, target_len


def mark_generation_config_as_set(config) -> None:
    """Flag a `GenerationConfig` as set on purpose: loaders (transformers 4.x pipelines) rebuild a config
    flagged as derived from the model config, dropping the settings in it."""
    config._from_model_config = False


# ---------------------------------------------------------------------------------------------- optuna


def optuna_trial(study, number: int):
    """The live `optuna.Trial` of a study's trial `number`, to report to and tell: `study.ask()` gives one only for
    a new trial, and a trial continued by another process (resumed after its worker stopped) is known by its
    number; Optuna's `Trial` is built from the storage's trial id, which `FrozenTrial` keeps private."""
    import optuna

    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return optuna.trial.Trial(study, _private(frozen, "_trial_id", "optuna"))


def grid_point(trial) -> int | None:
    """The grid point Optuna's grid sampler gave a trial (a `FrozenTrial` or a live `Trial`) as it was asked for;
    the sampler keeps it in a system attribute of its own naming."""
    if hasattr(trial, "storage"):  # a live Trial
        return trial.storage.get_trial_system_attrs(_private(trial, "_trial_id", "optuna")).get("grid_id")
    return trial.system_attrs.get("grid_id")
