"""hftrain from Python, made for notebooks: `fit` a config and keep a `Run`, or take a `trainer` with hftrain's
defaults for modules built by hand.

    run = hftrain.fit("configs/quickstart.yaml", model={"learning_rate": 1e-4}, trainer={"max_epochs": 1})
    run.best, run.history                    # metrics as Python objects (results.json)
    run.predict(["a great read", "dull"])    # the records `hftrain predict` writes, in memory
    run.fit(epochs=1)                        # one more epoch of the same run

`fit` takes what the command line takes (config files, then overrides per section) and builds everything
with the CLI itself (`HFTrainCLI(run=False)`), so defaults, argument links, the run folder and what is
written there are the command line's. User errors raise `HFTrainError` instead of exiting.
"""

import json
import signal
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers import TensorBoardLogger

from hftrain import preflight
from hftrain.cli import (
    HFTrainCLI,
    default_callbacks,
    find_user_error,
    new_run_folder,
    scale_log_interval,
    use_hftrain_parts,
    with_progress_bar,
)
from hftrain.core import console, internals, runs
from hftrain.core.callbacks import PredictionWriter, TaskCheckpoint, best_weights
from hftrain.core.errors import HFTrainError
from hftrain.core.signals import RunInterrupted
from hftrain.options import CHECKPOINT_DEFAULTS, TRAINER_DEFAULTS


class Run:
    """A run built from configs as `hftrain fit` builds it, kept in Python: its module, data module and trainer,
    its folder, and its metrics.

    After a fit, `module` holds the best checkpoint's weights, as `hf_model/` does (the HF Trainer's
    `load_best_model_at_end`), so `validate`, `test` and `predict` use the model the run exports.

    Args:
        configs: Config files, merged left to right as repeated `--config` options are.
        model: Overrides of the `model:` section, e.g. `{"learning_rate": 1e-4}` (`init_args` may be left out).
        data: Overrides of the `data:` section, e.g. `{"batch_size": 16}`.
        trainer: Overrides of the `trainer:` section (any `lightning.Trainer` argument), e.g. `{"max_epochs": 1}`.
        checkpoint: Overrides of the `checkpoint:` section (`TaskCheckpoint`), e.g. `{"every_n_train_steps": 100}`.
        seed_everything: The seed (default 42, as on the command line).
        args: More command-line arguments, as strings (`["--data.max_length", "64"]`).
        folder: The run folder, in place of the next `runs/<name>/version_N/` (a search's trial folder).
    """

    def __init__(
        self,
        *configs: str | Path,
        model: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        trainer: dict[str, Any] | None = None,
        checkpoint: dict[str, Any] | None = None,
        seed_everything: int | None = None,
        args: Sequence[str] = (),
        folder: str | Path | None = None,
    ) -> None:
        arguments = command_arguments(configs, model, data, trainer, checkpoint, seed_everything, args)
        with user_errors():
            preflight.check(arguments)
            cli = HFTrainCLI(args=arguments, run=False, folder=Path(folder) if folder is not None else None)
        self.module, self.data, self.trainer = cli.model, cli.datamodule, cli.trainer
        self._fitted = False

    # ------------------------------------------------------------------ what the run holds

    @property
    def folder(self) -> Path:
        """The run folder, `runs/<config name>/version_N/`."""
        return Path(runs.run_folder(self.trainer))

    @property
    def export_dir(self) -> Path:
        """The exported model (`save_pretrained` with the tokenizer): load it with `transformers.pipeline`."""
        return self.folder / runs.EXPORT_DIR

    @property
    def results(self) -> dict[str, Any]:
        """Everything in `results.json`: best, final, history, validate and test metrics, checkpoints."""
        return runs.read_results(self.folder)

    @property
    def best(self) -> dict[str, float] | None:
        """The validation metrics of the best epoch by the task's main metric (with its epoch and step)."""
        return self.results.get("best")

    @property
    def final(self) -> dict[str, float] | None:
        """The last validation metrics of the fit."""
        return self.results.get("final")

    @property
    def history(self) -> list[dict[str, float]]:
        """Every validation's metrics in order, like the HF Trainer's `state.log_history`
        (`pandas.DataFrame(run.history)` makes a table)."""
        return self.results.get("history", [])

    def __repr__(self) -> str:
        best, monitor = self.best, self.results.get("monitor")
        score = (
            f"best {monitor} {best[monitor]:.4f} at epoch {runs.epoch_number(best)}"
            if best and monitor
            else "not scored"
        )
        return f"Run({self.folder}: {score}, step {self.trainer.global_step})"

    # ------------------------------------------------------------------ what the run does

    def fit(self, epochs: int | None = None, ckpt_path: str | Path | None = None) -> "Run":
        """Train. The first call trains to the config's `max_epochs` / `max_steps`, or for `epochs` epochs when
        given. A later call (also after an interrupt) continues the same run, in the same folder, from its
        last checkpoint, as `hftrain fit --ckpt_path last` does, until `epochs` more epochs have ended (an
        epoch cut short is finished first and counts as one); the learning-rate schedule is stretched over
        the new total. Without `epochs`, a later call fails and says so: the run already reached its limits.
        `ckpt_path` resumes the first call from a checkpoint, as `hftrain fit --ckpt_path` does (a search's
        trial continued after its process was stopped).
        """
        ckpt_path = self._continue_from() if self._fitted and epochs else ckpt_path and str(ckpt_path)
        if epochs:
            internals.set_fit_limits(self.trainer, max_epochs=self.trainer.current_epoch + epochs, max_steps=-1)
        self._fitted = True
        with self._lightning_call(), warnings.catch_warnings():
            if ckpt_path:  # the run goes on in its own folder, whose checkpoints/ Lightning would warn about
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty\.")
            self.trainer.fit(self.module, datamodule=self.data, ckpt_path=ckpt_path)
        weights = best_weights(self.trainer)
        if weights is not None:
            self.module.load_state_dict(weights)
        return self

    def validate(self) -> dict[str, float]:
        """The validation metrics of `module` (also merged into `results.json` under `validate`)."""
        with self._lightning_call():
            metrics = self.trainer.validate(self.module, datamodule=self.data, verbose=False)
        return {name: float(value) for name, value in metrics[0].items()}

    def test(self) -> dict[str, float]:
        """The metrics of `module` on the data's test split (`data={"test_file": ...}`), also merged into
        `results.json` under `test`."""
        with self._lightning_call():
            metrics = self.trainer.test(self.module, datamodule=self.data, verbose=False)
        return {name: float(value) for name, value in metrics[0].items()}

    def predict(self, inputs: Any = None, batch_size: int | None = None) -> list[dict[str, Any]]:
        """Predictions of `module`: the records `hftrain predict` writes, one per input.

        `inputs` is one input or a list: strings, tuples (a text pair, question + context) or dicts of the
        data's columns; nothing is written to disk. Without inputs, the data's predict split is predicted and
        written to `predictions.jsonl` in the run folder, as `hftrain predict` does.
        """
        if inputs is not None:
            with user_errors():
                return self.module.to(self.trainer.strategy.root_device).predict(inputs, self.data, batch_size)
        writer = next((c for c in self.trainer.callbacks if isinstance(c, PredictionWriter)), None)
        if writer is None:
            raise HFTrainError(
                "This run's trainer has no PredictionWriter, which writes the predictions and puts them back in "
                "input order: keep it among trainer.callbacks."
            )
        with self._lightning_call():
            self.trainer.predict(self.module, datamodule=self.data, return_predictions=False)
        return writer.predictions

    def _continue_from(self) -> str:
        """The checkpoint a continued fit resumes from; settings it would silently override are refused."""
        changed = sorted(self.module.changed_hyperparameters().keys() & self.module.optimizer_settings)
        if changed:
            raise HFTrainError(
                f"model.{changed[0]} was changed since this run trained: continuing resumes the run's optimizer "
                "and schedule from its last checkpoint, which would not use it. Start a new run with it (from "
                f"the trained weights: model={{'model_name_or_path': str(run.export_dir), '{changed[0]}': ...}}), "
                "or set it back."
            )
        last = self.trainer.checkpoint_callback.last_model_path if self.trainer.checkpoint_callback else ""
        if not last or not Path(last).is_file():
            raise HFTrainError(
                f"This run has no last checkpoint to continue from ({self.folder}/{runs.CHECKPOINTS_DIR}/). "
                "Keep checkpoint.save_last true, or start a new run."
            )
        return last

    @contextmanager
    def _lightning_call(self) -> Iterator[None]:
        """Run a Trainer method from a notebook: user errors come out as `HFTrainError`, and an interrupt (the
        stop button) as `KeyboardInterrupt`. Lightning answers Ctrl+C by ignoring every later one and exiting
        the process, which in a kernel would leave the stop button dead."""
        handler = signal.getsignal(signal.SIGINT)
        try:
            with user_errors():
                yield
        except RunInterrupted as err:  # the stop button: the step in progress finished and was saved
            raise KeyboardInterrupt(f"{err.args[0].split(':')[0]}: run.fit(epochs=...) continues from it.") from None
        except SystemExit:
            if not self.trainer.interrupted:
                raise
            raise KeyboardInterrupt(
                f"Interrupted; the run folder {self.folder} keeps its checkpoints: run.fit(epochs=...) continues "
                "from the last one."
            ) from None
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, handler)


def fit(*configs: str | Path, **overrides: Any) -> Run:
    """Build a `Run` from config files and overrides (see `Run`) and train it:
    `hftrain.fit("configs/quickstart.yaml", model={"learning_rate": 1e-4})` is
    `hftrain fit --config configs/quickstart.yaml --model.learning_rate 1e-4`, kept in Python."""
    return Run(*configs, **overrides).fit()


def trainer(
    name: str = "notebook", save_dir: str | Path = runs.RUNS_DIR, verbose: bool = False, **trainer_kwargs: Any
) -> Trainer:
    """A `lightning.Trainer` with what `hftrain fit` adds, for modules built by hand: the run folder
    `<save_dir>/<name>/version_N/` with TensorBoard logs, the best and last checkpoints by the task's metric,
    `results.json`, the `hf_model/` export, the training log (learning rate, gradient norm, throughput, every
    `log_every_n_steps`, sized to the run unless given), the NaN-loss stop, gradient clipping at 1.0, 3 epochs
    (the HF Trainer's default; unlimited when only `max_steps` is given) and hftrain's progress display. The
    folder is claimed when the trainer is built, so that runs started together never share one.

    `trainer_kwargs` are `lightning.Trainer` arguments and win over these defaults; `callbacks` are added to
    hftrain's (a checkpoint callback or progress bar given replaces hftrain's own). Seed first, as the CLI
    does: `lightning.seed_everything(42)` before building the modules.

    As quiet as the command line: `import hftrain` already dropped the notices no user acts on; `verbose=True`
    (the CLI's `--verbose`) lets them through again, with Lightning's model summary.
    """
    console.configure(verbose)
    callbacks = with_progress_bar(trainer_kwargs.pop("callbacks", None), trainer_kwargs.get("enable_progress_bar"))
    if not any(isinstance(c, Checkpoint) for c in callbacks):
        callbacks.append(TaskCheckpoint(**CHECKPOINT_DEFAULTS))
    if "logger" not in trainer_kwargs:
        folder = new_run_folder(Path(save_dir) / name)
        trainer_kwargs["logger"] = TensorBoardLogger(save_dir, name=name, version=folder.name if folder else None)
    options = {**TRAINER_DEFAULTS, "enable_model_summary": verbose, **trainer_kwargs}
    if options.get("max_steps", -1) > 0 and "max_epochs" not in trainer_kwargs:
        options["max_epochs"] = -1  # hftrain's default of 3 epochs does not cut a run of max_steps short
    trainer = use_hftrain_parts(Trainer(**options, callbacks=callbacks + default_callbacks()))
    if "log_every_n_steps" not in trainer_kwargs:
        scale_log_interval(trainer)
    return trainer


@contextmanager
def user_errors() -> Iterator[None]:
    """Raise the `HFTrainError` behind an error (jsonargparse wraps those of constructors), and a bad option
    as one."""
    try:
        yield
    except ArgumentError as err:
        raise HFTrainError(
            f"The config or an override is invalid: {err} Check the key and its type (`hftrain fit --help` lists "
            "every option)."
        ) from None
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or user_error is err:
            raise
        raise user_error from None


def command_arguments(
    configs: Sequence[str | Path],
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    trainer: dict[str, Any] | None = None,
    checkpoint: dict[str, Any] | None = None,
    seed_everything: int | None = None,
    args: Sequence[str] = (),
) -> list[str]:
    """The command line (after the subcommand) that config files and per-section overrides stand for."""
    arguments = [value for config in configs for value in ("--config", str(config))]
    sections = {"model": model, "data": data, "trainer": trainer, "checkpoint": checkpoint}
    arguments += [f"--{name}={_json(values)}" for name, values in sections.items() if values]
    if seed_everything is not None:
        arguments.append(f"--seed_everything={seed_everything}")
    return arguments + [str(a) for a in args]


def _json(values: dict[str, Any]) -> str:
    """A section's overrides as one JSON value, which jsonargparse merges into the section (typed, unlike
    `--key value` strings, which a `str` option would keep with their quotes)."""
    return json.dumps(values, default=str)
