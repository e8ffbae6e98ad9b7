"""The study: where it is kept, what it was created for, and how workers share its trials.

Optuna keeps the trials; what it lacks and this module adds: a default storage that needs no server (a journal
file in the study folder, locked by an exclusive `open`, which works on NFS), a check that a study continued
with a config is the same search (metric, direction, space), and a trial budget that stays exact when several
workers ask at once.
"""

import json
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from hftrain.core import internals
from hftrain.core.errors import HFTrainError
from hftrain.tuning import faults
from hftrain.tuning.settings import Dimension, TuneSettings

JOURNAL_FILE = "study.journal"
# the trials that count against n_trials: finished, or running in some worker (a stale one is resumed, not redone)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
SURPLUS = "surplus"  # user attribute of a trial asked past the budget (or the grid) and failed at once
MONITOR, SPACE = "monitor", "space"  # study user attributes: what the study searches


def open_storage(settings: TuneSettings, study_dir: Path) -> BaseStorage:
    """The study's storage: a database URL (`sqlite:///…`, `postgresql://…`), else a journal file (the given path,
    or `study.journal` in the study folder). One that cannot be opened is said in a paragraph."""
    target = settings.storage
    try:
        if not (target and "://" in target):
            path = Path(target) if target else study_dir / JOURNAL_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            target = str(path)
        return faults.open_storage(target, settings.heartbeat_interval, settings.grace_period)
    except Exception as err:  # noqa: BLE001 - drivers, URLs and file systems fail in many types
        where = target or str(study_dir / JOURNAL_FILE)
        raise HFTrainError(
            f"tune.storage {where!r} cannot be opened: {' '.join(str(err).split())[:300]} Give a database URL that "
            "this machine can reach with its driver installed (`sqlite:///runs/study.db`, "
            "`postgresql://user@host/db`), "
            "a journal file path in a writable folder, or leave tune.storage unset for a journal file in the study "
            "folder."
        ) from None


class GridOnce(optuna.samplers.GridSampler):
    """Optuna's grid sampler, without its stop when the grid is run through: that stop is for `study.optimize`, and
    raises in a search that asks and tells. The search's budget, at most the grid's size, ends it instead."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def sampler_of(
    settings: TuneSettings, space: Sequence[Dimension], seed: int | None = None
) -> optuna.samplers.BaseSampler:
    """The sampler `tune.sampler` names, seeded with `seed` (default `tune.seed`)."""
    options = dict(settings.sampler_options)
    seed = settings.seed if seed is None else seed
    try:
        if settings.sampler == "grid":
            return GridOnce({d.key: d.grid() for d in space}, seed=seed, **options)
        if settings.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed, **options)
        return optuna.samplers.TPESampler(seed=seed, **options)
    except TypeError as err:
        raise HFTrainError(f"tune.sampler_options do not fit the {settings.sampler} sampler: {err}") from None


def reseed_for(study: optuna.Study, trial: optuna.Trial, settings: TuneSettings, space: Sequence[Dimension]) -> None:
    """Give the study's sampler a seed of the trial's own, `tune.seed` + its number, before its values are drawn.

    Each worker process holds a sampler of its own, seeded alike: workers started together, and a rerun that
    continues the study, each replayed the seed's sequence and suggested the same values. Seeded by number, every
    trial draws other values than the trials before it, and a search in one worker stays reproducible.

    Not the grid: its seed orders the grid points, and the trial's point was chosen by that order when it was
    asked for (a point already taken is never handed out again)."""
    if settings.sampler != "grid":
        study.sampler = sampler_of(settings, space, seed=settings.seed + trial.number)


def pruner_of(settings: TuneSettings) -> optuna.pruners.BasePruner:
    options = dict(settings.pruner_options)
    try:
        if settings.pruner == "none":
            if options:
                raise TypeError("pruner none takes no options")
            return optuna.pruners.NopPruner()
        if settings.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(**options)
        return optuna.pruners.MedianPruner(**options)
    except (TypeError, ValueError) as err:
        raise HFTrainError(f"tune.pruner_options do not fit the {settings.pruner} pruner: {err}") from None


def grid_size(space: Sequence[Dimension]) -> int:
    size = 1
    for dimension in space:
        size *= len(dimension.grid())
    return size


def space_spec(space: Sequence[Dimension]) -> str:
    return json.dumps({d.key: d.spec() for d in space}, sort_keys=True)


def open_study(
    settings: TuneSettings, storage: BaseStorage, name: str, space: Sequence[Dimension], monitor: str, mode: str
) -> optuna.Study:
    """The study `name`, created for this search if new; an existing one must search the same space for the
    same metric in the same direction, else nothing is changed and the difference is said."""
    direction = "maximize" if mode == "max" else "minimize"
    sampler, pruner = sampler_of(settings, space), pruner_of(settings)
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction=direction, load_if_exists=True
        )
        if MONITOR not in study.user_attrs:
            study.set_user_attr(MONITOR, monitor)
            study.set_user_attr(SPACE, space_spec(space))
    had = study.user_attrs
    if study.direction.name.lower() != direction or had.get(MONITOR, monitor) != monitor:
        raise HFTrainError(
            f"The study '{name}' exists and searches {had.get(MONITOR)} ({study.direction.name.lower()}), but this "
            f"config's monitored metric is {monitor} ({direction}). Its trials cannot be compared: set another "
            "tune.study_name for a new study, or use the config the study was made with."
        )
    if had.get(SPACE, space_spec(space)) != space_spec(space):
        raise HFTrainError(
            f"The study '{name}' exists with another search space: it searches {had[SPACE]}, this config "
            f"{space_spec(space)}. Its trials would not fit this space: set another tune.study_name for a new study, "
            "or restore the space it was made with."
        )
    return study


def budget_used(study: optuna.Study, before: int | None = None) -> int:
    """How many of the n_trials places the study's trials (those numbered before `before`, if given) take: one per
    trial and its retries (`faults.RETRIED` names the first), while one of them is finished or running, queued, or
    taken over (failed and about to be queued again)."""
    places = set()
    for trial in study.get_trials(deepcopy=False):
        if before is not None and trial.number >= before:
            continue
        if trial.state in COUNTED or (trial.state == TrialState.FAIL and trial.system_attrs.get(faults.TAKEN_OVER)):
            places.add(trial.system_attrs.get(faults.RETRIED, trial.number))
    return len(places)


def grid_point_tried(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether a new trial of a grid search was given a point an earlier trial holds. Optuna's grid sampler hands
    out a tried point when no untried one is left (a grid trial that failed on its own left its place in the
    budget free); `study.optimize` would stop there, and so does the search: every point is tried once."""
    point = internals.grid_point(trial)
    if point is None:
        return False
    return any(
        t.number < trial.number and internals.grid_point(t) == point and not t.user_attrs.get(SURPLUS)
        for t in study.get_trials(deepcopy=False)
    )


def claim_trial(study: optuna.Study, n_trials: int) -> optuna.Trial | None:
    """A trial to run: a trial queued again (`faults`: its worker died or stopped; it is already within the budget),
    else a new trial within the budget of `n_trials`, or None when the study holds them all.

    Several workers asking at once could each see one trial left. The storage gives trial numbers in order, under
    its lock, so each worker asks first, then counts the places taken by trials numbered before its own: the first
    `n_trials` win, and a trial past them, or given a grid point already tried, is marked failed (`surplus`)
    before any value is drawn for it.
    """
    queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if budget_used(study) >= n_trials and not queued:
        return None
    trial = faults.ask(study)
    if faults.retried_trial(trial) is not None:
        return trial
    if budget_used(study, before=trial.number) >= n_trials or grid_point_tried(study, trial):
        trial.set_user_attr(SURPLUS, True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial
