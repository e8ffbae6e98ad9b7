"""`hftrain fit|validate|test|predict`: LightningCLI with the defaults a fine-tuning run needs.

What a user gets without writing it: a TensorBoard logger writing to `runs/<name>/version_N/` (the name
is the config file's name), a checkpoint of the best model by the task's main metric plus `last.ckpt`,
the learning-rate monitor, a fixed seed, the resolved `config.yaml`, `results.json`, the exported
`hf_model/`, and predictions as JSONL. The model name reaches the tokenizer and the data's label set
reaches the model through argument links, so nothing is typed twice.

`--ckpt_path best|last` work across processes: they find the newest run folder of the config's name
and continue in it (resume for `fit`; metrics and predictions written beside the run's own).
"""

import os
import sys
import zipfile
from pathlib import Path

import datasets
import transformers
import yaml
from jsonargparse import get_loader, set_loader
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from hftrain.core import runs
from hftrain.core.callbacks import ExportHFModel, PredictionWriter, ResultsWriter, StopOnNonFiniteLoss, TaskCheckpoint
from hftrain.core.checkpoint_io import AtomicCheckpointIO
from hftrain.core.data import TaskDataModule
from hftrain.core.errors import HFTrainError
from hftrain.core.internals import task_class_of
from hftrain.core.module import TaskModule
from hftrain.core.progress import TrainingProgress

PARSER_MODE = "hftrain_yaml"


def _load_value(text: str):
    """jsonargparse's YAML value loader, except that a one-line value starting with `#` stays a string.

    jsonargparse YAML-loads every value given to a `str | None` option, from the command line and from
    config files alike, and YAML reads `#2 String` (the second sentence's column in GLUE MRPC) as a
    comment, i.e. null: `text_pair_column: "#2 String"` silently became None and pairs were trained as
    single sentences.
    """
    value = get_loader("yaml")(text)
    if value is None and text.lstrip().startswith("#") and "\n" not in text:  # a value, not a file
        return text
    return value


set_loader(PARSER_MODE, _load_value, (yaml.YAMLError,))


class SaveRunConfig(SaveConfigCallback):
    """Save the resolved config as `config.yaml`, or `config-N.yaml` when a resumed or evaluation run
    writes into a folder that already has one, so the original is never overwritten.

    Settings changed on the module after it was built (in a notebook, `model.learning_rate = 5e-5` before
    another fit) are written into the config, which is then saved again: the folder records what ran.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        changed = pl_module.changed_hyperparameters() if isinstance(pl_module, TaskModule) else {}
        for name, value in changed.items():
            self.config.model.init_args[name] = value
        if changed:
            self.already_saved = False
        if not self.already_saved:
            log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask, not only rank 0
            name = runs.free_path(log_dir, "config", ".yaml").name if trainer.is_global_zero else None
            self.config_filename = trainer.strategy.broadcast(name)
        super().setup(trainer, pl_module, stage)


# What every hftrain run gets, shared by `HFTrainCLI` and `hftrain.trainer()` (Lightning's Trainer for notebooks)
TRAINER_DEFAULTS = {"gradient_clip_val": 1.0}  # the HF Trainer's max_grad_norm default
CHECKPOINT_DEFAULTS = {"save_last": True, "filename": "epoch={epoch}-step={step}", "auto_insert_metric_name": False}
SEED = 42


def default_callbacks() -> list[Callback]:
    """The callbacks of every run besides the checkpoint (which the CLI makes configurable as `checkpoint`)."""
    # export first, so the results summary is the last thing a fit prints
    return [LearningRateMonitor(logging_interval="step"), StopOnNonFiniteLoss(), ExportHFModel(), ResultsWriter()]


def with_progress_bar(callbacks: Callback | list[Callback] | None, enable_progress_bar: bool | None) -> list[Callback]:
    """`callbacks` plus hftrain's progress display, unless progress is turned off or a progress bar is given
    (Lightning refuses a progress bar callback together with `enable_progress_bar=False`)."""
    callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, list) else [callbacks]
    if enable_progress_bar is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(TrainingProgress())
    return callbacks


def use_atomic_checkpoints(trainer: Trainer) -> Trainer:
    """Write the trainer's checkpoints through a temporary file, unless the user chose another checkpoint IO."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    return trainer


class HFTrainCLI(LightningCLI):
    """The hftrain command line. `run=False` builds model, data and trainer without running, for use from
    Python (`hftrain.fit` is built on it): a bad option then raises an `ArgumentError` instead of exiting."""

    def __init__(self, args: list[str] | dict | None = None, run: bool = True) -> None:
        super().__init__(
            TaskModule,
            TaskDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveRunConfig,
            seed_everything_default=SEED,
            trainer_defaults={
                **TRAINER_DEFAULTS,
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": runs.RUNS_DIR, "name": None},
                },
                "callbacks": default_callbacks(),
            },
            parser_kwargs={
                "default_env": True,
                "env_prefix": "HFTRAIN",
                "parser_mode": PARSER_MODE,
                "exit_on_error": run,
            },
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(TaskCheckpoint, "checkpoint")
        parser.set_defaults({f"checkpoint.{key}": value for key, value in CHECKPOINT_DEFAULTS.items()})
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        # the data is tokenized with exactly the tokenizer the model was saved with
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer_name")
        parser.link_arguments("model.init_args.revision", "data.init_args.tokenizer_revision")
        parser.link_arguments("model.init_args.trust_remote_code", "data.init_args.trust_remote_code")
        parser.link_arguments("data.label_names", "model.init_args.label_names", apply_on="instantiate")
        parser.link_arguments("data.problem_type", "model.init_args.problem_type", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path not in (None, "best", "last", "hpc", "registry"):
            self._check_checkpoint(Path(ckpt_path), self.config[subcommand].model.class_path)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer_config = (self.config_init[self.subcommand] if self.subcommand else self.config_init).trainer
        kwargs.setdefault("callbacks", with_progress_bar(trainer_config.callbacks, trainer_config.enable_progress_bar))
        return use_atomic_checkpoints(super().instantiate_trainer(**kwargs))

    def after_instantiate_classes(self) -> None:
        """Refuse a tokenizer with more tokens than the model has embeddings (ids past the table crash
        mid-run with an index error instead)."""
        tokenizer = getattr(self.datamodule, "tokenizer", None)
        embeddings = self.model.model.get_input_embeddings() if hasattr(self.model, "model") else None
        if tokenizer is not None and embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
            raise HFTrainError(
                f"The tokenizer '{self.datamodule.tokenizer_name}' has {len(tokenizer)} tokens but the model "
                f"'{self.model.model_name_or_path}' has only {embeddings.num_embeddings} embeddings: they do not "
                "belong together. Use the tokenizer saved with the model (the same folder or Hub id)."
            )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        logger = config.trainer.logger
        if hasattr(logger, "class_path") and logger.class_path.endswith("TensorBoardLogger"):
            args = logger.init_args
            if args.name is None:
                files = [(str(f), yaml.safe_load(f.get_content())) for f in config.get("config") or []]
                args.name = runs.run_name(files, config.model.class_path)
            root = Path(args.save_dir) / args.name
            if config.get("ckpt_path") in ("best", "last"):
                run_dir = self._existing_run(config.ckpt_path, root, args.version)
                args.version = run_dir.name
                config.ckpt_path = str(runs.find_checkpoint(run_dir, config.ckpt_path))
            job_id = SLURMEnvironment.job_id() if SLURMEnvironment.detect() else None
            if job_id is not None and args.version is None and config.trainer.default_root_dir is None:
                # a requeued SLURM job keeps its id, so it comes back to this run folder, where Lightning
                # saved the requeue checkpoint (hpc_ckpt_N.ckpt in default_root_dir) and resumes from it
                args.version = job_id
                config.trainer.default_root_dir = str(runs.version_dir(root, job_id))

    @staticmethod
    def _check_checkpoint(path: Path, model_class: str) -> None:
        """A missing, torn or foreign checkpoint is named before any model loads (torch checkpoints are zip
        files, and a truncated zip has no central directory)."""
        if not path.is_file():
            raise HFTrainError(f"--ckpt_path {path} does not exist. Check the path, or use `best` / `last`.")
        if not zipfile.is_zipfile(path):
            raise HFTrainError(
                f"--ckpt_path {path} is not a complete checkpoint (truncated or not written by torch.save). "
                "Use another checkpoint of the run, e.g. `--ckpt_path last` or a file in checkpoints/."
            )
        try:
            written_by = task_class_of(path)
        except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
            raise HFTrainError(f"--ckpt_path {path} could not be read as a checkpoint: {err}") from err
        if written_by and written_by != model_class:
            raise HFTrainError(
                f"--ckpt_path {path} was written by {written_by.rsplit('.', 1)[-1]}, but this config trains "
                f"{model_class.rsplit('.', 1)[-1]}. Use a checkpoint of this task, or the config it was made with."
            )

    def after_fit(self) -> None:
        """End a fit with the two things a user looks for: where the run is and how good it got."""
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank asks, once
        if log_dir is None or not self.trainer.is_global_zero:
            return
        results = runs.read_results(log_dir)
        best, monitor = results.get("best"), results.get("monitor")
        summary = f"best {monitor} = {best[monitor]:.4f} at epoch {best['epoch']}" if best else "no validation"
        print(f"Run folder: {log_dir}  ({summary})", flush=True)

    @staticmethod
    def _existing_run(which: str, root: Path, version: int | str | None) -> Path:
        """The run folder `--ckpt_path best|last` continues: the one given as logger version, else the newest."""
        if version is not None:
            return runs.version_dir(root, version)
        run_dir = runs.newest_run_with_checkpoints(root)
        if run_dir is None:
            raise HFTrainError(
                f"--ckpt_path {which}: there is no earlier run with checkpoints under {root}/. Run "
                "`hftrain fit` with this config first, or pass the path of a .ckpt file."
            )
        return run_dir


def main(args: list[str] | None = None) -> None:
    """Run the CLI; user errors print one paragraph and exit 2 (`HFTRAIN_DEBUG=1` shows the traceback)."""
    if rank_zero_only.rank > 0:  # a rank started by a launcher loads what rank 0 loads; rank 0 reports it
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    try:
        check_yaml_files(sys.argv[1:] if args is None else args)
        HFTrainCLI(args=args)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or os.environ.get("HFTRAIN_DEBUG") == "1":
            raise
        print(f"hftrain: error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


def check_yaml_files(args: list) -> None:
    """Name a config file that is not valid YAML (jsonargparse's message does not say which file)."""
    for flag, value in zip(args, args[1:], strict=False):
        if str(flag) in ("--config", "-c") and Path(value).is_file():
            try:
                yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError as err:
                raise HFTrainError(f"The config file {value} is not valid YAML: {err}") from err


def find_user_error(err: BaseException | None) -> HFTrainError | None:
    """The `HFTrainError` behind `err`: jsonargparse re-raises errors from constructors as its own."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, HFTrainError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
