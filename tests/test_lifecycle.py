"""Every fit ends evaluated and resumes exactly from any interruption: a signal inside a training step, an
optimizer step, a validation or a checkpoint write; `best` is always a validated state; `--ckpt_path
best|last` never picks another run; any logger keeps the run folder's name."""

import math
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from conftest import sentiment_rows, write_csv
from helpers import classification_config, run_cli
from lightning.pytorch import LightningModule, Trainer

from hftrain.cli import HFTrainCLI
from hftrain.core.callbacks import TaskCheckpoint, ranking_key
from hftrain.core.runs import read_results

STEPS_PER_EPOCH = 12  # 96 training rows, batch 8


def files(folder: Path) -> dict[str, str]:
    return {
        "train": str(write_csv(folder / "train.csv", sentiment_rows(96, seed=1))),
        "validation": str(write_csv(folder / "dev.csv", sentiment_rows(32, seed=2))),
    }


def config(folder: Path, model: str, name: str, fault: dict | None = None, **overrides) -> Path:
    settings = {"data__batch_size": 8, "trainer__max_epochs": 2, "checkpoint__every_n_train_steps": 3, **overrides}
    path = classification_config(folder / f"{name}.yaml", model, files(folder), **settings)
    if fault:
        content = yaml.safe_load(path.read_text())
        content["trainer"]["callbacks"] = [fault]
        path.write_text(yaml.safe_dump(content))
    return path


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def validations(run: Path) -> list[tuple[int, int]]:
    return [(h["epoch"], h["step"]) for h in read_results(run)["history"]]


@pytest.fixture(scope="module")
def straight(tiny_bert, tmp_path_factory) -> Path:
    """The run folder of an uninterrupted run: the reference the interrupted ones are held to."""
    folder, cwd = tmp_path_factory.mktemp("straight"), os.getcwd()
    os.chdir(folder)
    try:
        assert run_cli("fit", "--config", config(folder, tiny_bert, "run")) == 0
    finally:
        os.chdir(cwd)
    return folder / "runs" / "run" / "version_0"


@pytest.mark.parametrize(
    ("signum", "point", "step"),
    [
        (signal.SIGTERM, "optimizer_step", 4),
        (signal.SIGINT, "training_step", 13),
        (signal.SIGTERM, "validation", STEPS_PER_EPOCH),
        (signal.SIGINT, "checkpoint_save", 6),
    ],
    ids=["sigterm-in-optimizer-step", "ctrl-c-in-training-step", "sigterm-in-validation", "ctrl-c-in-checkpoint-save"],
)
def test_a_signal_anywhere_stops_at_the_next_boundary_and_resumes_exactly(
    straight, tiny_bert, tmp_path, capsys, signum, point, step
):
    fault = {"class_path": "faults.SignalAt", "init_args": {"signum": int(signum), "point": point, "step": step}}
    assert run_cli("fit", "--config", config(tmp_path, tiny_bert, "run", fault)) == 128 + signum
    err = capsys.readouterr().err
    run = tmp_path / "runs" / "run" / "version_0"
    stopped_at = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert f"Stopped by {signal.Signals(signum).name} at step {stopped_at}" in err and "--ckpt_path last" in err
    assert stopped_at in (step, step + 1)  # the step it landed in, or the next boundary

    assert run_cli("fit", "--config", config(tmp_path, tiny_bert, "run"), "--ckpt_path", "last") == 0
    assert [p.name for p in run.parent.iterdir()] == ["version_0"]  # resumed in its own folder
    assert read_results(run)["global_step"] == read_results(straight)["global_step"] == 2 * STEPS_PER_EPOCH
    assert validations(run) == validations(straight) == [(0, STEPS_PER_EPOCH), (1, 2 * STEPS_PER_EPOCH)]
    reference, result = weights(straight / "checkpoints" / "last.ckpt"), weights(run / "checkpoints" / "last.ckpt")
    worst = max((reference[k].float() - result[k].float()).abs().max().item() for k in reference)
    assert worst <= 1e-5, f"{point}: max weight difference {worst}"


def test_max_steps_mid_epoch_ends_with_a_validation_of_the_final_weights(tiny_bert, tmp_path):
    for max_steps in (5, 1):
        path = config(tmp_path, tiny_bert, f"steps{max_steps}", trainer__max_steps=max_steps)
        assert run_cli("fit", "--config", path) == 0
        run = tmp_path / "runs" / f"steps{max_steps}" / "version_0"
        results = read_results(run)
        assert results["global_step"] == max_steps
        assert results["final"]["step"] == max_steps  # final describes the final weights
        assert results["best"] is not None and results["best_checkpoint"]
        assert (run / "hf_model" / "model.safetensors").is_file()


def test_step_checkpoints_are_resume_points_and_never_best_unless_validated(tiny_bert, tmp_path):
    path = config(tmp_path, tiny_bert, "steps", checkpoint__every_n_train_steps=5, trainer__max_epochs=1)
    assert run_cli("fit", "--config", path) == 0
    run = tmp_path / "runs" / "steps" / "version_0"
    results = read_results(run)
    assert results["best_checkpoint"].endswith(f"epoch=0-step={STEPS_PER_EPOCH}.ckpt")  # the one validation
    saved = {p.name for p in (run / "checkpoints").iterdir()}
    assert saved == {"last.ckpt", f"epoch=0-step={STEPS_PER_EPOCH}.ckpt"}
    # last.ckpt is the best state here: a link, not a second copy of the weights
    assert (run / "checkpoints" / "last.ckpt").is_symlink()
    assert Path(results["best_checkpoint"]).samefile(run / "checkpoints" / "last.ckpt")


@pytest.mark.processes  # runs killed and resumed as processes
def test_ckpt_path_last_names_the_newest_run_when_it_has_no_checkpoint(tiny_bert, tmp_path, capsys):
    assert run_cli("fit", "--config", config(tmp_path, tiny_bert, "run", trainer__max_epochs=1)) == 0
    killed = {"class_path": "faults.KillAtStep", "init_args": {"step": 1}}
    from helpers import hftrain

    assert hftrain("fit", "--config", config(tmp_path, tiny_bert, "run", killed)).returncode == -9
    assert run_cli("fit", "--config", config(tmp_path, tiny_bert, "run"), "--ckpt_path", "last") == 2
    err = capsys.readouterr().err
    assert "version_1 has no last checkpoint" in err and "version_0" in err and "init_args.version" in err
    assert read_results(tmp_path / "runs" / "run" / "version_0")["global_step"] == STEPS_PER_EPOCH  # untouched


def test_another_logger_keeps_the_run_folder_and_best_last(tiny_bert, tmp_path):
    csv = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir", "runs"]
    path = config(tmp_path, tiny_bert, "named", trainer__max_epochs=1)
    assert run_cli("fit", "--config", path, *csv) == 0
    run = tmp_path / "runs" / "named" / "version_0"
    assert (run / "metrics.csv").is_file() and (run / "hf_model").is_dir()
    for which in ("last", "best"):
        assert run_cli("validate", "--config", path, *csv, "--ckpt_path", which) == 0
    assert read_results(run)["validate"]["val/loss"] == pytest.approx(read_results(run)["final"]["val/loss"])
    assert [p.name for p in run.parent.iterdir()] == ["version_0"]


class ConstantAccuracy(LightningModule):
    """Validation accuracy 0.5 at every epoch while the validation loss falls: a tie on the monitored metric."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/accuracy", 0.5)
        self.log("val/loss", 1.0 / (1 + self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)

    val_dataloader = train_dataloader


def test_a_tie_on_the_monitored_metric_goes_to_the_lower_validation_loss(tmp_path):
    checkpoint = TaskCheckpoint(dirpath=tmp_path, monitor="val/accuracy", mode="max", save_last=True)
    trainer = Trainer(max_epochs=3, callbacks=[checkpoint], logger=False, enable_progress_bar=False)
    trainer.fit(ConstantAccuracy())
    assert Path(checkpoint.best_model_path).name == "epoch=2-step=6.ckpt"  # loss 1/3 beats 1/2 and 1
    key = ranking_key("val/accuracy", "max")
    history = [{"val/accuracy": 0.5, "val/loss": loss, "step": s} for s, loss in ((2, 1.0), (4, 0.5), (6, 1 / 3))]
    assert min(history, key=key)["step"] == 6
    assert key({"val/accuracy": 0.6, "val/loss": 9.0}) < key({"val/accuracy": 0.5, "val/loss": math.inf})


def test_seed_everything_sets_the_data_order_unless_the_data_seed_is_given(tiny_bert, tmp_path):
    path = config(tmp_path, tiny_bert, "seeded")
    assert HFTrainCLI(args=["--config", str(path), "--seed_everything", "7"], run=False).datamodule.seed == 7
    given = ["--config", str(path), "--seed_everything", "7", "--data.seed", "3"]
    assert HFTrainCLI(args=given, run=False).datamodule.seed == 3


def test_save_top_k_above_one_keeps_the_best_validations_by_the_task_metric(tiny_bert, tmp_path):
    """The HF Trainer's save_total_limit; Lightning alone refuses save_top_k > 1 without a monitor."""
    path = config(tmp_path, tiny_bert, "topk", trainer__max_epochs=3, checkpoint__every_n_train_steps=0)
    assert run_cli("fit", "--config", path, "--checkpoint.save_top_k", "2") == 0
    run = tmp_path / "runs" / "topk" / "version_0"
    kept = sorted(p.name for p in (run / "checkpoints").glob("epoch=*.ckpt"))
    assert len(kept) == 2
    history = read_results(run)["history"]
    ranked = sorted(history, key=ranking_key("val/accuracy", "max"))[:2]
    assert kept == sorted(f"epoch={h['epoch']}-step={h['step']}.ckpt" for h in ranked)
