"""No shipped config can rot: every YAML in configs/ parses against the code's signatures, and the text
classification ones instantiate (with the tiny model and data shaped like theirs, since the Hub is out
of reach here)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SHARED_DATA, sentiment_rows, write_csv
from helpers import TEXT_CLASSIFICATION, run_cli

from hftrain.cli import HFTrainCLI
from hftrain.core.callbacks import TaskEarlyStopping

CONFIGS = REPO / "configs"
# presets that are layered on top of a task config rather than used alone
PRESET_DIRS = ("callbacks", "trainer")
TASK_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] not in PRESET_DIRS)
PRESETS = sorted(p for d in PRESET_DIRS for p in (CONFIGS / d).glob("*.yaml"))


def name(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


@pytest.mark.parametrize("config", TASK_CONFIGS, ids=name)
def test_task_config_parses(config):
    assert run_cli("fit", "--config", config, "--print_config") == 0


@pytest.mark.parametrize("preset", PRESETS, ids=name)
def test_preset_parses_on_top_of_a_task_config(preset):
    assert run_cli("fit", "--config", CONFIGS / "quickstart.yaml", "--config", preset, "--print_config") == 0


def classification_configs() -> list[Path]:
    return [p for p in TASK_CONFIGS if yaml.safe_load(p.read_text())["model"]["class_path"] == TEXT_CLASSIFICATION]


@pytest.mark.parametrize("config", classification_configs(), ids=name)
def test_text_classification_config_instantiates(config, tiny_bert, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # configs name their files relative to the repository
    data_args = yaml.safe_load(config.read_text())["data"]["init_args"]
    overrides = ["--model.model_name_or_path", tiny_bert]
    local_files = [data_args.get(k) for k in ("train_file", "validation_file") if data_args.get(k)]
    if local_files and not all((REPO / f).is_file() for f in local_files):
        pytest.skip(f"needs {local_files} (../shared/data absent)")
    if data_args.get("dataset_name"):
        # same columns as the Hub dataset, from a local file
        columns = [data_args["text_column"], data_args.get("text_pair_column")]
        rows = [
            {
                **{c: r["text"] for c in columns if c},
                "label": 2.5 if "stsb" in config.name else int(r["label"] == "pos"),
            }
            for r in sentiment_rows(20)
        ]
        overrides += ["--data.dataset_name", "null", "--data.train_file", write_csv(tmp_path / "train.csv", rows)]
    cli = HFTrainCLI(args=["--config", str(config), *map(str, overrides)], run=False)
    assert cli.model.model.config.num_labels == (1 if "stsb" in config.name else 2)
    assert cli.datamodule.tokenizer_name == tiny_bert


def test_early_stopping_preset_follows_the_task_metric(tiny_bert, monkeypatch):
    monkeypatch.chdir(REPO)
    cli = HFTrainCLI(
        args=[
            "--config",
            str(CONFIGS / "quickstart.yaml"),
            "--config",
            str(CONFIGS / "callbacks" / "early_stopping.yaml"),
            "--model.model_name_or_path",
            tiny_bert,
        ],
        run=False,
    )
    stopper = next(c for c in cli.trainer.callbacks if isinstance(c, TaskEarlyStopping))
    stopper.setup(cli.trainer, cli.model, "fit")
    assert (stopper.monitor, stopper.mode, stopper.patience) == ("val/accuracy", "max", 3)


def test_mrpc_local_config_reads_the_glue_tsv(tiny_bert, monkeypatch):
    monkeypatch.chdir(REPO)
    if not (SHARED_DATA / "glue" / "MRPC").is_dir():
        pytest.skip("../shared/data absent")
    cli = HFTrainCLI(
        args=["--config", str(CONFIGS / "glue" / "mrpc_minilm_local.yaml"), "--model.model_name_or_path", tiny_bert],
        run=False,
    )
    raw = cli.datamodule.raw
    assert (len(raw["train"]), len(raw["validation"])) == (3667, 408)
    assert cli.datamodule.label_names == ["0", "1"]


NO_EXTRAS = """
import sys

bert, t5, gpt2 = sys.argv[1:]
from hftrain.metrics.text_generation import scores
from hftrain.tasks.language_modeling import LanguageModeling
from hftrain.tasks.question_answering import QuestionAnswering
from hftrain.tasks.seq2seq import Seq2Seq
from hftrain.tasks.text_classification import TextClassification
from hftrain.tasks.token_classification import TokenClassification

TextClassification(model_name_or_path=bert, label_names=["a", "b"])
TokenClassification(model_name_or_path=bert, label_names=["B-PER", "I-PER", "O"])
QuestionAnswering(model_name_or_path=bert, version_2_with_negative=True)
LanguageModeling(model_name_or_path=gpt2)
for task in ("translation", "summarization"):  # the defaults: BLEU/chrF; ROUGE with stemming
    module = Seq2Seq(model_name_or_path=t5, task=task)
    module.metrics["val"].update(["the cats ran home"], [["a cat runs home"]])
    print(task, {k: round(float(v), 2) for k, v in scores(module.metrics["val"]).items()})
"""


def installed_closure(requirements: list[str]) -> set[str]:
    """The top-level import names of the distributions `requirements` pull in, recursively, extras excluded."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    seen: set[str] = set()
    names: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        key = requirement.name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            continue
        todo += [Requirement(r) for r in dist.requires or []]
        # its modules and its .dist-info folder (which importlib.metadata reads)
        names.update(file.parts[0] for file in dist.files or [] if file.parts[0] != ".." and file.suffix != ".pth")
    return names


def test_every_tasks_defaults_work_without_extras(tiny_bert, tiny_t5, tiny_gpt2, tmp_path):
    """What `pip install hftrain` brings (pyproject's dependencies and theirs, no extras) is enough for every
    task's default settings and metrics, in a fresh interpreter that sees only those packages."""
    import site

    import tomllib

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    allowed = installed_closure(dependencies)
    assert "nltk" in allowed and "sacrebleu" not in allowed
    packages = tmp_path / "site-packages"
    packages.mkdir()
    for folder in site.getsitepackages():
        for entry in Path(folder).iterdir():
            if entry.name in allowed and not (packages / entry.name).exists():
                (packages / entry.name).symlink_to(entry)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(packages)])}
    done = subprocess.run(
        [sys.executable, "-S", "-c", NO_EXTRAS, tiny_bert, tiny_t5, tiny_gpt2],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "summarization {'rouge1'" in done.stdout and "translation {'bleu'" in done.stdout
