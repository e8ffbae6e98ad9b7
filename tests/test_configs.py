"""No shipped config can rot: every YAML in configs/ parses against the code's signatures, and every task config
instantiates (with the task's tiny model) on files in the HF examples' shapes and in the shape of its own data
(the Hub is out of reach here), reading the columns a user would expect without naming them."""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import NEGATIVE, POSITIVE, REPO, SHARED_DATA, sentiment_rows, write_csv
from helpers import run_cli, write_jsonl
from test_multiple_choice import swag_rows

from hftrain.cli import HFTrainCLI
from hftrain.core.callbacks import TaskEarlyStopping
from hftrain.core.errors import HFTrainError

CONFIGS = REPO / "configs"
# presets that are layered on top of a task config rather than used alone
PRESET_DIRS = ("callbacks", "trainer")
SEARCH_DIR = "tune"  # search configs (`tune:` sections), layered on a task config by `hftrain tune`
TASK_CONFIGS = sorted(
    p for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] not in (*PRESET_DIRS, SEARCH_DIR)
)
PRESETS = sorted(p for d in PRESET_DIRS for p in (CONFIGS / d).glob("*.yaml"))
SEARCHES = sorted((CONFIGS / SEARCH_DIR).glob("*.yaml"))


def name(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


@pytest.mark.parametrize("config", TASK_CONFIGS, ids=name)
def test_task_config_parses(config):
    assert run_cli("fit", "--config", config, "--print_config") == 0


@pytest.mark.parametrize("preset", PRESETS, ids=name)
def test_preset_parses_on_top_of_a_task_config(preset):
    assert run_cli("fit", "--config", CONFIGS / "quickstart.yaml", "--config", preset, "--print_config") == 0


@pytest.mark.parametrize("search", SEARCHES, ids=name)
def test_search_config_reads_on_the_task_config_it_names(search, monkeypatch):
    """A shipped search config, on the task config its comment names: its settings and space pass `hftrain tune`'s
    checks, and every trial's fit arguments (each key at a value of its range) parse as fit parses them."""
    from hftrain.tuning.settings import check_settings, parameter_arguments, read_arguments

    monkeypatch.chdir(REPO)
    task = re.search(r"--config (configs/(?!tune/)\S+\.yaml)", search.read_text()).group(1)
    settings, fit_arguments, _ = read_arguments(["--config", task, "--config", str(search)])
    for dimension in check_settings(settings, fit_arguments):
        for value in {dimension.first(), dimension.grid()[-1] if dimension.choices else dimension.high}:
            arguments = parameter_arguments({dimension.key: value})
            assert run_cli("fit", *fit_arguments, *arguments, "--print_config") == 0


# ------------------------------------------------ every task config on files in the HF examples' shapes

TINY_MODELS = {"language_modeling": "tiny_gpt2", "seq2seq": "tiny_t5"}  # the other tasks: tiny_bert
# the text columns of the GLUE Hub datasets, in their order (the configs name none: the guess finds them)
GLUE_TEXTS = {
    "cola": ["sentence"],
    "sst2": ["sentence"],
    "mrpc": ["sentence1", "sentence2"],
    "qqp": ["question1", "question2"],
    "stsb": ["sentence1", "sentence2"],
    "mnli": ["premise", "hypothesis"],
    "qnli": ["question", "sentence"],
    "rte": ["sentence1", "sentence2"],
    "wnli": ["sentence1", "sentence2"],
}
SWAG_COLUMNS = {
    "context_column": "sent1",
    "question_column": "sent2",
    "ending_columns": ["ending0", "ending1", "ending2", "ending3"],
}
NER_TAGS = {**dict.fromkeys(POSITIVE, "B-ORG"), **dict.fromkeys(NEGATIVE, "B-PER")}


def texts(n: int = 8) -> list[str]:
    return [r["text"] for r in sentiment_rows(n)]


def chats() -> list[list[dict[str, str]]]:
    """Conversations in the OpenAI format that TRL's examples and the Hub's chat data sets use."""
    return [[{"role": "user", "content": t}, {"role": "assistant", "content": t.upper()}] for t in texts()]


def ner_rows(words: str, tags: str) -> list[dict]:
    return [{words: t.split(), tags: [NER_TAGS.get(w, "O") for w in t.split()]} for t in texts()]


def squad_rows() -> list[dict]:
    rows = []
    for i, context in enumerate(texts()):
        answer = context.split()[0]
        rows.append(
            {
                "id": f"q{i}",
                "title": "t",
                "context": context,
                "question": "which word comes first ?",
                "answers": {"text": [answer], "answer_start": [0]},
            }
        )
    return rows


def hf_example_file(config: Path, folder: Path) -> tuple[Path, dict]:
    """A file in the shape of the HF example fixture for the config's task, and the settings the data module
    must find in it."""
    task = task_of(config)
    if task == "text_classification":  # run_glue: MRPC/dev.csv, label,sentence1,sentence2
        rows = [{"label": r["label"], "sentence1": r["text"], "sentence2": r["text"]} for r in sentiment_rows(8)]
        return write_csv(folder / "dev.csv", rows), {"text_column": "sentence1", "text_pair_column": "sentence2"}
    if task == "token_classification":  # run_ner: conll/sample.json, words/ner
        return Path(write_jsonl(folder / "sample.json", ner_rows("words", "ner"))), {
            "tokens_column": "words",
            "tag_column": "ner",
            "label_names": ["B-ORG", "B-PER", "O"],
        }
    if task == "question_answering":  # run_qa: SQUAD/sample.json, flat rows under "data"
        (folder / "sample.json").write_text(json.dumps({"version": 2.0, "data": squad_rows()}))
        return folder / "sample.json", {"question_column": "question", "context_column": "context"}
    if task == "seq2seq" and "source_lang" in settings(config)["data"]["init_args"]:  # run_translation: wmt16
        pairs = [{"translation": {"en": t, "ro": t.upper(), "de": t.title()}} for t in texts()]
        return Path(write_jsonl(folder / "sample.json", pairs)), {"source_lang": "en"}
    if task == "seq2seq":  # run_summarization: xsum/sample.json
        rows = [{"document": t, "summary": t.upper(), "id": str(i)} for i, t in enumerate(texts())]
        return Path(write_jsonl(folder / "sample.json", rows)), {
            "source_column": "document",
            "target_column": "summary",
        }
    if task == "multiple_choice":  # run_swag: swag/sample.json, sent1, sent2, ending0..3, label
        return Path(write_jsonl(folder / "sample.json", swag_rows(8, 0))), SWAG_COLUMNS
    if is_chat(config):  # TRL's sft example: conversational rows, a `messages` column
        return Path(write_jsonl(folder / "sample.json", [{"messages": c} for c in chats()])), {
            "messages_column": "messages"
        }
    (folder / "sample_text.txt").write_text("\n\n".join(texts()) + "\n")  # run_clm: sample_text.txt
    return folder / "sample_text.txt", {"text_column": "text"}


def target_file(config: Path, folder: Path) -> tuple[Path, dict]:
    """A file shaped as the data the config targets (its Hub dataset's columns, or the files of ../shared/data
    it names), and the settings the data module must find in it: what the config used to pin."""
    stem, task = config.stem, task_of(config)
    folder.mkdir()
    if stem in GLUE_TEXTS:
        columns = GLUE_TEXTS[stem]
        rows = [
            {**dict.fromkeys(columns, t), "label": 2.5 if stem == "stsb" else i % 2, "idx": i}
            for i, t in enumerate(texts())
        ]
        return Path(write_jsonl(folder / "hub.jsonl", rows)), {
            "text_column": columns[0],
            "text_pair_column": columns[1] if len(columns) == 2 else None,
        }
    if stem == "mrpc_minilm_local":  # the GLUE MRPC TSV: unquoted, with quote characters in the text
        rows = [
            {"Quality": i % 2, "#1 ID": 100 + i, "#2 ID": 200 + i, "#1 String": f'" {t}', "#2 String": t}
            for i, t in enumerate(texts())
        ]
        return write_csv(folder / "train.tsv", rows, delimiter="\t"), {
            "text_column": "#1 String",
            "text_pair_column": "#2 String",
        }
    if stem == "quickstart":
        return REPO / "configs" / "quickstart" / "train.csv", {"text_column": "text", "text_pair_column": None}
    if stem == "conll2003":  # the Hub's columns: id, tokens, pos_tags, chunk_tags, ner_tags
        rows = [
            {"id": str(i), **r, "pos_tags": ["NN"] * len(r["tokens"]), "chunk_tags": ["I-NP"] * len(r["tokens"])}
            for i, r in enumerate(ner_rows("tokens", "ner_tags"))
        ]
        return Path(write_jsonl(folder / "hub.jsonl", rows)), {"tokens_column": "tokens", "tag_column": "ner_tags"}
    if stem == "conll2003_minilm_local":  # CoNLL-2003's "token POS chunk TAG" lines
        lines = ["\n".join(f"{w} NN I-NP {t}" for w, t in zip(r["w"], r["t"], strict=True)) for r in ner_rows("w", "t")]
        (folder / "train.txt").write_text("-DOCSTART- -X- -X- O\n\n" + "\n\n".join(lines) + "\n")
        return folder / "train.txt", {"tokens_column": "tokens", "tag_column": "ner_tags"}
    if task == "question_answering":  # the Hub's squad columns, or SQuAD's nested JSON (../shared/data)
        if "slice" in stem:
            paragraphs = [
                {
                    "context": r["context"],
                    "qas": [{**r, "answers": [{"text": r["answers"]["text"][0], "answer_start": 0}]}],
                }
                for r in squad_rows()
            ]
            nested = {"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}
            (folder / "train.json").write_text(json.dumps(nested))
            return folder / "train.json", {"question_column": "question"}
        return Path(write_jsonl(folder / "hub.jsonl", squad_rows())), {"question_column": "question"}
    if stem == "multi30k_en_de":  # ../shared/data/multi30k: parallel text files
        (folder / "train.de").write_text("\n".join(t.title() for t in texts()) + "\n")
        (folder / "train.en").write_text("\n".join(texts()) + "\n")
        return folder / "train.en", {"target_lang": "de"}
    if stem == "swag":  # the Hub's swag (regular) columns
        rows = [
            {"video-id": "v", "fold-ind": "1", "startphrase": "s", "gold-source": "gold", **r} for r in swag_rows(8, 0)
        ]
        return Path(write_jsonl(folder / "hub.jsonl", rows)), SWAG_COLUMNS
    if task == "multiple_choice":  # scripts/make_choice_data.py's rows: context, question, choices, label
        rows = [
            {
                "id": str(i),
                "context": r["sent1"],
                "question": r["sent2"],
                "choices": [r[f"ending{j}"] for j in range(4)],
            }
            | {"label": r["label"]}
            for i, r in enumerate(swag_rows(8, 0))
        ]
        return Path(write_jsonl(folder / "train.jsonl", rows)), {
            "context_column": "context",
            "question_column": "question",
            "choices_column": "choices",
        }
    if task == "seq2seq":  # the Hub's columns: xsum's are those of run_summarization's fixture, wmt16's its own
        return hf_example_file(config, folder)
    if stem.startswith("capybara"):  # trl-lib/Capybara's columns: source, messages, num_turns
        rows = [{"source": "Airoboros", "messages": c, "num_turns": 1} for c in chats()]
        return Path(write_jsonl(folder / "hub.jsonl", rows)), {"messages_column": "messages"}
    (folder / "valid.txt").write_text(" = A = \n\n" + "\n\n".join(texts()) + "\n")  # WikiText-2's raw text
    return folder / "valid.txt", {"text_column": "text"}


def file_settings(config: Path, file: Path) -> dict[str, str]:
    """`file` as every file the config reads (a train file replaces a Hub dataset)."""
    names = {k for k in settings(config)["data"]["init_args"] if k.endswith("_file")} | {
        "train_file",
        "validation_file",
    }
    return dict.fromkeys(sorted(names), str(file))


def tiny_model(config: Path, request) -> str:
    if is_chat(config):
        return request.getfixturevalue("tiny_chat_gpt2")
    return request.getfixturevalue(TINY_MODELS.get(task_of(config), "tiny_bert"))


def is_chat(config: Path) -> bool:
    """Whether the config trains on conversations: its model needs a chat template."""
    return bool(settings(config)["data"]["init_args"].get("messages_column"))


def settings(config: Path) -> dict:
    return yaml.safe_load(config.read_text())


def task_of(config: Path) -> str:
    """The task module's name: `text_classification`, `seq2seq`, …"""
    return settings(config)["data"]["class_path"].split(".")[-2]


@pytest.mark.parametrize("config", TASK_CONFIGS, ids=name)
def test_task_config_reads_files_in_the_hf_examples_shape(config, request, tmp_path, monkeypatch):
    """A shipped config pins nothing the data module finds itself: pointed at the HF example's file for its task
    (only the file paths changed), it reads the columns the example script would; on a file shaped as its own
    target data (Hub columns, ../shared/data), the columns it used to pin. mrpc_minilm_local names the GLUE
    TSVs' label column, which run_glue's CSV lacks: the error names the setting to change."""
    monkeypatch.chdir(REPO)  # configs name their files relative to the repository
    file, expected = hf_example_file(config, tmp_path)
    model = tiny_model(config, request)
    args = ["--config", str(config), f"--model.model_name_or_path={model}"]
    args += [f"--data.{k}={v}" for k, v in file_settings(config, file).items()]
    if settings(config)["model"]["init_args"].get("load_in_4bit"):  # 4 bits need a CUDA GPU: the rest runs here
        args.append("--model.load_in_4bit=false")
    if config.stem == "mrpc_minilm_local":
        with pytest.raises((HFTrainError, ValueError), match=r"no column .Quality. \(data.label_column\)"):
            HFTrainCLI(args=args, run=False)
    else:
        data = HFTrainCLI(args=args, run=False).datamodule
        assert {k: getattr(data, k) for k in expected} == expected
    # the config's own data module on its own data's shape (the model is built above already)
    file, expected = target_file(config, tmp_path / "target")
    data_config = settings(config)["data"]
    module, _, name = data_config["class_path"].rpartition(".")
    data_class = getattr(importlib.import_module(module), name)
    data = data_class(**{**data_config["init_args"], "tokenizer_name": model, **file_settings(config, file)})
    assert {k: getattr(data, k) for k in expected} == expected
    assert len(data.raw["train"]) > 0


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
