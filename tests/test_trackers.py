"""Every logger Lightning ships keeps the run folder `runs/<name>/version_N` (config, checkpoints, results.json,
hf_model/) and `--ckpt_path best|last`, and the trackers get the run's hyperparameters, metrics and resolved
config: MLflow read back from a real tracking server with `MlflowClient`, W&B from its offline run file."""

import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import classification_config, free_port, hftrain, run_cli

from hftrain.core.runs import read_results

STEPS = 6  # 96 training rows, batch 16


def fit_files(sentiment_files: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in sentiment_files.items() if k in ("train", "validation")}


def check_run_folder(run: Path, global_step: int) -> None:
    """The run folder a TensorBoard run would have, whatever the logger; its config names no folder, so that
    running it again starts a new run."""
    assert (run / "config.yaml").is_file() and (run / "hf_model" / "model.safetensors").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["default_root_dir"] is None and saved["checkpoint"]["dirpath"] is None
    assert saved["trainer"]["logger"]["init_args"]["save_dir"] == "runs"
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert read_results(run)["global_step"] == global_step
    assert [p.name for p in run.parent.iterdir()] == ["version_0"]


def continue_and_evaluate(config: Path, logger: list[str], run: Path, command=run_cli) -> None:
    """`validate --ckpt_path best` scores the best checkpoint; `fit --ckpt_path last` continues the run in its
    folder."""
    assert command("validate", "--config", config, *logger, "--ckpt_path", "best") == 0
    assert read_results(run)["validate"]["val/loss"] == pytest.approx(read_results(run)["best"]["val/loss"])
    assert command("fit", "--config", config, *logger, "--ckpt_path", "last", "--trainer.max_epochs", "2") == 0
    check_run_folder(run, global_step=2 * STEPS)


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on 127.0.0.1 (SQLite backend, artifacts in the test folder); its URL."""
    pytest.importorskip("mlflow")
    store, port = tmp_path / "mlflow", free_port()
    store.mkdir()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "a")]
    with (store / "server.log").open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # the server imports for a minute on a busy machine
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5)
                break
            except OSError:
                log_text = (store / "server.log").read_text()[-2000:]
                assert server.poll() is None, f"mlflow server exited: {log_text}"
                assert time.monotonic() < deadline, f"mlflow server not up after 300 s: {log_text}"
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.service
def test_mlflow_server_gets_params_metrics_and_config_and_the_run_folder_stays(
    tiny_bert, sentiment_files, tmp_path, mlflow_server
):
    from mlflow.tracking import MlflowClient

    config = classification_config(tmp_path / "tracked.yaml", tiny_bert, fit_files(sentiment_files))
    logger = ["--trainer.logger", "lightning.pytorch.loggers.MLFlowLogger"]
    logger += ["--trainer.logger.init_args.tracking_uri", mlflow_server]
    logger += ["--trainer.logger.init_args.experiment_name", "tracked", "--trainer.max_epochs", "1"]
    assert run_cli("fit", "--config", config, *logger) == 0
    run = tmp_path / "runs" / "tracked" / "version_0"
    check_run_folder(run, global_step=STEPS)
    saved_config = (run / "config.yaml").read_text()
    continue_and_evaluate(config, logger, run)

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tracked")
    fit, validate, resumed = sorted(client.search_runs([experiment.experiment_id]), key=lambda r: r.info.start_time)
    assert fit.info.status == "FINISHED"
    assert fit.data.params["learning_rate"] == "0.01" and fit.data.params["batch_size"] == "16"
    assert len(client.get_metric_history(fit.info.run_id, "val/accuracy")) == 1  # one epoch, one validation
    assert fit.data.metrics["val/best_accuracy"] == pytest.approx(read_results(run)["best"]["val/accuracy"])
    assert len(client.get_metric_history(fit.info.run_id, "train/loss")) == STEPS
    downloaded = Path(client.download_artifacts(fit.info.run_id, "config.yaml", str(tmp_path / "download")))
    assert downloaded.read_text() == saved_config
    assert yaml.safe_load(saved_config)["trainer"]["logger"]["init_args"]["tracking_uri"] == mlflow_server
    assert "val/loss" in validate.data.metrics
    assert [a.path for a in client.list_artifacts(validate.info.run_id)] == ["config-1.yaml"]
    assert len(client.get_metric_history(resumed.info.run_id, "val/accuracy")) == 1  # the second epoch's
    assert [a.path for a in client.list_artifacts(resumed.info.run_id)] == ["config-2.yaml"]


def wandb_records(path: Path) -> list:
    """The records of an offline W&B run file, parsed by W&B's own protobuf schema. wandb 0.31 reads these files
    only in its Go core, so the framing (LevelDB's log format: 32 KiB blocks of records with a 7-byte header of
    checksum, length and type, a record cut across blocks in parts) is undone here."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, part, records = path.read_bytes(), 32768, 7, b"", []  # after the file's 7-byte header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        part, pos = part + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last part of one
            records.append(wandb_internal_pb2.Record.FromString(part))
            part = b""
    return records


@pytest.mark.service  # W&B runs its own service process, offline too
def test_wandb_offline_keeps_the_run_folder_and_records_the_run(tiny_bert, sentiment_files, tmp_path):
    """As commands: W&B finishes a run (and its file) as the process ends, and an in-process second command
    would log into the first one's run, which Lightning's logger never finishes."""
    pytest.importorskip("wandb")

    def command(*args) -> int:
        done = hftrain(*args, env={"WANDB_SILENT": "true"})
        assert done.returncode == 0, done.stdout[-3000:]
        header = next(line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Run folder: "))
        assert "tensorboard" not in header  # the header offers TensorBoard only to TensorBoard's runs
        return done.returncode

    config = classification_config(tmp_path / "offline.yaml", tiny_bert, fit_files(sentiment_files))
    logger = ["--trainer.logger", "lightning.pytorch.loggers.WandbLogger", "--trainer.logger.init_args.offline", "true"]
    logger += ["--trainer.max_epochs", "1"]
    assert command("fit", "--config", config, *logger) == 0
    run = tmp_path / "runs" / "offline" / "version_0"
    check_run_folder(run, global_step=STEPS)
    continue_and_evaluate(config, logger, run, command)

    fit, *later = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))  # W&B's files are in the run folder
    assert len(later) == 2  # the validate's run and the continued fit's
    params, metrics, artifacts = {}, set(), []
    for record in wandb_records(fit):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            params.update({item.key: item.value_json for item in record.config.update})
        elif kind == "history":
            metrics.update(item.key or "/".join(item.nested_key) for item in record.history.item)
        elif kind == "artifact":
            artifacts.append((record.artifact.type, [entry.path for entry in record.artifact.manifest.contents]))
    assert params.get("learning_rate") == "0.01", params
    assert {"val/accuracy", "val/best_accuracy", "train/loss"} <= metrics
    assert artifacts == [("config", ["config.yaml"])]
