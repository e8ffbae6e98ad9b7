"""scripts/slurm/fit.sbatch on a real SLURM cluster: slurmctld and two slurmd "nodes" on this machine
(scripts/slurm/local_cluster.sh), one CPU task per node joined over gloo.

The batch script is submitted unchanged; only its cluster-specific #SBATCH lines are overridden on the
`sbatch` command line (no GPUs, one task and one CPU per node), and the GPU settings of the slurm trainer
preset are swapped for CPU ones by hftrain flags, as a user of a CPU cluster would. Signals are sent the way
SLURM sends them (`scancel --signal=USR1` is what `#SBATCH --signal=SIGUSR1@90` does before a time limit),
and Lightning requeues the job with the real `scontrol requeue`.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, sentiment_rows, write_csv
from helpers import CPU_DDP, classification_config, run_cli

from hftrain.core.runs import read_results

pytestmark = pytest.mark.slurm

TESTS = Path(__file__).resolve().parent
CLUSTER = REPO / "scripts" / "slurm" / "local_cluster.sh"
FIT_SBATCH = REPO / "scripts" / "slurm" / "fit.sbatch"
# fit.sbatch's cluster-specific #SBATCH lines for this cluster: two 1-CPU nodes without GPUs
SBATCH_LOCAL = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=00:20:00"]
STEPS_PER_EPOCH = 96 // (2 * 8)  # 96 training rows, batches of 8 on each of 2 ranks
KILL_WAIT = 30  # slurm.conf KillWait: SIGTERM to SIGKILL
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local cluster, started for this session unless it already runs (then left running). Where Slurm
    cannot run (not root, no package mirror) the tests skip, unless HFTRAIN_REQUIRE_SLURM=1 (CI) fails them."""
    running = subprocess.run(["bash", CLUSTER, "status"], capture_output=True).returncode == 0
    if not running:
        started = subprocess.run(["bash", CLUSTER, "start"], capture_output=True, text=True, timeout=900)
        if started.returncode == 3 and os.environ.get("HFTRAIN_REQUIRE_SLURM") != "1":  # "cannot run here"
            pytest.skip(started.stderr.strip().splitlines()[-1])
        assert started.returncode == 0, started.stdout + started.stderr
    yield
    if not running:
        subprocess.run(["bash", CLUSTER, "stop"], capture_output=True, timeout=300)


def job_env(folder: Path) -> dict[str, str]:
    """What sbatch passes on to the job: this Python first on PATH, the repository and the tests importable,
    one thread per task (the nodes share this machine's cores), caches inside the test's folder, no Hub."""
    return {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]),
        "OMP_NUM_THREADS": "1",
        "HFTRAIN_CACHE": str(folder / "hftrain-cache"),
        "HF_DATASETS_CACHE": str(folder / "datasets-cache"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def scale_config(folder: Path, model: str, fault: dict | None = None) -> Path:
    """The config of test_distributed's 2-process runs (rows split evenly over 2 ranks), in `folder`."""
    files = {
        "train": str(write_csv(folder / "train.csv", sentiment_rows(96, seed=1))),
        "validation": str(write_csv(folder / "dev.csv", sentiment_rows(32, seed=2))),
    }
    config = classification_config(folder / "scale.yaml", model, files, data__batch_size=8, data__eval_batch_size=8)
    if fault:
        settings = yaml.safe_load(config.read_text())
        settings["trainer"]["callbacks"] = [fault]
        config.write_text(yaml.safe_dump(settings))
    return config


def submit(folder: Path, config: Path) -> str:
    """`sbatch scripts/slurm/fit.sbatch CONFIG` from `folder`, which links configs/ as the repository does."""
    if not (folder / "configs").exists():
        (folder / "configs").symlink_to(REPO / "configs")
    done = subprocess.run(
        ["sbatch", "--parsable", *SBATCH_LOCAL, FIT_SBATCH, config.name, *CPU_DDP],
        cwd=folder,
        env=job_env(folder),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def job_info(job: str) -> dict[str, str]:
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30)
    return dict(field.split("=", 1) for field in shown.stdout.split() if "=" in field)


def wait_job(job: str, folder: Path, seconds: float = 600) -> dict[str, str]:
    """The job's final `scontrol show job` fields once it has ended; its log on failure or timeout."""
    deadline = time.monotonic() + seconds
    while (info := job_info(job)).get("JobState") not in ENDED:
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job], timeout=30)
            pytest.fail(f"job {job} did not end within {seconds} s ({info.get('JobState')}):\n{job_log(folder, job)}")
        time.sleep(1)
    return info


def job_log(folder: Path, job: str) -> str:
    log = folder / f"slurm-{job}.out"
    return log.read_text()[-6000:] if log.is_file() else "(no log)"


def wait_for_ranks(ready: Path, job: str, folder: Path, seconds: float = 300) -> list[int]:
    """The pids the ranks wrote into `ready` once both have (they are then paused inside a step)."""
    deadline = time.monotonic() + seconds
    while len(files := sorted(ready.glob("rank*"))) < 2 or not all(f.read_text() for f in files):
        if job_info(job).get("JobState") in ENDED or time.monotonic() > deadline:
            pytest.fail(f"the ranks of job {job} did not reach the pause:\n{job_log(folder, job)}")
        time.sleep(0.1)
    return [int(f.read_text()) for f in files]


def seconds_until_gone(pids: list[int], limit: float = 2 * KILL_WAIT) -> float:
    start = time.monotonic()
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() - start < limit:
        time.sleep(0.1)
    return time.monotonic() - start


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def straight_run(slurm_cluster, tiny_bert, tmp_path_factory) -> Path:
    """The run folder of an uninterrupted 2-node job: the reference the other jobs are held to."""
    folder = tmp_path_factory.mktemp("slurm-straight")
    job = submit(folder, scale_config(folder, tiny_bert))
    info = wait_job(job, folder)
    assert info["JobState"] == "COMPLETED", job_log(folder, job)
    return folder / "runs" / "scale" / f"version_{job}"


def test_two_nodes_train_as_one_world_and_validate_like_one_process(straight_run, monkeypatch):
    job = straight_run.name.removeprefix("version_")
    log = job_log(straight_run.parents[2], job)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    assert [p.name for p in straight_run.parent.iterdir()] == [straight_run.name]  # one run folder
    results = read_results(straight_run)
    assert results["global_step"] == 2 * STEPS_PER_EPOCH
    assert [h["epoch"] for h in results["history"]] == [0, 1]
    assert (straight_run / "hf_model" / "model.safetensors").is_file()

    # the job's last validation, over 2 ranks on 2 nodes, scored its weights as one process does
    monkeypatch.chdir(straight_run.parents[2])
    assert run_cli("validate", "--config", "scale.yaml", "--ckpt_path", "last") == 0
    one_process = read_results(straight_run)["validate"]
    assert {"val/accuracy", "val/f1", "val/loss"} <= set(one_process)
    assert {k: v for k, v in results["final"].items() if k in one_process} == pytest.approx(one_process)


def test_requeue_signal_inside_an_optimizer_step_resumes_to_the_uninterrupted_weights(
    straight_run, tiny_bert, tmp_path
):
    """SIGUSR1 reaches both ranks while they are inside optimizer step 3 (of 6 in epoch 0): the ranks finish the
    step, save hpc_ckpt_1.ckpt and requeue the job, which comes back with the same id and resumes from it."""
    ready = tmp_path / "ready"
    ready.mkdir()
    pause = {"step": 3, "seconds": 8, "ready_dir": str(ready)}
    config = scale_config(tmp_path, tiny_bert, {"class_path": "faults.PauseInOptimizerStep", "init_args": pause})
    job = submit(tmp_path, config)
    pids = wait_for_ranks(ready, job, tmp_path)
    subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
    exit_seconds = seconds_until_gone(pids)
    info = wait_job(job, tmp_path)
    log = job_log(tmp_path, job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log
    assert exit_seconds < KILL_WAIT / 2, f"the ranks took {exit_seconds:.0f} s to exit after the requeue:\n{log}"

    run = tmp_path / "runs" / "scale" / f"version_{job}"
    assert [p.name for p in run.parent.iterdir()] == [run.name]
    assert "Stopped by SIGUSR1 at step 4" in log and "Requeued SLURM job" in log, log  # after the step it hit
    assert "Restored all states from the checkpoint at" in log and "hpc_ckpt_1.ckpt" in log, log
    assert not list(run.glob("hpc_ckpt_*.ckpt"))  # removed once the resumed run saved a newer checkpoint

    expected, got = read_results(straight_run), read_results(run)
    reference = weights(straight_run / "checkpoints" / "last.ckpt")
    result = weights(run / "checkpoints" / "last.ckpt")
    worst = max((reference[k].float() - result[k].float()).abs().max().item() for k in reference)
    print(f"requeued run: max weight difference to the uninterrupted run {worst:.2e}")  # shown with -s
    validated = "validations (epoch, step)"
    assert {
        "global_step": got["global_step"],
        validated: [(h["epoch"], h["step"]) for h in got["history"]],
        "max weight difference <= 1e-5": worst <= 1e-5,
    } == {
        "global_step": 2 * STEPS_PER_EPOCH,
        validated: [(h["epoch"], h["step"]) for h in expected["history"]],
        "max weight difference <= 1e-5": True,
    }, f"max weight difference {worst}"


@pytest.mark.parametrize("paused", [[0, 1], [1]], ids=["all-ranks-in-step", "rank0-in-collective"])
def test_ranks_exit_promptly_on_sigterm(slurm_cluster, tiny_bert, tmp_path, paused):
    """`scancel` sends SIGTERM (SIGKILL KillWait s later) while rank 1 is inside an optimizer step and rank 0
    is either there too or already in the next step's collectives: every rank stops, at the same step, without
    an error and long before SIGKILL."""
    ready = tmp_path / "ready"
    ready.mkdir()
    pause = {"step": 3, "seconds": 5, "ready_dir": str(ready), "ranks": paused}
    config = scale_config(tmp_path, tiny_bert, {"class_path": "faults.PauseInOptimizerStep", "init_args": pause})
    job = submit(tmp_path, config)
    pids = wait_for_ranks(ready, job, tmp_path)
    subprocess.run(["scancel", job], check=True, timeout=30)
    exit_seconds = seconds_until_gone(pids)
    info = wait_job(job, tmp_path)
    log = job_log(tmp_path, job)
    assert info["JobState"] == "CANCELLED"
    assert exit_seconds < KILL_WAIT / 2, f"the ranks took {exit_seconds:.0f} s to exit:\n{log}"
    # every rank saved at the same step and stopped with SIGTERM's status; none was left to crash alone
    assert "Traceback" not in log and "Connection closed" not in log, log
    assert "Stopped by SIGTERM at step" in log and set(re.findall(r"Exited with exit code (\d+)", log)) <= {"143"}, log
    assert (tmp_path / "runs" / "scale" / f"version_{job}" / "hpc_ckpt_1.ckpt").is_file()


def array_tasks(job: str) -> list[dict[str, str]]:
    """`scontrol show job` fields of each task of job array `job`."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30)
    return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in shown.stdout.splitlines() if line]


@pytest.mark.parametrize("launch", ["fit.sbatch", "without-srun"])
def test_array_tasks_started_together_get_a_run_folder_each(slurm_cluster, tiny_bert, tmp_path, launch):
    """Two tasks of a job array, one config, on two nodes, go on at one moment (a barrier once the model is
    loaded): two run folders, each complete. Through fit.sbatch (srun) a task's folder is named after its own job
    id; a task that runs hftrain without srun (one process per task, as a sweep's often do) claims a version_N."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    ready.mkdir()
    barrier = {"class_path": "faults.StartTogether", "init_args": {"ready_dir": str(ready), "go": str(go)}}
    config = scale_config(tmp_path, tiny_bert, barrier)
    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    array = ["--array=0-1", "--nodes=1", "--cpus-per-task=1", "--time=00:20:00", "--output=slurm-%j.out"]
    if launch == "fit.sbatch":
        (tmp_path / "configs").symlink_to(REPO / "configs")
        command = ["--ntasks-per-node=1", "--gpus-per-node=0", FIT_SBATCH, config.name, *CPU_DDP, *short]
    else:
        command = ["--wrap", f"python -m hftrain fit --config {config.name} {' '.join(short)}"]
    done = subprocess.run(
        ["sbatch", "--parsable", *array, *command], cwd=tmp_path, env=job_env(tmp_path), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 600
    while len(list(ready.iterdir())) < 2:  # both tasks have loaded the model and wait at the barrier
        if any(t.get("JobState") in ENDED for t in array_tasks(job)) or time.monotonic() > deadline:
            subprocess.run(["scancel", job], timeout=30)
            pytest.fail("\n".join(job_log(tmp_path, t["JobId"]) for t in array_tasks(job)))
        time.sleep(0.2)
    go.touch()
    while not all(t.get("JobState") in ENDED for t in array_tasks(job)):
        assert time.monotonic() < deadline, f"the tasks of job array {job} did not end in time"
        time.sleep(1)
    tasks = array_tasks(job)
    logs = "\n".join(job_log(tmp_path, t["JobId"]) for t in tasks)
    assert [t["JobState"] for t in tasks] == ["COMPLETED", "COMPLETED"], logs
    folders = sorted((tmp_path / "runs" / "scale").iterdir())
    expected = [f"version_{t['JobId']}" for t in tasks] if launch == "fit.sbatch" else ["version_0", "version_1"]
    assert sorted(f.name for f in folders) == sorted(expected), logs
    for folder in folders:
        assert [p.name for p in folder.glob("config*.yaml")] == ["config.yaml"]
        assert read_results(folder)["global_step"] == 2
        assert (folder / "hf_model" / "model.safetensors").is_file()


def test_two_nodes_write_the_tokenized_cache_once_and_read_the_same_data(slurm_cluster, tiny_bert, tmp_path):
    """Both nodes' first process runs Lightning's `prepare_data` into the one `$HFTRAIN_CACHE` they share: one
    writes (each write slowed by 3 s, so the other is there at the same time), the other waits and reads it."""
    log = tmp_path / "cache.log"
    config = scale_config(
        tmp_path, tiny_bert, fault={"class_path": "faults.SlowCacheWrites", "init_args": {"log": str(log)}}
    )
    settings = yaml.safe_load(config.read_text())
    settings["trainer"]["max_steps"] = 1
    config.write_text(yaml.safe_dump(settings))
    job = submit(tmp_path, config)
    info = wait_job(job, tmp_path)
    assert info["JobState"] == "COMPLETED", job_log(tmp_path, job)
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [line[0] for line in lines].count("write") == 1, lines
    reads = [line for line in lines if line[0] == "read"]
    assert len(reads) == 2 and reads[0][2] == reads[1][2], lines
