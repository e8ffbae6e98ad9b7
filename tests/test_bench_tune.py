"""scripts/bench_tune.py compares like with like: its HF Trainer side searches the space `hftrain tune` searches,
under arguments the HF Trainer really sets, and with the same sampler seed both draw the same trials."""

import re
import subprocess
import sys

import optuna
import pytest
from conftest import REPO, minilm_path, sentiment_rows, write_csv
from helpers import classification_config
from transformers import TrainingArguments

from hftrain.tuning.search import Search
from hftrain.tuning.settings import TuneSettings
from hftrain.tuning.study import sampler_of

sys.path.insert(0, str(REPO / "scripts"))
import bench_tune  # noqa: E402
from bench_tasks import DATA  # noqa: E402


def test_hf_side_draws_the_trials_hftrain_tune_draws(tiny_bert, tmp_path):
    files = {"train": str(write_csv(tmp_path / "train.csv", sentiment_rows(8, seed=1)))}
    task = classification_config(tmp_path / "task.yaml", tiny_bert, files)
    settings = TuneSettings(space=bench_tune.SPACE, n_trials=4, seed=0)
    search = Search(settings, ["--config", str(task)])
    search.study = optuna.create_study(direction="maximize", sampler=sampler_of(settings, search.space))
    hf_study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    for value in (0.5, 0.7, 0.6, 0.8):
        assignment = search.next_trial()
        hf_trial = hf_study.ask()
        hf_values = bench_tune.hf_space(hf_trial, seed=0)
        assert hf_values == {bench_tune.HF_NAMES[key]: drawn for key, drawn in assignment["params"].items()}
        assert hf_trial.params == assignment["params"]
        search.study.tell(assignment["number"], value)
        hf_study.tell(hf_trial, value)


def test_hf_side_sets_what_it_searches():
    """`hyperparameter_search` sets each value with the type of the argument's current value and skips names
    TrainingArguments lacks (a warning only): every name must exist, and a warmup fraction stay a fraction."""
    arguments = bench_tune.hf_arguments(bench_tune.parse_args(["--epochs", "2"]))
    assert isinstance(arguments, TrainingArguments)
    for name in bench_tune.HF_NAMES.values():
        assert hasattr(arguments, name), name
    assert type(arguments.warmup_steps)(0.15) == 0.15


@pytest.mark.processes  # a fit and two searches of two trials each on all-MiniLM-L6-v2: two minutes or more
@pytest.mark.skipif(minilm_path() is None or not (DATA / "glue" / "MRPC").is_dir(), reason="needs MiniLM and MRPC")
def test_bench_tune_prints_the_fit_and_both_searches(tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "bench_tune.py"), "--variants", "fit,hf:none,hftrain:none"]
    command += ["--train-rows", "32", "--eval-rows", "32", "--epochs", "1", "--trials", "2"]
    command += ["--workdir", str(tmp_path)]
    printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "| fit (shipped config) | 1 |" in printed  # the plain fit's value, the one to beat
    assert "| hf:none | 2 |" in printed and "| hftrain:none | 2 |" in printed  # trials complete, none pruned
    timed = re.findall(r"start-up (\d+\.\d+) s, first step (\d+\.\d+) s", printed)
    assert len(timed) == 4 and all(float(a) > 0 and float(b) > 0 for a, b in timed)  # both clocks, every trial
    assert printed.count("start-up median") == 2  # each search's row
