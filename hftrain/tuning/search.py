"""`hftrain tune` and `hftrain.tune()`: a hyperparameter search whose trials are `hftrain fit` runs.

Optuna is the engine (samplers, pruners, storage). What this module adds is the glue a fine-tuning search needs:
each trial is a normal run folder (`runs/<name>/tune/trial_<number>/`) built by the CLI itself; under DDP every
rank runs the same trial with the same values (`ranks`) and stops at the same validation (`pruning`); several
workers share one study and its exact budget of trials (`study`); the study folder gets a summary (`outputs`).

    hftrain tune --config configs/glue/mrpc_minilm_local.yaml --config configs/tune/text_classification.yaml

A search's processes run one loop in step: rank 0 decides the next trial (`Search.next_trial`), every rank runs it
(`Search.run_trial`: values → config → fit → result told to the study), until the study holds `n_trials`.
"""

import gc
import json
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from hftrain import preflight
from hftrain.api import Run, command_arguments, user_errors
from hftrain.cli import exit_on_user_error
from hftrain.core import internals, reuse, runs
from hftrain.core.errors import HFTrainError
from hftrain.core.monitor import required_monitored_metric
from hftrain.core.signals import RunInterrupted
from hftrain.tuning import faults, outputs, ranks
from hftrain.tuning.pruning import TrialPruning
from hftrain.tuning.settings import Dimension, TuneSettings, check_settings, parameter_arguments, read_arguments
from hftrain.tuning.study import claim_trial, grid_size, open_storage, open_study, reseed_for

STUDY_DIR = "tune"  # runs/<name>/tune/
MAX_FAILURES_IN_A_ROW = 3  # trials that failed on their own (a NaN loss): the search goes on, unless all of them do


class Search:
    """One worker's part of a search: the settings, each trial's fit arguments, and (on rank 0) the study.

    Args:
        settings: The `tune:` section.
        fit_arguments: The arguments every trial's fit takes (configs and options), before the trial's values.
        files: The config files given, whose names name the study.
    """

    def __init__(self, settings: TuneSettings, fit_arguments: list[str], files: Sequence[str] = ()) -> None:
        self.settings, self.fit_arguments = settings, fit_arguments
        self.space: list[Dimension] = check_settings(settings, fit_arguments)
        self.name = settings.study_name or _run_name(fit_arguments)
        self.folder = Path(runs.RUNS_DIR) / self.name / STUDY_DIR
        self.study: optuna.Study | None = None
        self.n_trials = settings.n_trials
        if settings.sampler == "grid" and grid_size(self.space) < self.n_trials:
            self.n_trials = grid_size(self.space)
            if ranks.is_rank_zero():
                print(f"The grid has {self.n_trials} points: the search runs {self.n_trials} trials.", flush=True)
        self._failures = 0
        # Lightning's sanity check runs two validation batches before training: once a trial of this worker has
        # trained and validated on the config, later trials skip it, unless the user's arguments set it
        self._skip_sanity_check = False
        self._sanity_check_set = "num_sanity_val_steps" in preflight.merged_config(fit_arguments)["trainer"]

    # ------------------------------------------------------------------ the study (rank 0)

    def open(self) -> optuna.Study:
        """Open (or create) the study, after checking the whole config as fit would: a probe built from the task
        config and the first value of each range names the monitored metric, and any mistake, before anything
        is written."""
        first = {d.key: d.first() for d in self.space}
        with user_errors():
            probe = Run(args=[*self.fit_arguments, *parameter_arguments(first)], folder=self.folder / "probe")
            monitor, mode = required_monitored_metric(probe.trainer, probe.module, "a search's objective")
        del probe
        gc.collect()
        storage = open_storage(self.settings, self.folder)
        self.study = open_study(self.settings, storage, self.name, self.space, monitor, mode)
        return self.study

    def next_trial(self) -> dict[str, Any] | None:
        """The next trial to run, as every rank receives it (number, values, run folder, checkpoint to resume
        from), or None when the study holds `n_trials`. Rank 0 only.

        First the trials whose worker died or stopped are queued again (`faults.take_over_stale_trials`), and one
        of them is resumed in its own folder before any new trial starts. With nothing left to start, the worker
        waits while another worker's trial is silent: if that worker died, the trial is resumed here."""
        said: set[int] = set()
        while True:
            faults.take_over_stale_trials(self.study)
            trial = claim_trial(self.study, self.n_trials)
            if trial is not None or not faults.wait_for_silent_trials(self.study, said):
                break
        if trial is None:
            return None
        faults.claim(trial)
        reseed_for(self.study, trial, self.settings, self.space)
        params = {d.key: _suggest(trial, d) for d in self.space}
        retried = faults.retried_trial(trial)
        if retried is None:
            folder = outputs.trial_folder(self.folder, trial.number)
            trial.set_user_attr(outputs.FOLDER, str(folder))
            return {"number": trial.number, "params": params, "folder": str(folder), "ckpt_path": None}
        folder = Path(trial.user_attrs[outputs.FOLDER])  # the trial it continues: its folder and checkpoints
        resume = faults.resume_point(folder)
        start = f"resumes from {resume}" if resume else "starts over: it saved no checkpoint"
        print(
            f"Trial {trial.number} continues trial {retried}, whose worker stopped, in {folder}: {start}.", flush=True
        )
        return {"number": trial.number, "params": params, "folder": str(folder), "ckpt_path": resume and str(resume)}

    # ------------------------------------------------------------------ the loop (every rank)

    def run(self) -> None:
        """Run trials until the study holds `n_trials`, every rank in step. The trials share what they build
        alike: the parser, the tokenizer, the data files, the trainer check (`reuse`)."""
        with reuse.kept_for_the_search():
            if ranks.is_rank_zero() and self.study is None:
                self.open()
            ranks.join_ranks()
            while (assignment := ranks.share(self.next_trial() if ranks.is_rank_zero() else None)) is not None:
                self.run_trial(assignment)
        if ranks.is_rank_zero():
            with outputs.summary_lock(self.folder):
                outputs.write_summary(self.study, self.folder)
                outputs.draw_plots(self.study, self.folder)

    def run_trial(self, assignment: dict[str, Any]) -> TrialState | None:
        """One trial on this rank: its values → its run folder's config → fit (resumed from `ckpt_path` when
        given) → on rank 0, the result told to the study, the summary written and the progress line printed. The
        trial's state on rank 0, None on the others."""
        number, params, folder = assignment["number"], assignment["params"], Path(assignment["folder"])
        trial = internals.optuna_trial(self.study, number) if ranks.is_rank_zero() else None
        if trial is not None:
            values = ", ".join(f"{key}={value}" for key, value in params.items())
            print(f"Trial {number} of study '{self.name}' ({folder}): {values}", flush=True)
        pruning = TrialPruning(trial)
        reuse.next_run()
        try:
            with faults.Heartbeat(trial) if trial is not None else nullcontext():
                skip = ["--trainer.num_sanity_val_steps", "0"] if self._skip_sanity_check else []
                run = Run(args=[*self.fit_arguments, *skip, *parameter_arguments(params)], folder=folder)
                run.trainer.callbacks.append(pruning)
                run.fit(ckpt_path=assignment.get("ckpt_path"))
        except (RunInterrupted, KeyboardInterrupt) as err:
            if trial is not None:  # stopped on a signal: resumed from its checkpoint, not redone
                faults.release(self.study, number)
            raise faults.signal_stop(err, number) from None
        except HFTrainError as err:
            return self._failed(trial, err)
        except BaseException as err:
            if trial is not None:
                trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:500])
                self.study.tell(trial, state=TrialState.FAIL)
            raise
        finally:
            ranks.done_sharing()
        del run
        gc.collect()
        self._skip_sanity_check = not self._sanity_check_set
        if trial is None:
            return None
        self._failures = 0
        state = self._tell(trial, folder, pruning.pruned)
        with outputs.summary_lock(self.folder):
            outputs.write_summary(self.study, self.folder)
            outputs.free_disk(self.study, self.settings.keep)
        frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)
        print(outputs.progress_line(self.study, self.n_trials, frozen), flush=True)
        return state

    def _tell(self, trial: optuna.Trial, folder: Path, pruned: bool) -> TrialState:
        """The trial's result: pruned, or its monitored metric at the best checkpoint (`results.json`'s `best`)."""
        if pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
            return TrialState.PRUNED
        results = runs.read_results(folder)
        value = (results.get("best") or {}).get(results.get("monitor"))
        if value is None:
            trial.set_user_attr("error", "the fit ended without a validation of its monitored metric")
            self.study.tell(trial, state=TrialState.FAIL)
            return TrialState.FAIL
        self.study.tell(trial, float(value))
        return TrialState.COMPLETE

    def _failed(self, trial: optuna.Trial | None, err: HFTrainError) -> TrialState:
        """A trial that failed on its own values (a loss that became NaN) fails alone; the search goes on, unless
        several in a row fail, which is the config's fault."""
        self._failures += 1
        if trial is not None:
            trial.set_user_attr("error", str(err)[:500])
            self.study.tell(trial, state=TrialState.FAIL)
            print(f"Trial {trial.number} failed: {err}", file=sys.stderr, flush=True)
        if self._failures >= MAX_FAILURES_IN_A_ROW:
            raise HFTrainError(f"{self._failures} trials in a row failed; the last one: {err}") from None
        return TrialState.FAIL


def _suggest(trial: optuna.Trial, dimension: Dimension) -> Any:
    if dimension.choices is not None:
        return trial.suggest_categorical(dimension.key, list(dimension.choices))
    if dimension.is_int:
        step = dimension.step or 1
        return trial.suggest_int(dimension.key, dimension.low, dimension.high, step=step, log=dimension.log)
    return trial.suggest_float(dimension.key, dimension.low, dimension.high, step=dimension.step, log=dimension.log)


def _run_name(fit_arguments: list[str]) -> str:
    """The name fit gives a run of these arguments (`runs.run_name`): the task config's file name."""
    config = preflight.merged_config(fit_arguments)
    files = []
    for file in config["files"]:
        path = Path(file)
        files.append((file, yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None))
    return runs.run_name(files, config["model"]["class_path"] or "run")


class TuneResult:
    """What a search found: `best_params`, `best_value`, `trials` (a DataFrame, one row per trial), `best_run`
    (the best trial's `Run`, its module holding the best checkpoint's weights), the `study` and its `folder`."""

    def __init__(self, study: optuna.Study, folder: Path) -> None:
        self.study, self.folder = study, folder

    @property
    def best_params(self) -> dict[str, Any]:
        return self.study.best_params

    @property
    def best_value(self) -> float:
        return self.study.best_value

    @property
    def trials(self):
        return outputs.trials_frame(self.study)

    @property
    def best_run(self) -> Run:
        import torch

        folder = Path(self.study.best_trial.user_attrs[outputs.FOLDER])
        run = Run(folder / "config.yaml", folder=folder)
        checkpoint = torch.load(runs.find_checkpoint(folder, "best"), map_location="cpu", weights_only=False)
        run.module.load_state_dict(checkpoint["state_dict"])
        return run

    def __repr__(self) -> str:
        monitor = self.study.user_attrs.get("monitor")
        return f"TuneResult({self.folder}: best {monitor} {self.best_value:.4f}, {self.best_params})"


def tune(
    *configs: str | Path,
    tune: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    trainer: dict[str, Any] | None = None,
    checkpoint: dict[str, Any] | None = None,
    seed_everything: int | None = None,
    args: Sequence[str] = (),
) -> TuneResult | None:
    """Search hyperparameters as `hftrain tune` does: `configs` are the task config and the search config (its
    `tune:` section), `tune` overrides that section (`{"n_trials": 4}`), and the other sections override the
    task's as in `hftrain.fit`. The result on rank 0 (None on the other ranks of a DDP search)."""
    arguments = command_arguments(configs, model, data, trainer, checkpoint, seed_everything, args)
    if tune:
        arguments.append(f"--tune={json.dumps(tune, default=str)}")
    settings, fit_arguments, files = read_arguments(arguments)
    search = Search(settings, fit_arguments, files)
    search.run()
    return TuneResult(search.study, search.folder) if ranks.is_rank_zero() else None


def main(argv: Sequence[str]) -> None:
    """`hftrain tune …`: user errors as one paragraph and exit status 2, as `hftrain fit`."""
    with exit_on_user_error():
        settings, fit_arguments, files = read_arguments(argv)
        search = Search(settings, fit_arguments, files)
        search.run()
        if ranks.is_rank_zero():
            result = TuneResult(search.study, search.folder)
            best, monitor = outputs.best_trial(search.study), search.study.user_attrs.get("monitor")
            summary = f"best {monitor} = {best.value:.4f} (trial {best.number})" if best else "no trial completed"
            print(f"Study folder: {result.folder}  ({summary}; best.yaml, trials.csv and plots there)", flush=True)
