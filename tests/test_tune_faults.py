"""Faults in a search (hftrain/tuning/faults.py): a trial whose worker died is taken over by exactly one worker and
resumed from its own run folder to the weights an uninterrupted trial reaches; the study ends with exactly
n_trials complete or pruned trials. The storage rules on their own first, then killed workers as processes, then
a requeued worker of a job array on the real local Slurm cluster."""

import re
import shutil
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import REPO, sentiment_rows, write_csv
from helpers import CPU_DDP, classification_config, hftrain
from test_slurm import (
    ENDED,
    SBATCH_LOCAL,
    STEPS_PER_EPOCH,
    array_tasks,
    job_env,
    job_log,
    scale_config,
    slurm_cluster,  # noqa: F401 - the cluster fixture, used by name
    submit,
    wait_job,
)

from hftrain.core.runs import read_results
from hftrain.tuning import faults

TUNE_SBATCH = REPO / "scripts" / "slurm" / "tune.sbatch"


def two_workers(tmp_path, location: str | None = None, interval: int = 1, grace: int = 2):
    """Two workers' views of one study, each through a storage of its own, as two processes have."""
    location = location or str(tmp_path / "study.journal")
    first = optuna.create_study(study_name="s", storage=faults.open_storage(location, interval, grace))
    second = optuna.load_study(study_name="s", storage=faults.open_storage(location, interval, grace))
    return first, second


def start_trial(study: optuna.Study, folder: str) -> optuna.Trial:
    """What a worker does as a trial starts: draw its values, name its folder, claim it; one validation reported."""
    trial = faults.ask(study)
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

    retry = faults.ask(second)
    assert faults.ask(first).number == 2  # popped once: the other worker gets a new trial
    retried = second._storage.get_trial(retry._trial_id)
    assert faults.retried_trial(retry) == killed.number == 0
    assert retried.params == killed.params and retried.intermediate_values == {1: 0.5}
    assert retried.user_attrs["run_dir"] == "runs/x/tune/trial_0"  # resumed in the killed trial's folder
    assert faults.WORKER not in retried.system_attrs and faults.HEARTBEAT not in retried.system_attrs
    assert retry.suggest_float("lr", 1e-5, 1e-2, log=True) == killed.params["lr"]


def test_a_worker_asking_while_a_trial_is_taken_over_does_not_add_a_trial_past_the_budget(tmp_path, later, monkeypatch):
    """A stale trial is failed, then its retry is queued: two steps. A worker that asks between them must still see
    the trial's place taken, else the study ends with n_trials + 1."""
    from hftrain.tuning.study import budget_used, claim_trial

    first, second = two_workers(tmp_path)
    start_trial(first, "trial_0")
    later(2.5)
    asked_between = []
    queue_retry = faults.RetryInTrialFolder.__call__

    def other_worker_asks_first(self, study, trial):
        asked_between.append(claim_trial(second, n_trials=1))
        queue_retry(self, study, trial)

    monkeypatch.setattr(faults.RetryInTrialFolder, "__call__", other_worker_asks_first)
    faults.take_over_stale_trials(first)
    assert asked_between == [None]  # the budget of one trial is the stale trial's
    assert budget_used(second) == 1 and claim_trial(second, n_trials=1).number == 1  # the retry, not a new trial
    assert [(t.number, t.state.name) for t in second.get_trials()] == [(0, "FAIL"), (1, "RUNNING")]
    assert faults.TAKEN_OVER not in second.trials[1].system_attrs  # the retry's place is its own while it runs
    assert claim_trial(first, n_trials=1) is None and budget_used(first) == 1


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
    start_trial(second, "trial_1")  # another worker started in the same job (a second srun step)
    faults.take_over_stale_trials(first)
    assert states(first) == ["RUNNING", "RUNNING"]  # workers of one run leave each other's trials alone
    monkeypatch.setenv("SLURM_JOB_ID", "102")
    start_trial(second, "trial_2")

    monkeypatch.setenv("SLURM_JOB_ID", "101")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # job 101 requeued: its trials, not job 102's, within the grace
    faults.take_over_stale_trials(first)
    assert states(first) == ["FAIL", "FAIL", "RUNNING", "WAITING", "WAITING"]
    retry = faults.ask(first)
    assert faults.retried_trial(retry) == ours.number


def test_a_worker_with_nothing_to_start_waits_only_for_silent_trials(tmp_path, monkeypatch, later, capsys):
    first, second = two_workers(tmp_path)
    start_trial(first, "trial_0")
    naps = []
    monkeypatch.setattr(faults.time, "sleep", naps.append)
    said: set[int] = set()
    assert not faults.wait_for_silent_trials(second, said)  # it beats: its worker finishes it, this one may leave
    later(1.6)  # a heartbeat missed: its worker may be gone, so the idle worker stays to resume it
    assert faults.wait_for_silent_trials(second, said) and faults.wait_for_silent_trials(second, said)
    assert naps == [1, 1] and said == {0}
    assert capsys.readouterr().out.count("Trial 0 has sent no heartbeat for 2 s") == 1


def test_a_trial_stopped_by_a_signal_is_queued_again_at_once_outside_slurm(tmp_path, monkeypatch):
    first, _ = two_workers(tmp_path, interval=60)
    trial = start_trial(first, "trial_0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "hftrain-tune")
    monkeypatch.setenv("SLURM_JOB_ID", "101")
    faults.release(first, trial.number)  # a SLURM job: its requeued run takes the trial back
    assert states(first) == ["RUNNING"]
    monkeypatch.delenv("SLURM_NTASKS")
    faults.release(first, trial.number)  # Ctrl-C or SIGTERM: `hftrain tune` run again resumes it first
    assert states(first) == ["FAIL", "WAITING"]


@pytest.mark.processes  # over 3 s: the database is created, and its clock counts whole seconds
def test_a_stale_trial_in_a_database_is_taken_over_the_same_way(tmp_path):
    first, second = two_workers(tmp_path, location=f"sqlite:///{tmp_path / 'study.db'}", grace=1)
    start_trial(first, "trial_0")
    time.sleep(2.1)  # the database's clock, in whole seconds
    faults.take_over_stale_trials(second)
    assert states(second) == ["FAIL", "WAITING"]
    assert faults.ask(second).user_attrs["run_dir"] == "trial_0"


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


def search_task(folder: Path, model: str, fault: dict | None = None) -> tuple[Path, Path]:
    """A text-classification task of 2 epochs of 6 steps, last.ckpt every 2 steps, and a search of 2 trials over
    the learning rate that keeps every trial's checkpoints (to compare weights) and calls a worker dead after 3 s
    without a heartbeat."""
    files = {
        "train": str(write_csv(folder / "train.csv", sentiment_rows(48, seed=1))),
        "validation": str(write_csv(folder / "dev.csv", sentiment_rows(16, seed=2))),
    }
    task = classification_config(
        folder / "task.yaml", model, files, data__batch_size=8, checkpoint__every_n_train_steps=2
    )
    if fault:
        settings = yaml.safe_load(task.read_text())
        settings["trainer"]["callbacks"] = [fault]
        task.write_text(yaml.safe_dump(settings))
    space = {"model.learning_rate": {"low": 1.0e-3, "high": 1.0e-1, "log": True}}
    tune = {"n_trials": 2, "sampler": "random", "pruner": "none", "keep": "all", "space": space}
    search = folder / "search.yaml"
    search.write_text(yaml.safe_dump({"tune": {**tune, "heartbeat_interval": 1, "grace_period": 3}}))
    return task, search


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def max_difference(reference: Path, result: Path) -> float:
    expected, got = weights(reference), weights(result)
    assert expected.keys() == got.keys()
    return max((expected[k].float() - got[k].float()).abs().max().item() for k in expected)


def study_trials(study_dir: Path) -> list[optuna.trial.FrozenTrial]:
    storage = faults.open_storage(str(study_dir / "study.journal"), 1, 3)
    return optuna.load_study(study_name="task", storage=storage).get_trials()


@pytest.mark.processes  # a search killed and run again, as processes
def test_a_killed_search_run_again_resumes_its_trial_to_the_uninterrupted_weights(tiny_bert, tmp_path):
    killer = {"class_path": "faults.KillOnceAtStep", "init_args": {"step": 5, "marker": str(tmp_path / "killed")}}
    task, search = search_task(tmp_path, tiny_bert, killer)
    first = hftrain("tune", "--config", task, "--config", search)
    assert first.returncode == -9, first.stdout[-3000:]  # SIGKILL in trial 0 at step 5, after last.ckpt at step 4
    study = tmp_path / "runs" / "task" / "tune"
    assert [t.state.name for t in study_trials(study)] == ["RUNNING"]  # left running by the dead worker

    second = hftrain("tune", "--config", task, "--config", search)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    trials = study_trials(study)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 2 and [t.state.name for t in trials].count("FAIL") == 1, log[-3000:]
    killed, resumed = trials[0], next(t for t in trials if faults.RETRIED in t.system_attrs)
    assert resumed.system_attrs[faults.RETRIED] == 0 and resumed.params == killed.params
    folder = study / "trial_0"
    assert resumed.user_attrs["folder"] == str(folder.relative_to(tmp_path))
    assert f"continues trial 0, whose worker stopped, in {resumed.user_attrs['folder']}: resumes from" in log
    assert "last.ckpt" in log and "Restored all states from the checkpoint" in log, log[-3000:]
    assert read_results(folder)["global_step"] == 12

    # the same trial, uninterrupted: its own saved config as a fit
    straight = hftrain("fit", "--config", folder / "config.yaml")
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = Path(re.search(r"Run folder: (\S+)", straight.stdout).group(1))
    assert reference.resolve() != folder.resolve()
    worst = max_difference(reference / "checkpoints" / "last.ckpt", folder / "checkpoints" / "last.ckpt")
    assert worst <= 1e-5, f"max weight difference to the uninterrupted trial {worst}"


@pytest.mark.processes  # a search stopped by SIGTERM, as a process
def test_a_search_stopped_by_a_signal_says_how_to_resume_it_and_queues_its_trial(tiny_bert, tmp_path):
    stopper = {"class_path": "faults.SignalAt", "init_args": {"signum": 15, "point": "training_step", "step": 3}}
    task, search = search_task(tmp_path, tiny_bert, stopper)
    stopped = hftrain("tune", "--config", task, "--config", search)
    said = stopped.stdout + stopped.stderr
    assert stopped.returncode == 143, said[-3000:]
    assert re.search(
        r"Stopped by SIGTERM at step \d+; saved \S+last.ckpt: run the same hftrain tune command again, "
        r"and it resumes trial 0 from it first\.",
        said,
    ), said[-3000:]
    assert "--ckpt_path" not in said  # fit's advice: given to tune, it would go to every trial
    assert [t.state.name for t in study_trials(tmp_path / "runs" / "task" / "tune")] == ["FAIL", "WAITING"]


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_a_requeued_worker_of_a_job_array_leaves_its_trial_resumed_to_the_uninterrupted_weights(tiny_bert, tmp_path):
    """scripts/slurm/tune.sbatch as an array of 2 workers, each trial a 2-task DDP run over the cluster's 2 nodes
    (1 CPU each: one worker runs at a time, the other waits in the queue). The first worker's job is requeued
    (`scontrol requeue`) while its ranks are inside optimizer step 3 of trial 0: they finish the step, save and
    stop; the study still ends with exactly n_trials complete, and trial 0, resumed from its checkpoint by whichever
    worker comes to it first, ends with the weights of the same trial run uninterrupted."""
    ready = tmp_path / "ready"
    ready.mkdir()
    pause = {
        "class_path": "faults.PauseOnceInOptimizerStep",
        "init_args": {"step": 3, "seconds": 15, "ready_dir": str(ready)},
    }
    config = scale_config(tmp_path, tiny_bert, pause)
    space = {"model.learning_rate": {"low": 1.0e-3, "high": 1.0e-1, "log": True}}
    tune = {"n_trials": 2, "sampler": "random", "pruner": "none", "keep": "all", "space": space}
    search = tmp_path / "search.yaml"
    search.write_text(yaml.safe_dump({"tune": {**tune, "heartbeat_interval": 2, "grace_period": 20}}))
    (tmp_path / "configs").symlink_to(REPO / "configs")
    array = ["--array=0-1", "--job-name=hftrain-tune-faults", "--output=slurm-%j.out", *SBATCH_LOCAL]
    options = [*CPU_DDP, "--trainer.max_epochs", "1", "--checkpoint.every_n_train_steps", "2"]
    done = subprocess.run(
        ["sbatch", "--parsable", *array, TUNE_SBATCH, config.name, search.name, *options],
        cwd=tmp_path,
        env=job_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    array_job = done.stdout.strip().split(";")[0]

    def logs() -> str:
        return "\n".join(f"--- {t['JobId']}\n{job_log(tmp_path, t['JobId'])}" for t in array_tasks(array_job))

    deadline = time.monotonic() + 600
    while len(list(ready.glob("rank*"))) < 2:  # both ranks of the first worker paused inside step 3
        if any(t.get("JobState") in ENDED for t in array_tasks(array_job)) or time.monotonic() > deadline:
            subprocess.run(["scancel", array_job], timeout=30)
            pytest.fail(f"no worker reached the pause:\n{logs()}")
        time.sleep(0.2)
    paused = (ready / "job").read_text()
    subprocess.run(["scontrol", "requeue", paused], check=True, timeout=30)
    while not all(t.get("JobState") in ENDED for t in array_tasks(array_job)):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", array_job], timeout=30)
            pytest.fail(f"the workers did not end in time:\n{logs()}")
        time.sleep(1)
    tasks = {t["JobId"]: t for t in array_tasks(array_job)}
    assert {t["JobState"] for t in tasks.values()} == {"COMPLETED"} and tasks[paused]["Restarts"] == "1", logs()
    assert "Stopped by SIGTERM at step 4" in job_log(tmp_path, paused), logs()

    study = tmp_path / "runs" / "scale" / "tune"
    storage = faults.open_storage(str(study / "study.journal"), 2, 20)
    trials = optuna.load_study(study_name="scale", storage=storage).get_trials()
    assert [t.state.name for t in trials].count("COMPLETE") + [t.state.name for t in trials].count("PRUNED") == 2
    resumed = next(t for t in trials if t.system_attrs.get(faults.RETRIED) == 0)
    folder = study / "trial_0"
    assert resumed.state.name == "COMPLETE" and resumed.user_attrs["folder"] == str(folder.relative_to(tmp_path))
    assert "continues trial 0" in logs() and "Restored all states from the checkpoint" in logs(), logs()
    assert read_results(folder)["global_step"] == STEPS_PER_EPOCH

    # the same trial, uninterrupted: its saved config through fit.sbatch, on the same 2 ranks
    shutil.copy(folder / "config.yaml", tmp_path / "trial_0.yaml")
    reference_job = submit(tmp_path, tmp_path / "trial_0.yaml")
    info = wait_job(reference_job, tmp_path)
    assert info["JobState"] == "COMPLETED", job_log(tmp_path, reference_job)
    (reference,) = tmp_path.glob(f"runs/*/version_{reference_job}")
    worst = max_difference(reference / "checkpoints" / "last.ckpt", folder / "checkpoints" / "last.ckpt")
    print(f"requeued trial: max weight difference to the uninterrupted run {worst:.2e}")  # shown with -s
    assert worst <= 1e-5, f"max weight difference {worst}"
