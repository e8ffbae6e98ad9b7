"""What a search leaves in its study folder besides the trials' run folders, and what it prints.

`runs/<name>/tune/`:
- `trial_<number>/`: each trial's run folder, as `hftrain fit` writes it;
- `trials.csv`: number, state, value, parameters, duration and folder of every trial;
- `best.yaml`: the best trial's saved config, which `hftrain fit --config best.yaml` runs as is;
- `history.png`, `importances.png`, `parallel_coordinates.png`, `intermediate_values.png`: Optuna's own plots;
- `study.journal`: the study (unless tune.storage names another place).
"""

import math
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from hftrain.core import runs
from hftrain.core.writes import replacing, write_text
from hftrain.tuning.study import SURPLUS

TRIALS_FILE = "trials.csv"
BEST_FILE = "best.yaml"
FOLDER = "folder"  # trial user attribute: the trial's run folder
TRIAL_PREFIX = "trial_"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def trial_folder(study_dir: Path, number: int) -> Path:
    """A trial's run folder: `runs/<name>/tune/trial_<number>/`, a function of its number alone, so that every rank
    and a worker that resumes the trial find it."""
    return study_dir / f"{TRIAL_PREFIX}{number}"


def trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials, without those asked past the budget (`study.claim_trial`)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def trials_frame(study: optuna.Study):
    """The trials as rows: number, state, value, one column per parameter, duration in seconds, run folder."""
    import pandas as pd

    rows = []
    for trial in trials(study):
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                **{f"params.{key}": value for key, value in trial.params.items()},
                "duration_s": round(duration, 1) if duration is not None else None,
                FOLDER: trial.user_attrs.get(FOLDER),
            }
        )
    return pd.DataFrame(rows)


@contextmanager
def summary_lock(study_dir: Path) -> Iterator[None]:
    """One worker at a time writes the study folder's summary files (workers of one study share the folder, and a
    file is written through one `.partial` beside it). The lock is Optuna's journal lock, which works on NFS."""
    lock = JournalFileOpenLock(str(study_dir / "summary"))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def write_summary(study: optuna.Study, study_dir: Path) -> None:
    """`trials.csv`, and `best.yaml` from the best trial's saved config (under `summary_lock`)."""
    write_text(study_dir / TRIALS_FILE, trials_frame(study).to_csv(index=False))
    best = best_trial(study)
    config = Path(best.user_attrs.get(FOLDER, "")) / "config.yaml" if best else None
    if config is not None and config.is_file():
        params = ", ".join(f"{key}={value}" for key, value in best.params.items())
        header = (
            f"# The best trial of the study '{study.study_name}': trial {best.number}, {_monitor(study)} = "
            f"{best.value:.6g} ({params}).\n# Train it again with `hftrain fit --config {BEST_FILE}`.\n"
        )
        write_text(study_dir / BEST_FILE, header + config.read_text(encoding="utf-8"))


def free_disk(study: optuna.Study, keep: str) -> None:
    """Remove `hf_model/` and `checkpoints/` of finished trials other than the best (unless `keep` is `all`). A
    trial still running, or stopped before its end (a worker killed: it resumes from its last checkpoint), keeps
    them."""
    if keep == "all":
        return
    best = best_trial(study)
    for trial in trials(study):
        if trial.state in FINISHED and (best is None or trial.number != best.number) and FOLDER in trial.user_attrs:
            for part in (runs.EXPORT_DIR, runs.CHECKPOINTS_DIR):
                shutil.rmtree(Path(trial.user_attrs[FOLDER]) / part, ignore_errors=True)


PLOTS = {
    "history": "plot_optimization_history",
    "importances": "plot_param_importances",
    "parallel_coordinates": "plot_parallel_coordinate",
    "intermediate_values": "plot_intermediate_values",
}


def draw_plots(study: optuna.Study, study_dir: Path) -> list[str]:
    """Optuna's matplotlib plots as PNG files in the study folder (under `summary_lock`); the names of those drawn
    (importances need two finished trials that differ, intermediate values a trial that validated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    drawn = []
    for name, function in PLOTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's matplotlib plots are marked experimental
            try:
                axes = getattr(plots, function)(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        with replacing(study_dir / f"{name}.png", lambda: 1 << 20) as partial:
            figure.savefig(partial, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        drawn.append(name)
    return drawn


def progress_line(study: optuna.Study, n_trials: int, trial: FrozenTrial) -> str:
    """`Trial 3 of 12 (trial_2): val/accuracy = 0.8125, pruned at validation 2. Best so far: trial_1 …`."""
    done = len([t for t in trials(study) if t.state in FINISHED])
    monitor = _monitor(study)
    value = "no value" if trial.value is None or math.isnan(trial.value) else f"{monitor} = {trial.value:.4f}"
    how = {TrialState.PRUNED: f", pruned at validation {max(trial.intermediate_values, default=0)}"}.get(
        trial.state, "" if trial.state == TrialState.COMPLETE else f", {trial.state.name.lower()}"
    )
    best = best_trial(study)
    best_text = f"trial {best.number}, {monitor} = {best.value:.4f} ({_values(best.params)})" if best else "none yet"
    return f"Trial {done} of {n_trials} (trial {trial.number}): {value}{how}. Best so far: {best_text}."


def _values(params: dict) -> str:
    return ", ".join(f"{key}={v:.4g}" if isinstance(v, float) else f"{key}={v}" for key, v in params.items())


def _monitor(study: optuna.Study) -> str:
    return study.user_attrs.get("monitor", "value")
