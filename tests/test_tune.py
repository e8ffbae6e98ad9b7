"""`hftrain tune` / `hftrain.tune`: trials are fit runs in the study folder, the study continues to its total, and
bad search configs are refused in one paragraph before anything is written."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import sentiment_rows, write_csv
from helpers import CPU_DDP, TESTS, classification_config, free_port, hftrain, hftrain_ok, run_cli, tree_digest
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import hftrain as hftrain_api
from hftrain.core import pretrained, runs
from hftrain.core.cache import TokenizedCache
from hftrain.core.errors import HFTrainError
from hftrain.tuning import outputs
from hftrain.tuning import study as study_module
from hftrain.tuning.settings import TuneSettings
from hftrain.tuning.study import open_storage

SPACE = {"model.learning_rate": {"low": 1.0e-4, "high": 1.0e-1, "log": True}, "data.batch_size": [8, 16]}


@pytest.fixture
def task(tiny_bert, tmp_path) -> Path:
    """A text-classification config of two short epochs (2 steps each) on the tiny model, whose longer rows are
    cut (which leaves the tokenizer's truncation set)."""
    files = {
        "train": str(write_csv(tmp_path / "train.csv", sentiment_rows(48, seed=1))),
        "validation": str(write_csv(tmp_path / "dev.csv", sentiment_rows(16, seed=2))),
    }
    return classification_config(
        tmp_path / "task.yaml", tiny_bert, files, trainer__limit_train_batches=2, data__max_length=4
    )


def search_config(path: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump({"tune": {"n_trials": 2, "space": SPACE, **settings}}))
    return path


def hparams_of(folder: Path) -> set[str]:
    events = EventAccumulator(str(folder))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    return {h.name for h in experiment.hparam_infos}


@pytest.mark.processes  # five trials of fit: tens of seconds
def test_tune_runs_trials_as_fit_runs_and_continues_to_the_total(task, tmp_path, capsys, monkeypatch):
    loads = []
    load = pretrained.AutoTokenizer.from_pretrained
    monkeypatch.setattr(pretrained.AutoTokenizer, "from_pretrained", lambda *a, **k: loads.append(a) or load(*a, **k))
    tokenized = []
    write = TokenizedCache._write
    monkeypatch.setattr(TokenizedCache, "_write", lambda cache, *a: tokenized.append(cache.path) or write(cache, *a))
    search = search_config(tmp_path / "search.yaml", pruner="none")
    assert run_cli("tune", "--config", task, "--config", search) == 0
    assert len(loads) == 1  # the trials (and the probe before them) share the tokenizer
    assert len(tokenized) == 1  # and the second trial reads the first's cache, though the tokenizer was used
    study = Path("runs/task/tune")
    printed = capsys.readouterr().out
    assert "Trial 2 of 2" in printed and "Best so far" in printed
    rows = list(csv.DictReader((study / "trials.csv").open()))
    assert [(r["number"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "COMPLETE")]
    assert {"params.model.learning_rate", "params.data.batch_size", "value", "duration_s"} <= set(rows[0])
    best = max(rows, key=lambda r: float(r["value"]))
    for row in rows:  # each trial a normal run folder; only the best keeps its model and checkpoints
        folder = study / f"trial_{row['number']}"
        assert (folder / "config.yaml").is_file() and (folder / "results.json").is_file()
        assert {"learning_rate", "batch_size"} <= hparams_of(folder)  # one HPARAMS view over runs/task/tune
        kept = row is best
        assert (folder / "hf_model").is_dir() == kept and (folder / "checkpoints").is_dir() == kept
    assert {p.stem for p in study.glob("*.png")} >= {"history", "parallel_coordinates"}
    # best.yaml is the best trial's config, runnable by fit as is
    assert yaml.safe_load((study / "best.yaml").read_text())["data"]["init_args"]["batch_size"] == int(
        best["params.data.batch_size"]
    )
    assert run_cli("fit", "--config", study / "best.yaml", "--print_config") == 0
    # the first trial runs Lightning's sanity-check validation; later trials of the worker skip its cost
    sanity = [yaml.safe_load((study / f"trial_{n}" / "config.yaml").read_text())["trainer"] for n in (0, 1)]
    assert [trainer["num_sanity_val_steps"] for trainer in sanity] == [None, 0]  # None: Lightning's 2 batches

    # the same search again, from Python, with a larger total: one more trial, numbered on
    result = hftrain_api.tune(task, search, tune={"n_trials": 3})
    assert list(result.trials["number"]) == [0, 1, 2] and set(result.trials["state"]) == {"COMPLETE"}
    assert result.best_value == result.trials["value"].max()
    assert set(result.best_params) == set(SPACE)
    run = result.best_run
    assert run.folder == Path(result.study.best_trial.user_attrs[outputs.FOLDER])
    assert run.best is not None
    # the search's end was not left in the environment: torchrun's ranks started later read it as their trial
    assert "HFTRAIN_TUNE_TRIAL" not in os.environ


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"space": {"model.learning_rat": [1e-3]}}, "Did you mean --model.learning_rate?"),
        ({"space": {"trainer.max_epoch": [1, 2]}}, "Did you mean --trainer.max_epochs?"),
        ({"space": {"model.learning_rate": {"low": 1e-3, "high": 1e-4}}}, "inverted range"),
        ({"space": {"model.learning_rate": {"low": 1e-3, "high": 1e-3}}}, "empty range"),
        ({"space": {"data.batch_size": []}}, "empty list of choices"),
        ({"space": {"model.learning_rate": {"low": 0.0, "high": 1e-3, "log": True}}}, "log scale"),
        ({"n_trials": 0}, "tune.n_trials must be"),
        ({"sampler": "tpee"}, "tune.sampler must be one of"),
        ({"n_trial": 3}, "Did you mean tune.n_trials?"),
    ],
)
def test_bad_search_config_is_one_paragraph_before_anything_runs(task, tmp_path, capsys, settings, message):
    search = tmp_path / "search.yaml"
    search.write_text(yaml.safe_dump({"tune": {"n_trials": 2, "space": SPACE} | settings}))
    assert run_cli("tune", "--config", task, "--config", search) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not Path("runs").exists()


def test_a_range_written_as_yaml_reads_it_is_a_range_of_numbers(task, tmp_path):
    """PyYAML reads `1e-5` as a string (YAML 1.1 wants `1.0e-5`): the way most people write a learning rate."""
    from hftrain.tuning.settings import check_settings, read_arguments

    search = tmp_path / "search.yaml"
    search.write_text("tune:\n  space:\n    model.learning_rate: {low: 1e-5, high: 5e-4, log: true}\n")
    settings, fit_arguments, _ = read_arguments(["--config", str(task), "--config", str(search)])
    [dimension] = check_settings(settings, fit_arguments)
    assert (dimension.low, dimension.high, dimension.log) == (1e-5, 5e-4, True)


@pytest.mark.processes  # loads the model to learn the monitored metric first
def test_a_storage_that_cannot_be_opened_is_said(task, tmp_path, capsys):
    search = search_config(tmp_path / "search.yaml", storage="sqlite:////no/such/folder/study.db")
    assert run_cli("tune", "--config", task, "--config", search) == 2
    err = capsys.readouterr().err
    assert "tune.storage 'sqlite:////no/such/folder/study.db' cannot be opened" in err and err.count("\n") == 1


@pytest.mark.processes  # loads the model to learn the monitored metric first
@pytest.mark.parametrize(
    ("other", "message"),
    [
        ({"direction": "minimize", "monitor": "val/loss"}, "searches val/loss (minimize)"),
        ({"direction": "maximize", "monitor": "val/accuracy", "space": '{"x": [4]}'}, "another search space"),
    ],
)
def test_an_existing_study_of_another_search_loses_nothing(task, tmp_path, capsys, other, message):
    folder = Path("runs/task/tune")
    storage = open_storage(TuneSettings(), folder)
    study = optuna.create_study(study_name="task", storage=storage, direction=other["direction"])
    study.set_user_attr(study_module.MONITOR, other["monitor"])
    if "space" in other:
        study.set_user_attr(study_module.SPACE, other["space"])
    before = tree_digest(folder)
    assert run_cli("tune", "--config", task, "--config", search_config(tmp_path / "search.yaml")) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert tree_digest(folder) == before


class RecordRankValues(Callback):
    """Test scaffolding: each rank writes the values its trial trained with and the step it stopped at."""

    def on_fit_end(self, trainer, pl_module) -> None:
        folder = Path(runs.run_folder(trainer))  # every rank asks (a broadcast)
        record = {
            "learning_rate": pl_module.learning_rate,
            "batch_size": trainer.datamodule.batch_size,
            "global_step": trainer.global_step,
        }
        (folder / f"rank_{trainer.global_rank}.json").write_text(json.dumps(record))


def recording_task(tiny_bert: str, tmp_path: Path) -> Path:
    """A task config of 3 epochs of 2 steps on 2 ranks, judged by the validation loss, whose ranks record their
    values (`RecordRankValues`)."""
    files = {
        "train": str(write_csv(tmp_path / "train.csv", sentiment_rows(48, seed=1))),
        "validation": str(write_csv(tmp_path / "dev.csv", sentiment_rows(16, seed=2))),
    }
    return classification_config(
        tmp_path / "task.yaml",
        tiny_bert,
        files,
        trainer__limit_train_batches=2,
        trainer__max_epochs=3,
        trainer__callbacks=[{"class_path": "test_tune.RecordRankValues"}],
        checkpoint__monitor="val/loss",
        checkpoint__mode="min",
    )


def rank_records(trial_folder: Path) -> list[dict]:
    return [json.loads((trial_folder / f"rank_{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.processes  # two DDP processes on CPU
def test_ddp_trials_use_rank_zeros_values_and_stop_together_when_pruned(tiny_bert, tmp_path):
    """Lightning's launcher re-runs `hftrain tune` for rank 1: it must train rank 0's trial with rank 0's values,
    and stop at the validation where rank 0's pruner stopped it. The grid's order under this seed runs the small
    learning rate first; the large one then has a worse validation loss and is pruned before its last epoch."""
    task = recording_task(tiny_bert, tmp_path)
    search = tmp_path / "search.yaml"
    space = {"model.learning_rate": [1.0e-2, 1.0], "data.batch_size": [8]}
    settings = {"n_trials": 2, "sampler": "grid", "seed": 1, "space": space, "keep": "all"}
    settings["pruner_options"] = {"n_startup_trials": 1}
    search.write_text(yaml.safe_dump({"tune": settings}))
    output = hftrain_ok("tune", "--config", task, "--config", search, *CPU_DDP, "--trainer.devices", 2)
    study = Path("runs/task/tune")
    trials = optuna.load_study(study_name="task", storage=open_storage(TuneSettings(), study)).trials
    assert [(t.state.name, t.params["model.learning_rate"]) for t in trials] == [("COMPLETE", 1e-2), ("PRUNED", 1.0)]
    for trial in trials:
        folder = study / f"trial_{trial.number}"
        ranks = rank_records(folder)
        assert ranks[0] == ranks[1]  # the same values, and the same last step
        assert ranks[0]["learning_rate"] == trial.params["model.learning_rate"]
        validations = max(trial.intermediate_values)
        assert ranks[0]["global_step"] == 2 * validations  # 2 steps an epoch, stopped at its last validation
        assert validations == 3 if trial.state.name == "COMPLETE" else validations < 3
        assert (folder / "results.json").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()  # keep: all
    assert output.count("Study folder:") == 1  # rank 1 ran the trials, and left the study to rank 0


@pytest.mark.processes  # two processes started by torchrun
def test_ranks_started_outside_receive_rank_zeros_trials(tiny_bert, tmp_path):
    """Ranks that torchrun (or Slurm, one task per rank) starts all run `hftrain tune` from the start: they join one
    process group before the first trial, and only rank 0 asks the study."""
    task = recording_task(tiny_bert, tmp_path)
    search = search_config(tmp_path / "search.yaml", pruner="none", sampler="random")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", 2, "--master_port", free_port()]
    command += ["-m", "hftrain", "tune", "--config", task, "--config", search, *CPU_DDP, "--trainer.devices", "2"]
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run(list(map(str, command)), env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    study = Path("runs/task/tune")
    trials = optuna.load_study(study_name="task", storage=open_storage(TuneSettings(), study)).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]  # rank 1 asked for none
    for trial in trials:
        ranks = rank_records(study / f"trial_{trial.number}")
        assert ranks[0] == ranks[1] and ranks[0]["learning_rate"] == trial.params["model.learning_rate"]
        assert ranks[0]["global_step"] == 6


@pytest.mark.processes  # three workers at once
def test_workers_started_together_share_the_study_and_its_exact_total(task, tmp_path):
    """Three `hftrain tune` processes on one study of 4 trials: every trial number once, exactly 4 trials run, each
    in its own folder; a worker that asked past the total ran nothing for it."""
    search = search_config(tmp_path / "search.yaml", n_trials=4, sampler="random", pruner="none")
    workers = [hftrain("tune", "--config", task, "--config", search, wait=False) for _ in range(3)]
    try:
        printed = [worker.communicate(timeout=900)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert [worker.returncode for worker in workers] == [0, 0, 0], "\n".join(printed)
    study = Path("runs/task/tune")
    trials = optuna.load_study(study_name="task", storage=open_storage(TuneSettings(), study)).trials
    ran = [t.number for t in trials if t.state.name == "COMPLETE"]
    assert len(ran) == 4 and all(t.user_attrs.get("surplus") for t in trials if t.state.name != "COMPLETE")
    assert sorted(p.name for p in study.glob("trial_*")) == sorted(f"trial_{n}" for n in ran)
    assert [int(row["number"]) for row in csv.DictReader((study / "trials.csv").open())] == ran
    best = optuna.load_study(study_name="task", storage=open_storage(TuneSettings(), study)).best_trial.number
    assert [n for n in ran if (study / f"trial_{n}" / "hf_model").is_dir()] == [best]  # freed by whichever worker
    assert sum(output.count("Trial ") for output in printed) >= 4


def test_a_worker_that_asked_past_the_total_runs_nothing(monkeypatch):
    """The race `claim_trial` is for: a worker counted one trial left, but another asked first. Its trial, numbered
    after the total, is marked failed (surplus) before any value is drawn, and the study keeps n_trials."""
    from hftrain.tuning import study as study_module

    study = optuna.create_study()
    assert study_module.claim_trial(study, 2) is not None and study_module.claim_trial(study, 2) is not None
    assert study_module.claim_trial(study, 2) is None  # counted: nothing asked
    used = study_module.budget_used  # what a worker saw before the other asked: one place left
    monkeypatch.setattr(study_module, "budget_used", lambda study, before=None: used(study, before) - (before is None))
    assert study_module.claim_trial(study, 2) is None
    surplus = study.trials[-1]
    assert (surplus.number, surplus.state.name, surplus.params) == (2, "FAIL", {})
    assert surplus.user_attrs == {"surplus": True}
    assert len(study.get_trials(states=study_module.COUNTED)) == 2


def test_a_grid_search_tries_each_point_once_when_a_trial_fails_on_its_own():
    """A failed grid trial leaves its place in the budget free; Optuna's grid sampler then hands out a point
    already tried. The search ends instead, as `study.optimize` does."""
    from hftrain.tuning.settings import dimensions

    settings = TuneSettings(sampler="grid", space={"data.batch_size": [8, 16]})
    space = dimensions(settings)
    study = optuna.create_study(sampler=study_module.sampler_of(settings, space))
    points = []
    for state in ("FAIL", "COMPLETE"):  # the first fails on its own (a NaN loss, say)
        trial = study_module.claim_trial(study, 2)
        points.append(trial.suggest_categorical("data.batch_size", [8, 16]))
        study.tell(trial, 0.5 if state == "COMPLETE" else None, state=optuna.trial.TrialState[state])
    assert sorted(points) == [8, 16]
    assert study_module.claim_trial(study, 2) is None  # both points tried: no third trial runs either again
    assert [t.user_attrs for t in study.trials] == [{}, {}, {"surplus": True}]


def test_samplers_and_pruners_are_optunas_and_seeded():
    from hftrain.tuning.settings import dimensions
    from hftrain.tuning.study import grid_size, pruner_of, sampler_of

    ranges = {"a": {"low": 1, "high": 4}, "b": [0.1, 0.2], "c": {"low": 0.0, "high": 0.2, "step": 0.1}}
    space = dimensions(TuneSettings(space=ranges))
    assert [d.grid() for d in space] == [[1, 2, 3, 4], [0.1, 0.2], [0.0, 0.1, 0.2]] and grid_size(space) == 24
    draws = []
    for _ in range(2):
        study = optuna.create_study(sampler=sampler_of(TuneSettings(sampler="random", seed=3), space))
        draws.append(study.ask().suggest_float("x", 0, 1))
    assert draws[0] == draws[1]
    assert isinstance(sampler_of(TuneSettings(), space), optuna.samplers.TPESampler)
    assert isinstance(sampler_of(TuneSettings(sampler="grid"), space), optuna.samplers.GridSampler)
    assert isinstance(pruner_of(TuneSettings()), optuna.pruners.MedianPruner)
    assert isinstance(pruner_of(TuneSettings(pruner="hyperband")), optuna.pruners.HyperbandPruner)
    assert isinstance(pruner_of(TuneSettings(pruner="none")), optuna.pruners.NopPruner)
    with pytest.raises(HFTrainError, match="grid sampler cannot list"):
        dimensions(TuneSettings(space={"x": {"low": 0.0, "high": 1.0}}))[0].grid()


def _draw(study: optuna.Study, settings: TuneSettings, space) -> tuple[int, float]:
    from hftrain.tuning.study import reseed_for

    trial = study.ask()
    reseed_for(study, trial, settings, space)
    return trial.number, trial.suggest_float("lr", 1e-5, 1e-3, log=True)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_each_trial_draws_from_a_seed_of_its_own(sampler):
    """Workers started together, and reruns continuing a study, each hold a sampler seeded with tune.seed: without
    a seed per trial they all suggested the same values."""
    from hftrain.tuning.settings import dimensions
    from hftrain.tuning.study import sampler_of

    settings = TuneSettings(sampler=sampler, seed=7, space={"lr": {"low": 1e-5, "high": 1e-3, "log": True}})
    space = dimensions(settings)
    storage = optuna.storages.InMemoryStorage()
    draws = []
    for _ in range(3):  # a fresh worker process each time on the shared study: its own sampler, seeded alike
        worker = optuna.create_study(
            study_name="s", storage=storage, sampler=sampler_of(settings, space), load_if_exists=True
        )
        draws.append(_draw(worker, settings, space))
    assert len({value for _, value in draws}) == 3, draws
    alone = optuna.create_study(sampler=sampler_of(settings, space))  # the same search in one worker: same values
    assert [_draw(alone, settings, space) for _ in range(3)] == draws


def test_help_lists_the_search_settings(capsys):
    from hftrain.command import main

    main(["tune", "--help"])
    printed = capsys.readouterr().out
    assert all(f"--tune.{name} " in printed for name in ("space", "n_trials", "sampler", "pruner", "storage", "keep"))
    assert "default_factory" not in printed
