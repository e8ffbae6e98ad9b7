"""Faults in a search (hftrain/tuning/faults.py): a trial whose worker died is taken over by exactly one worker and
resumed from its own run folder to the weights an uninterrupted trial reaches; the study ends with exactly
n_trials complete or pruned trials. The storage rules on their own first, then killed workers as processes, then
a requeued worker of a job array on the real local Slurm cluster."""

import time

import optuna
import pytest

from hftrain.tuning import faults


def two_workers(tmp_path, location: str | None = None, interval: int = 1, grace: int = 2):
    """Two workers' views of one study, each through a storage of its own, as two processes have."""
    location = location or str(tmp_path / "study.journal")
    first = optuna.create_study(study_name="s", storage=faults.open_storage(location, interval, grace))
    second = optuna.load_study(study_name="s", storage=faults.open_storage(location, interval, grace))
    return first, second


def start_trial(study: optuna.Study, folder: str) -> optuna.Trial:
    """What a worker does as a trial starts: draw its values, name its folder, claim it; one validation reported."""
    trial = study.ask()
    trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    trial.set_user_attr("run_dir", folder)
    faults.claim(trial)
    trial.report(0.5, 1)
    return trial


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


@pytest.fixture
def later(monkeypatch):
    """`later(s)` sets this process's clock to `s` seconds after the test started, as if the workers had been
    silent so long."""
    now = time.time()
    return lambda seconds: monkeypatch.setattr(faults.time, "time", lambda: now + seconds)


def test_a_silent_trial_is_taken_over_by_exactly_one_worker_and_resumed_in_its_folder(tmp_path, later):
    first, second = two_workers(tmp_path)
    killed = start_trial(first, "runs/x/tune/trial_0")
    faults.take_over_stale_trials(second)
    assert states(second) == ["RUNNING"]  # it beat a moment ago: its worker may be alive

    later(2.5)  # past the grace period without a heartbeat
    faults.take_over_stale_trials(second)
    faults.take_over_stale_trials(first)  # found stale by both workers: only one moves it, one retry is queued
    assert states(first) == ["FAIL", "WAITING"]

    retry = second.ask()
    assert first.ask().number == 2  # popped once: the other worker gets a new trial
    retried = second._storage.get_trial(retry._trial_id)
    assert faults.retried_trial(retry) == killed.number == 0
    assert retried.params == killed.params and retried.intermediate_values == {1: 0.5}
    assert retried.user_attrs["run_dir"] == "runs/x/tune/trial_0"  # resumed in the killed trial's folder
    assert faults.WORKER not in retried.system_attrs and faults.HEARTBEAT not in retried.system_attrs
    assert retry.suggest_float("lr", 1e-5, 1e-2, log=True) == killed.params["lr"]


def test_a_heartbeat_keeps_a_trial_its_workers(tmp_path, later):
    first, second = two_workers(tmp_path)
    trial = start_trial(first, "trial_0")
    later(1.5)
    first._storage.record_heartbeat(trial._trial_id)
    later(3.0)  # 3 s after the start, 1.5 s after the heartbeat
    faults.take_over_stale_trials(second)
    assert states(second) == ["RUNNING"]


def test_a_requeued_slurm_job_takes_its_own_trial_back_at_once(tmp_path, monkeypatch):
    first, second = two_workers(tmp_path, interval=60)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "hftrain-tune")
    monkeypatch.setenv("SLURM_JOB_ID", "101")
    ours = start_trial(first, "trial_0")
    monkeypatch.setenv("SLURM_JOB_ID", "102")
    start_trial(second, "trial_1")

    monkeypatch.setenv("SLURM_JOB_ID", "101")  # job 101 requeued: its trial, not job 102's, well within the grace
    faults.take_over_stale_trials(first)
    assert states(first) == ["FAIL", "RUNNING", "WAITING"]
    retry = first.ask()
    assert faults.retried_trial(retry) == ours.number


@pytest.mark.processes  # over 3 s: the database is created, and its clock counts whole seconds
def test_a_stale_trial_in_a_database_is_taken_over_the_same_way(tmp_path):
    first, second = two_workers(tmp_path, location=f"sqlite:///{tmp_path / 'study.db'}", grace=1)
    start_trial(first, "trial_0")
    time.sleep(2.1)  # the database's clock, in whole seconds
    faults.take_over_stale_trials(second)
    assert states(second) == ["FAIL", "WAITING"]
    assert second.ask().user_attrs["run_dir"] == "trial_0"


def test_a_worker_that_lost_its_trial_stops_without_saving(tmp_path, monkeypatch, later):
    first, second = two_workers(tmp_path)
    trial = start_trial(first, "trial_0")
    later(2.5)
    faults.take_over_stale_trials(second)  # the first worker was frozen past the grace period
    exits = []
    monkeypatch.setattr(faults.os, "_exit", exits.append)
    heartbeat = faults.Heartbeat(trial)
    heartbeat.interval = 0.01
    with heartbeat:
        deadline = time.monotonic() + 5
        while not exits and time.monotonic() < deadline:
            time.sleep(0.01)
    assert exits[:1] == [75]


def test_the_resume_point_is_the_newest_checkpoint_of_the_trial_folder(tmp_path):
    run = tmp_path / "trial_0"
    assert faults.resume_point(run) is None and faults.resume_point(None) is None
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"1")
    assert faults.resume_point(run) == run / "checkpoints" / "last.ckpt"
    time.sleep(0.01)
    (run / "hpc_ckpt_1.ckpt").write_bytes(b"2")  # a requeued SLURM worker's, newer
    assert faults.resume_point(run) == run / "hpc_ckpt_1.ckpt"
