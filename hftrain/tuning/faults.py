"""Faults in a search: a trial whose worker died (SIGKILL, a lost node, a preempted or requeued SLURM job) is
taken over by exactly one worker and resumed from its own run folder, as `hftrain fit --ckpt_path last` resumes
a run, so the study ends with exactly `n_trials` complete or pruned trials.

Optuna's engine does the bookkeeping; this module adds what it lacks:

- A heartbeat for the journal file. Optuna 5.1 has heartbeats (`heartbeat_interval`, `grace_period`,
  `fail_stale_trials`) only for `RDBStorage`; `JournalStorage`, our default, has none, so a killed worker's trial
  stayed RUNNING for ever. `JournalHeartbeatStorage` records the heartbeat as a trial system attribute (a line
  of the journal) and answers the storage's heartbeat methods (`_get_stale_trial_ids`, …) as the RDB storage
  does, so `take_over_stale_trials` finds stale trials the same way in both.
- The takeover keeps Optuna's exactly-once steps: moving a stale trial from RUNNING to FAIL is a step only one
  worker can take (the journal's replay order, the database's row lock), and only that worker's
  `RetryInTrialFolder` queues the trial again as WAITING, with its parameters, intermediate values and run folder
  (the retry keeps the failed trial's user attributes). Popping a WAITING trial is Optuna's other exactly-once
  step, so exactly one worker resumes it. The trial is marked `TAKEN_OVER` before it is moved: between the move
  and the retry's arrival another worker counting the budget (`study.budget_used`) still sees the trial's place
  taken, and does not start a new trial in it.
- A requeued SLURM job takes its own trial back at once (`release_own_trials`): Slurm starts a requeued job only
  after all its processes ended, so the job knows its earlier run is gone without waiting for the grace period.
- The resume point: the newest of `last.ckpt` and a SLURM requeue checkpoint in the trial's folder
  (`runs.newest_resume_point`, as a requeued `fit` job finds it).
- A worker that lost its trial (it could not record a heartbeat for longer than the grace period, and another
  worker took the trial over) stops at once without saving (`Heartbeat`), so two workers never write one folder.
"""

import copy
import os
import threading
import time
import warnings
from datetime import datetime
from pathlib import Path

import optuna
from lightning.fabric.plugins.environments import SLURMEnvironment
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from hftrain.core.runs import newest_resume_point
from hftrain.core.signals import RunInterrupted

HEARTBEAT = "hftrain:heartbeat"  # journal trials: time.time() of the latest heartbeat
WORKER = "hftrain:worker"  # the SLURM job and run that runs the trial (`this_worker`), None elsewhere
TAKEN_OVER = "hftrain:taken_over"  # a stale trial about to be failed and queued again: its place in the budget holds
RETRIED = "failed_trial"  # Optuna's retry callback's attribute: the number of the trial a retry continues
WORKER_ATTRS = (HEARTBEAT, WORKER, TAKEN_OVER)  # belong to one attempt of a trial, not copied into its retry


class RetryInTrialFolder(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial, queued WAITING with its parameters, user attributes (the run folder among
    them) and intermediate values, so the retry resumes the trial where it stopped and prunes on its whole
    history. The failed attempt's heartbeat and worker are left behind: they describe a worker that is gone."""

    def __init__(self) -> None:
        with warnings.catch_warnings():  # experimental since Optuna 2.8, and Optuna's documented way to retry
            warnings.simplefilter("ignore", ExperimentalWarning)
            super().__init__(max_retry=None, inherit_intermediate_values=True)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k not in WORKER_ATTRS}
        super().__call__(study, trial)


class JournalHeartbeatStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal file with the heartbeat its RDB storage has. A trial's last sign of life is the newer of
    its latest heartbeat and its start (a retry just popped has no heartbeat yet); a RUNNING trial silent for
    longer than `grace_period` seconds is stale. Times are each worker's clock: the nodes' clocks must agree to
    much better than the grace period (NTP does), as they must for Optuna's SQLite storage."""

    def __init__(
        self,
        backend: BaseJournalBackend,
        heartbeat_interval: int,
        grace_period: int | None = None,
    ) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or 2 * heartbeat_interval

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [t._trial_id for t in running if now - last_sign_of_life(t) > self.grace_period]

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> None:
        return None  # stale trials are queued again by `take_over_stale_trials`, not by Optuna's `optimize`


def last_sign_of_life(trial: FrozenTrial) -> float:
    """When a journal trial was last known to run: its latest heartbeat, or its start if that is newer."""
    started = trial.datetime_start.timestamp() if isinstance(trial.datetime_start, datetime) else 0.0
    return max(float(trial.system_attrs.get(HEARTBEAT, 0.0)), started)


def open_storage(location: str, heartbeat_interval: int, grace_period: int | None = None) -> BaseStorage:
    """The study's storage with heartbeats on: an RDB URL (`sqlite:///…`, `postgresql://…`) through Optuna's
    `RDBStorage`, anything else as the path of a journal file (locked by an exclusive `open`, which works on NFS).
    Stale trials are queued again in their folder by `take_over_stale_trials`."""
    if "://" in location:
        with warnings.catch_warnings():  # Optuna's heartbeat arguments are experimental since 2.9
            warnings.simplefilter("ignore", ExperimentalWarning)
            return RDBStorage(
                location,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
            )
    backend = JournalFileBackend(location, lock_obj=JournalFileOpenLock(location))
    return JournalHeartbeatStorage(backend, heartbeat_interval, grace_period)


def this_worker() -> str | None:
    """`<job id>/<restarts>` of the SLURM job this process belongs to (an array task has an id of its own, kept
    when the job is requeued; each requeue adds a restart), else None."""
    if not SLURMEnvironment.detect():
        return None
    return f"{SLURMEnvironment.job_id()}/{int(os.environ.get('SLURM_RESTART_COUNT') or 0)}"


def grace_period(storage: BaseStorage) -> float:
    """Seconds of silence after which a RUNNING trial counts as stale (Optuna's default: two heartbeats)."""
    interval = heartbeat_interval(storage)
    if interval is None:
        return float("inf")
    return getattr(storage, "grace_period", None) or 2 * interval


def fail_and_retry(study: optuna.Study, trials: list[FrozenTrial]) -> list[int]:
    """Move each trial from RUNNING to FAIL and queue its retry; the numbers of the trials this worker moved. A
    trial another worker moved first is left to it (the storage lets only one worker make the move). Each is marked
    `TAKEN_OVER` first, so that it keeps its place in the budget until its retry is queued."""
    moved = []
    for trial in trials:
        try:
            study._storage.set_trial_system_attr(trial._trial_id, TAKEN_OVER, True)
            if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                moved.append(trial)
        except UpdateFinishedTrialError:
            continue
    for trial in moved:
        RetryInTrialFolder()(study, study._storage.get_trial(trial._trial_id))
    return [t.number for t in moved]


def release_own_trials(study: optuna.Study) -> list[int]:
    """Queue again the trials this SLURM job was running in an earlier run, before it was requeued (or preempted
    and requeued): Slurm starts a job again only after all its processes ended, so they are resumed at once
    instead of after the grace period. Workers started together in one job (several `srun` steps) are in the
    same run and leave each other's trials alone."""
    worker = this_worker()
    if worker is None:
        return []
    job, restarts = worker.split("/")

    def earlier_run(trial: FrozenTrial) -> bool:
        their_job, _, their_restarts = str(trial.system_attrs.get(WORKER)).partition("/")
        return their_job == job and their_restarts.isdigit() and int(their_restarts) < int(restarts)

    return fail_and_retry(
        study, [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if earlier_run(t)]
    )


def take_over_stale_trials(study: optuna.Study) -> None:
    """Before a worker asks for a trial: queue again its own requeued SLURM job's trials and every stale trial
    (those the storage's heartbeats say are silent for longer than the grace period)."""
    release_own_trials(study)
    storage = study._storage
    if heartbeat_interval(storage) is not None:
        fail_and_retry(study, [storage.get_trial(i) for i in storage._get_stale_trial_ids(study._study_id)])


def heartbeat_interval(storage: BaseStorage) -> int | None:
    return storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None


def beat(storage: BaseStorage, trial_id: int) -> None:
    """Record a heartbeat of the trial. A database keeps Optuna's in a table of its own; the same time goes into
    the trial's attributes, where `silent_trials` reads it for any storage."""
    storage.record_heartbeat(trial_id)
    if not isinstance(storage, JournalHeartbeatStorage):
        storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())


def ask(study: optuna.Study) -> optuna.Trial:
    """`study.ask()`, the next WAITING trial (a retry) or a new one. Optuna warns that heartbeats go with
    `Study.optimize`; a search whose ranks agree on each trial asks and tells, and beats itself (`Heartbeat`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        return study.ask()


def claim(trial: optuna.Trial) -> None:
    """Mark a trial just asked for as this worker's: its SLURM job (for `release_own_trials`) and a first
    heartbeat."""
    trial.storage.set_trial_system_attr(trial._trial_id, WORKER, this_worker())
    if heartbeat_interval(trial.storage) is not None:
        beat(trial.storage, trial._trial_id)


def release(study: optuna.Study, number: int) -> None:
    """Queue again a trial this worker stopped on a signal after saving (Ctrl-C, SIGTERM outside SLURM), so that
    the command run again resumes it at once. Under SLURM the trial stays RUNNING: a requeued job takes it back as
    it starts (`release_own_trials`), and a job that is not requeued leaves it stale, for another worker."""
    if this_worker() is None:
        fail_and_retry(study, [t for t in study.get_trials(deepcopy=False) if t.number == number])


def retried_trial(trial: optuna.Trial) -> int | None:
    """The number of the trial this one continues (the first of a series of retries), None for a new trial."""
    return trial.storage.get_trial_system_attrs(trial._trial_id).get(RETRIED)


def resume_point(run_dir: str | Path | None) -> Path | None:
    """The checkpoint a retried trial resumes from: the newest of `last.ckpt` and a SLURM requeue checkpoint in
    its run folder, None when it saved none yet (it then starts over, in its own folder)."""
    return newest_resume_point(run_dir) if run_dir is not None and Path(run_dir).is_dir() else None


def signal_stop(err: BaseException, number: int) -> BaseException:
    """The `RunInterrupted` (saved, with its exit status: 0 for SLURM's requeue signal, 143 for SIGTERM) behind an
    interrupt of trial `number`'s `Run.fit`, which turns it into a `KeyboardInterrupt` for notebooks, saying how the
    search resumes the trial (fit's own advice, `--ckpt_path last`, would be passed to every trial); else `err`."""
    stopped = err.__context__ if isinstance(err.__context__, RunInterrupted) else err
    if not isinstance(stopped, RunInterrupted):
        return err
    if this_worker() is None:
        resume = f"run the same hftrain tune command again, and it resumes trial {number} from it first"
    elif stopped.exit_code == 0:
        resume = f"the requeued job resumes trial {number} from it"
    else:
        resume = (
            f"trial {number} is resumed from it by this job if it is requeued, else by another worker once the "
            "trial is tune.grace_period seconds silent"
        )
    return RunInterrupted(f"{stopped.stopped}: {resume}.", stopped.exit_code, stopped.stopped)


def silent_trials(study: optuna.Study) -> list[FrozenTrial]:
    """RUNNING trials that missed a heartbeat: their worker may have died, and a worker with no trial left to
    start waits for them to go stale rather than leave them behind. Trials that beat on are their workers' to
    finish."""
    interval = heartbeat_interval(study._storage)
    if interval is None:
        return []
    now = time.time()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [t for t in running if now - last_sign_of_life(t) > 1.5 * interval]


def wait_for_silent_trials(study: optuna.Study, said: set[int]) -> bool:
    """Wait one heartbeat interval if a trial went silent, saying so once per trial (`said` holds those said);
    whether the worker should look for a trial again."""
    silent = silent_trials(study)
    for trial in silent:
        if trial.number not in said:
            said.add(trial.number)
            quiet = time.time() - last_sign_of_life(trial)
            print(
                f"Trial {trial.number} has sent no heartbeat for {quiet:.0f} s: its worker may have stopped. "
                f"Waiting until it is {grace_period(study._storage):.0f} s silent (tune.grace_period) to resume it "
                "here.",
                flush=True,
            )
    if silent:
        time.sleep(heartbeat_interval(study._storage))
    return bool(silent)


class Heartbeat:
    """Record a trial's heartbeat every `heartbeat_interval` seconds while it runs (rank 0 of the trial), as
    `Study.optimize` does for its own trials; a search that asks and tells for its ranks starts it itself.

    After each heartbeat it checks the trial is still RUNNING. It no longer is when this worker could not record a
    heartbeat for longer than the grace period (a frozen node, a storage outage) and another worker took the trial
    over: the process then exits at once with status 75 (EX_TEMPFAIL), without saving, since the new owner writes
    the trial's folder now.
    """

    def __init__(self, trial: optuna.Trial) -> None:
        self.storage, self.trial_id = trial.storage, trial._trial_id
        self.interval = heartbeat_interval(self.storage)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="hftrain-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        if self.interval is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(timeout=self.interval):
            try:
                beat(self.storage, self.trial_id)
                taken = self.storage.get_trial(self.trial_id).state != TrialState.RUNNING
            except UpdateFinishedTrialError:
                taken = True
            if taken and not self._stop.is_set():
                number = self.storage.get_trial(self.trial_id).number
                os.write(
                    2,
                    f"\nTrial {number} was taken over by another worker (this one went silent for longer "
                    "than the grace period): stopping without saving.\n".encode(),
                )
                os._exit(75)
