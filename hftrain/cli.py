"""`hftrain fit|validate|test|predict`: LightningCLI with the defaults a fine-tuning run needs.

What a user gets without writing it: a TensorBoard logger writing to `runs/<name>/version_N/` (the name
is the config file's name), a checkpoint of the best model by the task's main metric plus `last.ckpt`,
the training log (learning rate, gradient norm, throughput), a fixed seed, the resolved `config.yaml`,
`results.json`, the exported `hf_model/`, and predictions as JSONL. The model name reaches the tokenizer
and the data's label set reaches the model through argument links, so nothing is typed twice.

`--ckpt_path best|last` work across processes: they find the run folder (the one whose saved config is
given, else the newest of the config's name) and continue in it (resume for `fit`; metrics and predictions
written beside the run's own), as does a checkpoint path inside a run folder.
"""

import importlib
import json
import logging
import math
import os
import re
import sys
import warnings
import zipfile
from argparse import ArgumentError
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path

import datasets
import transformers
import yaml
from jsonargparse import get_loader, set_loader
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from hftrain import _EXPORTS, options, preflight
from hftrain.core import console, internals, reuse, runs, trackers
from hftrain.core.callbacks import (
    ExportHFModel,
    PredictionWriter,
    ResultsWriter,
    StopOnNonFiniteLoss,
    TaskCheckpoint,
    WriteModelCard,
)
from hftrain.core.checkpoint_io import AtomicCheckpointIO
from hftrain.core.data import TaskDataModule
from hftrain.core.errors import HFTrainError, parser_error
from hftrain.core.internals import checkpoint_hyperparameters, task_class_of
from hftrain.core.module import TaskModule
from hftrain.core.profiler import NoProfiler
from hftrain.core.progress import TrainingProgress
from hftrain.core.signals import RunInterrupted, StopOnSignal
from hftrain.core.training_log import TrainingLog
from hftrain.core.writes import write_text

PARSER_MODE = "hftrain_yaml"
MAX_STEPS_HELP = (
    "Stop training after this many optimizer steps; -1 (the default): train for max_epochs. As in the HF "
    "Trainer, max_steps wins over max_epochs: when it is set, training goes on for as many epochs as it "
    "needs (max_epochs is ignored), and the learning-rate schedule spans max_steps."
)

# every task imported, so that jsonargparse knows them by their short names (`--model TextClassification`)
for _task in (name for names in options.task_classes().values() for name in names):
    import_module(_EXPORTS[_task])


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


def parser_kwargs(run: bool) -> dict:
    """How the parsers read their input: no abbreviated options (`--trainer.max_epoch` is an error, not
    `max_epochs`), errors raised for `main` to explain in a paragraph, and defaults from environment variables
    named `HFTRAIN_<SUBCOMMAND>__<KEY>` (`HFTRAIN_FIT__TRAINER__MAX_EPOCHS=3`; the task classes only whole,
    `HFTRAIN_FIT__MODEL`); the CLI built in Python (`run=False`) reads the `fit` ones. A variable of another
    shape (`HFTRAIN_DATA`, `HFTRAIN_CACHE`) is never read as an option."""
    strict = {"exit_on_error": False, "allow_abbrev": False, "parser_mode": PARSER_MODE}
    # the main parser reads no variable (it would take HFTRAIN_CONFIG); HFTrainCLI.setup_parser turns them on
    # for the subcommands, whose names jsonargparse derives from this prefix
    return {**strict, "default_env": not run, "env_prefix": "HFTRAIN" if run else "HFTRAIN_FIT_"}


class SaveRunConfig(SaveConfigCallback):
    """Save the resolved config as `config.yaml` in the run folder, or `config-N.yaml` when a resumed or
    evaluation run writes into a folder that already has one, so the original is never overwritten; and attach
    it to the run of an experiment tracker (MLflow, W&B, Comet: `trackers.attach_file`), which lives elsewhere.

    Settings changed on the module after it was built (in a notebook, `model.learning_rate = 5e-5` before
    another fit) are written into the config, which is then saved again: the folder records what ran.

    Written here rather than by Lightning's `setup`, which saves into `trainer.log_dir`: that is a tracker's
    `save_dir` (its own store), or nothing at all with a tracking server.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":  # predict saves its config with its predictions: a failed predict leaves neither
            self.write(trainer, pl_module, stage)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, pl_module, "predict")

    def write(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        changed = pl_module.changed_hyperparameters() if isinstance(pl_module, TaskModule) else {}
        for name, value in changed.items():
            self.config.model.init_args[name] = value
        if changed:
            self.already_saved = False
        if self.already_saved:
            return
        log_dir = runs.run_folder(trainer)  # every rank must ask, not only rank 0
        if trainer.is_global_zero:
            path = runs.free_path(log_dir, "config", ".yaml")
            # checked when parsed, and set since from values the module ran with: checking again only costs
            write_text(path, self.parser.dump(self.config, skip_unset=False, skip_validation=True))
            for logger in trainer.loggers:
                trackers.attach_file(logger, path)
        self.already_saved = trainer.strategy.broadcast(True)


def default_callbacks() -> list[Callback]:
    """The callbacks of every run besides the checkpoint (which the CLI makes configurable as `checkpoint`),
    shared by `HFTrainCLI` and `hftrain.trainer()`; their other defaults are in `hftrain/options.py`."""
    return [
        console.RunHeader(),
        TrainingLog(),
        StopOnNonFiniteLoss(),
        StopOnSignal(),
        ExportHFModel(),  # before the results, so the results summary is the last thing a fit prints
        ResultsWriter(),
        WriteModelCard(),  # after the export and results.json, which it describes
    ]


def new_run_folder(root: Path) -> Path | None:
    """The folder of a new run under `root` (`runs/<name>`), decided here for the command line and
    `hftrain.trainer()` alike. Under SLURM, `version_<job id>`: a requeued job keeps its id and comes back to its
    folder, and each task of a job array has an id of its own. Else the next `version_N`, claimed by creating it
    (`runs.claim_version`), so that runs started together never share a folder.

    None in a process that will not be global rank 0 (a DDP rank that a launcher started, which knows its rank
    from the launcher's variables before any process group exists): it must not claim a folder of its own, and
    Lightning hands it rank 0's (`trainer.log_dir` and the checkpoint folder are broadcast from rank 0).
    """
    job_id = SLURMEnvironment.job_id() if SLURMEnvironment.detect() else None
    if job_id is not None:
        return runs.version_dir(root, f"version_{job_id}")
    if rank_zero_only.rank > 0 or os.environ.get("NODE_RANK", "0") != "0":
        return None
    return runs.claim_version(root)


def scale_log_interval(trainer: Trainer) -> None:
    """Size `log_every_n_steps` to the run, for a trainer not given one: as many points as a curve needs
    (Lightning's 50 would log nothing in a run of 30 steps)."""
    for callback in trainer.callbacks:
        if isinstance(callback, TrainingLog):
            callback.scale_log_interval = True


def with_progress_bar(callbacks: Callback | list[Callback] | None, enable_progress_bar: bool | None) -> list[Callback]:
    """`callbacks` plus hftrain's progress display, unless progress is turned off or a progress bar is given
    (Lightning refuses a progress bar callback together with `enable_progress_bar=False`)."""
    callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, list) else [callbacks]
    if enable_progress_bar is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(TrainingProgress())
    return callbacks


def use_hftrain_parts(trainer: Trainer) -> Trainer:
    """Swap hftrain's parts into a built trainer where the user chose none: checkpoints written through a
    temporary file, and a profiler that costs nothing when nothing is profiled."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    if type(trainer.profiler) is PassThroughProfiler:
        trainer.profiler = NoProfiler()
    return trainer


class HFTrainCLI(LightningCLI):
    """The hftrain command line. `run=False` builds model, data and trainer without running, for use from
    Python (`hftrain.fit` is built on it): a bad option then raises an `ArgumentError` instead of exiting.
    `folder` is the run folder of a new run chosen by the caller, in place of the next `version_N`: a search
    puts each trial in `runs/<name>/tune/trial_<number>/`, a name every rank knows without a broadcast. The saved
    config names no folder, so `hftrain fit --config` on it starts a new run."""

    def __init__(self, args: list[str] | dict | None = None, run: bool = True, folder: Path | None = None) -> None:
        self._claimed: Path | None = None  # the new run folder this process claimed (before_instantiate_classes)
        self._folder = folder  # the run folder the caller chose (a search's trial), known alike on every rank
        self._asked: list[tuple] = []  # the run-folder settings as given, put back after instantiation
        try:
            super().__init__(
                TaskModule,
                TaskDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_callback=SaveRunConfig,
                seed_everything_default=options.SEED,
                trainer_defaults={
                    **options.TRAINER_DEFAULTS,
                    "logger": {
                        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                        # the hyperparameters are written with the best score by TrainingLog, not with hp_metric=-1
                        "init_args": {"save_dir": runs.RUNS_DIR, "name": None, "default_hp_metric": False},
                    },
                    "callbacks": default_callbacks(),
                },
                parser_kwargs=parser_kwargs(run),
                args=args,
                run=run,
            )
        except BaseException:
            self._release_claim()  # a command that failed before it wrote anything leaves no empty run folder
            raise
        if run:  # the subcommand ran: a folder still empty was claimed by a process that wrote nothing into it
            self._release_claim()

    def _release_claim(self) -> None:
        if self._claimed is not None:
            runs.release_version(self._claimed)

    def _dump_config(self) -> None:
        internals.dump_parsed_config(self)

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        self._parsers = [*getattr(self, "_parsers", []), parser]  # the main parser first, then the subcommands'
        return parser

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        """The parser, built from the classes' signatures. A search's trials, built from Python, share one
        (`reuse`): building it costs a sixth of a trial's start-up, and it holds nothing of a run (the default
        callbacks are added at instantiation, from `trainer_defaults`)."""
        if not add_subcommands:
            key = ("parser", json.dumps(main_kwargs, sort_keys=True))
            self.parser = reuse.once(key, lambda: self._new_parser(main_kwargs, subparser_kwargs))
            return
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        for subcommand_parser in self._parsers[1:]:  # HFTRAIN_FIT__…, HFTRAIN_PREDICT__…
            subcommand_parser.default_env = True

    def _new_parser(self, main_kwargs: dict, subparser_kwargs: dict) -> LightningArgumentParser:
        super().setup_parser(False, main_kwargs, subparser_kwargs)
        return self.parser

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """LightningCLI's subcommands, with `--verbose` hftrain's own flag: `Trainer.validate` / `test`'s
        `verbose` (print the metrics table) keeps its default, on."""
        return {name: skip | {"verbose"} for name, skip in LightningCLI.subcommands().items()}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--verbose", action="store_true", help=options.GENERAL["verbose"][1])
        parser.add_lightning_class_args(TaskCheckpoint, "checkpoint")
        parser.set_defaults({f"checkpoint.{key}": value for key, value in options.CHECKPOINT_DEFAULTS.items()})
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        internals.set_option_help(parser, "trainer.max_steps", MAX_STEPS_HELP)
        # the data is tokenized with exactly the tokenizer the model was saved with
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer_name")
        parser.link_arguments("model.init_args.revision", "data.init_args.tokenizer_revision")
        parser.link_arguments("model.init_args.trust_remote_code", "data.init_args.trust_remote_code")
        parser.link_arguments("data.label_names", "model.init_args.label_names", apply_on="instantiate")
        parser.link_arguments("data.problem_type", "model.init_args.problem_type", apply_on="instantiate")
        parser.link_arguments("data.validation_sets", "model.init_args.validation_sets", apply_on="instantiate")
        parser.link_arguments("data.end_of_turn", "model.init_args.end_of_turn", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        try:
            with warnings.catch_warnings():
                # from Python, LightningCLI warns that a kernel's own command line (`-f kernel.json`) is left
                # unparsed: as it should be. Only here: `console.configure` below sets filters that must last
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
                super().parse_arguments(parser, args)
        except ArgumentError as err:
            argv = [str(a) for a in args] if isinstance(args, list) else sys.argv[1:]
            raise parser_error(str(err), argv, argv[0] if argv and argv[0] in self.subcommands() else None) from None
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        console.configure(verbose=config.verbose)
        if config.get("lr_scheduler") and not config.get("optimizer"):  # LightningCLI would ignore it
            raise HFTrainError(
                "--lr_scheduler takes effect only with --optimizer (LightningCLI builds the two together, in place "
                "of hftrain's AdamW and warmup schedule); alone it would be ignored. Add --optimizer (e.g. "
                "`--optimizer torch.optim.AdamW --optimizer.lr 5e-5`), or choose hftrain's schedule with "
                "--model.lr_scheduler_type (linear, cosine or constant)."
            )
        if config.verbose:
            config.trainer.enable_model_summary = True
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path not in (None, "best", "last", "hpc", "registry"):
            self._check_checkpoint(Path(ckpt_path), self.config[subcommand].model.class_path)
        check_trainer_options(config.trainer.as_dict())
        if subcommand:
            init_args = config.data.get("init_args")
            preflight.check_stage_data(subcommand, init_args.as_dict() if init_args else {})

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer_config = (self.config_init[self.subcommand] if self.subcommand else self.config_init).trainer
        kwargs.setdefault("callbacks", with_progress_bar(trainer_config.callbacks, trainer_config.enable_progress_bar))
        trainer = use_hftrain_parts(super().instantiate_trainer(**kwargs))
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.log_every_n_steps is None:
            scale_log_interval(trainer)
        return trainer

    def after_instantiate_classes(self) -> None:
        """Put back the run-folder settings as given (see `before_instantiate_classes`); refuse a tokenizer with
        more tokens than the model has embeddings (ids past the table crash mid-run with an index error instead),
        data that the subcommand or trainer cannot work with, and a checkpoint of another label set."""
        for namespace, key, value in self._asked:
            setattr(namespace, key, value)
        if isinstance(self.datamodule, TaskDataModule):
            if self.subcommand:
                check_split_loaded(self.subcommand, self.datamodule)
            if self.subcommand in (None, "fit"):  # None: built from Python, to fit
                check_batches_per_epoch(self.trainer, self.datamodule)
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("ckpt_path") not in (None, "hpc", "registry"):
            self._check_labels(Path(config.ckpt_path))
        tokenizer = getattr(self.datamodule, "tokenizer", None)
        embeddings = self.model.model.get_input_embeddings() if hasattr(self.model, "model") else None
        if tokenizer is not None and embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
            raise HFTrainError(
                f"The tokenizer '{self.datamodule.tokenizer_name}' has {len(tokenizer)} tokens but the model "
                f"'{self.model.model_name_or_path}' has only {embeddings.num_embeddings} embeddings: they do not "
                "belong together. Use the tokenizer saved with the model (the same folder or Hub id)."
            )

    def before_instantiate_classes(self) -> None:
        """Choose the run folder, `runs/<config name>/version_N`, whatever the logger: TensorBoard's and CSV's
        loggers are named after the config, any other logger (MLflow, W&B, Comet) gets the folder as the
        trainer's root and checkpoint folder, and as its `save_dir` unless one is given. A checkpoint is continued
        or scored in its own run (`_run_to_continue`); a new run gets `new_run_folder`'s, and a SLURM job's comes
        back to it when requeued. The logger settings as given are put back once the classes are built, so the
        saved config names no folder: running it again starts a new run."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        self._max_steps_wins(config.trainer)
        args = getattr(config.trainer.logger, "init_args", None)  # None: no logger, or a logger object
        if args is None:
            return
        folder_logger = issubclass(_import(config.trainer.logger.class_path), (TensorBoardLogger, CSVLogger))
        files = [(str(f), yaml.safe_load(f.get_content())) for f in config.get("config") or []]
        if folder_logger and args.name in (None, runs.DEFAULT_LOGGER_NAME):
            args.name = runs.run_name(files, config.model.class_path)
        self._asked = [(args, key, vars(args)[key]) for key in ("save_dir", "name", "version") if key in vars(args)]
        self._asked.append((config.trainer, "default_root_dir", config.trainer.default_root_dir))
        if "checkpoint" in config:  # set for a logger other than TensorBoard's or CSV's
            self._asked.append((config.checkpoint, "dirpath", config.checkpoint.dirpath))
        name = args.name if folder_logger else runs.run_name(files, config.model.class_path)
        root = Path((args.save_dir if folder_logger else None) or runs.RUNS_DIR) / name
        version = args.version if folder_logger else None
        run_dir = self._run_to_continue(config, root, version)
        if run_dir is not None:
            if config.ckpt_path in ("best", "last"):
                config.ckpt_path = str(runs.find_checkpoint(run_dir, config.ckpt_path))
        elif version is not None:
            run_dir = runs.version_dir(root, version)
        elif self._folder is not None:
            run_dir = Path(self._folder)
        else:
            run_dir = self._claimed = new_run_folder(root)
            if run_dir is None:  # a rank started by a launcher: Lightning hands it rank 0's folder
                return
            # a requeued SLURM job continues from the newest checkpoint in its folder (a requeue checkpoint
            # hpc_ckpt_N.ckpt, which Lightning saves in default_root_dir, or last.ckpt)
            resume = runs.newest_resume_point(run_dir)
            if self.subcommand == "fit" and config.ckpt_path is None and resume is not None:
                config.ckpt_path = str(resume)
        if folder_logger:
            args.save_dir, args.name, args.version = str(run_dir.parent.parent), run_dir.parent.name, run_dir.name
        config.trainer.default_root_dir = config.trainer.default_root_dir or str(run_dir)
        if not folder_logger:
            # the tracker's own local files (W&B's wandb/, MLflow's file store) go into the run folder, unless
            # the user chose a place: `runs` is the default logger's save_dir, which jsonargparse carries over
            # to any logger class given on the command line
            if "save_dir" in vars(args) and args.save_dir in (None, runs.RUNS_DIR):
                args.save_dir = str(run_dir)
            if "checkpoint" in config:
                config.checkpoint.dirpath = config.checkpoint.dirpath or str(run_dir / runs.CHECKPOINTS_DIR)

    @staticmethod
    def _max_steps_wins(trainer) -> None:
        """HF semantics: `max_steps` overrides the number of epochs (Lightning stops at whichever comes first,
        so a config's `max_epochs: 3` would cut `--trainer.max_steps 1000` short on a small data set)."""
        if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.max_epochs not in (None, -1):
            if trainer.max_epochs != options.TRAINER_DEFAULTS["max_epochs"]:  # a limit the user set, now unused
                rank_zero_info(
                    f"trainer.max_steps={trainer.max_steps} wins over trainer.max_epochs={trainer.max_epochs} (as in "
                    "the HF Trainer): training runs for as many epochs as those steps take."
                )
            trainer.max_epochs = -1

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

    def _check_labels(self, path: Path) -> None:
        """A checkpoint trained on another label set is refused before its weights load: with as many labels it
        would score its classes under this data's names, with another number it fails on the classifier's shape."""
        labels = getattr(self.model, "label_names", None)
        trained = checkpoint_hyperparameters(path).get("label_names")
        if labels and trained and list(labels) != list(trained):
            raise HFTrainError(
                f"--ckpt_path {path} was trained on the labels {list(trained)}, but this config's data has the "
                f"labels {list(labels)}. Use a checkpoint trained on these labels, or set data.label_names to the "
                "checkpoint's (in its order) if the data uses the same classes."
            )

    def after_fit(self) -> None:
        """End a fit with the two things a user looks for: where the run is and how good it got."""
        log_dir = runs.run_folder(self.trainer)  # every rank asks, once
        if not self.trainer.is_global_zero:
            return
        results = runs.read_results(log_dir)
        best, monitor = results.get("best"), results.get("monitor")
        summary = (
            f"best {monitor} = {best[monitor]:.4f} at epoch {runs.epoch_number(best)}" if best else "no validation"
        )
        print(f"Run folder: {log_dir}  ({summary})", flush=True)

    @staticmethod
    def _run_to_continue(config, root: Path, version: int | str | None) -> Path | None:
        """The run folder a checkpoint is continued or scored in, None for a new run: the run a checkpoint path
        lies in; for `--ckpt_path best|last`, the one given as logger version, else the run whose saved config
        was given, else the newest fit of the config. When the choice is not the only one, it is said."""
        ckpt_path = config.get("ckpt_path")
        if ckpt_path in (None, "hpc", "registry"):
            return None
        which = ckpt_path if ckpt_path in ("best", "last") else None
        if which and version is not None:
            return runs.version_dir(root, version)
        files = [str(f) for f in config.get("config") or []]
        run_dir, note = runs.run_named(files, None if which else ckpt_path)
        if which and run_dir is None:
            fits = runs.fit_runs(root)
            if not fits:
                raise HFTrainError(
                    f"--ckpt_path {which}: there is no earlier run of this config under {root}/. Run "
                    "`hftrain fit` with this config first, or pass the path of a .ckpt file."
                )
            run_dir = fits[-1]
            if len(fits) > 1:
                note = (
                    f"--ckpt_path {which}: {root}/ holds {len(fits)} runs of this config; using the newest, "
                    f"{run_dir.name}. For another, give its saved config (--config {fits[0]}/config.yaml) or "
                    "the path of its checkpoint."
                )
        if note:
            rank_zero_info(note)
        return run_dir


# trainer options that attach objects (or a folder) rather than settle how training runs: left out of the
# trainer `check_trainer_options` builds, so that it writes nothing
ATTACHED = ("logger", "callbacks", "plugins", "default_root_dir", "enable_checkpointing")
PLAIN = (str, int, float, bool, type(None))
# the options that choose the hardware, with Lightning's defaults: what a refusal without an option's name is about
MACHINE_DEFAULTS = {"accelerator": "auto", "devices": "auto", "strategy": "auto", "precision": None, "num_nodes": 1}


def check_trainer_options(trainer: dict) -> None:
    """Name a trainer option Lightning refuses before anything loads or is written.

    Lightning checks most options (`precision`, `accelerator` / `devices` / `strategy` against the machine,
    `limit_*_batches`, `gradient_clip_algorithm`, …) in `Trainer.__init__`, which the CLI reaches after the model
    has loaded and the run folder is chosen, and it answers with a traceback. A trainer built from the plain
    options alone, with no logger, callback or checkpointing, runs exactly those checks and writes nothing.
    Options set to objects (a strategy's `class_path`) are left to the real trainer.
    """
    preflight.check_trainer_values(trainer)
    plain = {
        name: value
        for name, value in trainer.items()
        if name not in ATTACHED and all(isinstance(v, PLAIN) for v in (value if isinstance(value, list) else [value]))
    }
    try:  # a search's trials share their trainer options: checked once (`reuse`)
        reuse.once(("trainer options", json.dumps(plain, sort_keys=True, default=str)), lambda: _accepted(plain))
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as err:
        text = " ".join(str(err).split())
        named = [name for name in plain if re.search(rf"\b{name}\b", text)]
        machine = [name for name, default in MACHINE_DEFAULTS.items() if plain.get(name, default) != default]
        named = named or machine or list(MACHINE_DEFAULTS)
        settings = ", ".join(f"trainer.{name}={plain.get(name, MACHINE_DEFAULTS.get(name))!r}" for name in named)
        hint = " (`configs/trainer/cpu.yaml` runs on any machine)" if set(named) <= set(MACHINE_DEFAULTS) else ""
        raise HFTrainError(
            f"Lightning refuses the trainer setting{'s' if len(named) > 1 else ''} {settings}: {text} Change "
            f"{'them' if len(named) > 1 else 'it'} in the config's `trainer:` section or with --trainer.<option>"
            f"{hint}."
        ) from None


def _accepted(plain: dict) -> bool:
    with _quiet():
        Trainer(**plain, logger=False, enable_checkpointing=False)
    return True


@contextmanager
def _quiet():
    """Lightning's notices while building a trainer only to check its options (the real one prints them)."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def check_split_loaded(subcommand: str, data: TaskDataModule) -> None:
    """The split a subcommand needs, once a Hub dataset is loaded (`preflight.check_stage_data` checks files
    before anything loads): said before a checkpoint loads or the run folder is written."""
    needed = {"validate": "validation", "test": "test", "predict": "predict"}.get(subcommand)
    if needed is None:
        return
    have = any(split in data.raw for split in data.validation_splits) if needed == "validation" else needed in data.raw
    if not have:
        source = f"The dataset '{data.dataset_name}'" if data.dataset_name else "The data"
        raise HFTrainError(
            f"hftrain {subcommand} has no {needed} data: {source} has no {needed} split (it has "
            f"{', '.join(data.raw) or 'none'}). Set data.{needed}_file to a file like the training data."
        )


def check_batches_per_epoch(trainer: Trainer, data: TaskDataModule) -> None:
    """An interval counted in training batches must fit in an epoch, known now that the data is read: Lightning
    refuses a larger `val_check_interval` only when fit starts, after writing the run folder, and takes
    an `accumulate_grad_batches` larger than the epoch silently, as a step at each epoch's end on fewer batches."""
    if "train" not in data.raw:
        return
    rows, world = len(data.raw["train"]), trainer.world_size
    all_batches = math.ceil(math.ceil(rows / world) / data.batch_size)
    limit = trainer.limit_train_batches
    batches = min(all_batches, limit) if isinstance(limit, int) else int(all_batches * limit)
    limited = " after trainer.limit_train_batches" if batches < all_batches else ""
    epoch = (
        f"an epoch has {batches} training batches ({rows} rows in batches of {data.batch_size}"
        f"{f' over {world} processes' if world > 1 else ''}{limited})"
    )
    interval = trainer.val_check_interval
    validates = trainer.check_val_every_n_epoch is not None and trainer.limit_val_batches > 0
    if isinstance(interval, int) and interval > batches and validates:
        raise HFTrainError(
            f"trainer.val_check_interval is {interval} training batches, but {epoch}. Set at most {batches}, a "
            "fraction of an epoch (0.5 validates twice an epoch), or trainer.check_val_every_n_epoch: null to "
            "count batches across epochs."
        )
    if trainer.accumulate_grad_batches > batches > 0:
        raise HFTrainError(
            f"trainer.accumulate_grad_batches is {trainer.accumulate_grad_batches}, but {epoch}: every optimizer "
            f"step would end with the epoch after {batches} batches. Set at most {batches}, or a smaller "
            "data.batch_size."
        )


def main(args: list[str] | None = None) -> None:
    """Run the CLI; user errors print one paragraph and exit 2 (`HFTRAIN_DEBUG=1` shows the traceback)."""
    if rank_zero_only.rank > 0:  # a rank started by a launcher loads what rank 0 loads; rank 0 reports it
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    with exit_on_user_error():
        preflight.check(sys.argv[1:] if args is None else args)
        HFTrainCLI(args=args)


@contextmanager
def exit_on_user_error():
    """A command's user errors as one paragraph and exit status 2 (`HFTRAIN_DEBUG=1` shows the traceback); a run
    stopped on a signal exits with the signal's status. Shared by `fit`-like subcommands and `tune`."""
    try:
        yield
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or os.environ.get("HFTRAIN_DEBUG") == "1":
            raise
        if isinstance(user_error, RunInterrupted):  # stopped on a signal, after saving where it stood
            if rank_zero_only.rank == 0:
                print(f"hftrain: {user_error}", file=sys.stderr)
            raise SystemExit(user_error.exit_code) from None
        print(f"hftrain: error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def find_user_error(err: BaseException | None) -> HFTrainError | None:
    """The `HFTrainError` behind `err`: jsonargparse re-raises errors from constructors as its own."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, HFTrainError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
