"""Seq2seq: data shapes and checks, the batch the model sees, metric values, a translation the model learns.

The tiny T5 uses the unigram tokenizer of `scripts/make_seq2seq_model.py` trained on the test text; the tiny
BART a byte-level BPE, so both tokenizer families the task meets in practice are exercised.
"""

import json
import random
from pathlib import Path

import pytest
import yaml
from conftest import CIPHER, REPO, SHARED_DATA, SOURCE_WORDS
from helpers import load_script, write_jsonl

from hftrain.cli import HFTrainCLI, main
from hftrain.core.errors import HFTrainError
from hftrain.core.runs import read_results
from hftrain.metrics.text_generation import generation_metrics, scores
from hftrain.tasks.seq2seq import Seq2Seq, Seq2SeqData


# a word-for-word substitution cipher: learnable only if labels, collator, generation and decoding are right
def cipher_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(SOURCE_WORDS) for _ in range(rng.randint(3, 6))]
        rows.append({"source": " ".join(words), "target": " ".join(CIPHER[w] for w in words)})
    return rows


def test_model_script_tokenizer_is_t5_like():
    tokenizer = load_script("make_seq2seq_model").train_unigram_tokenizer(
        ["a red cat runs", "ein roter hund"] * 50, vocab_size=40
    )
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("a red cat").input_ids
    assert ids[-1] == 1 and tokenizer.decode(ids, skip_special_tokens=True) == "a red cat"


@pytest.fixture
def cipher_files(tmp_path) -> dict[str, str]:
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", cipher_rows(1280, seed=1)),
        "validation": write_jsonl(tmp_path / "dev.jsonl", cipher_rows(48, seed=2)),
        "predict": write_jsonl(tmp_path / "predict.jsonl", [{"source": r["source"]} for r in cipher_rows(8, 3)]),
    }


def texts(data: Seq2SeqData, split: str) -> tuple[list | None, list | None]:
    """A split's sources and targets (None without targets)."""
    dataset = data.raw[split]
    return data.texts(dataset, "source"), data.texts(dataset, "target") if data.has_texts(
        dataset.features, "target"
    ) else None


def write_parallel(folder: Path, stem: str, rows: list[dict[str, str]], src="en", tgt="de") -> str:
    (folder / f"{stem}.{src}").write_text("".join(r["source"] + "\n" for r in rows))
    (folder / f"{stem}.{tgt}").write_text("".join(r["target"] + "\n" for r in rows))
    return str(folder / f"{stem}.{src}")


# ---------------------------------------------------------------------------------------------- data


def test_batches_pad_labels_with_ignore_index_and_add_the_prefix(tiny_t5, cipher_files):
    data = Seq2SeqData(
        tokenizer_name=tiny_t5,
        train_file=cipher_files["train"],
        validation_file=cipher_files["validation"],
        source_prefix="translate: ",
        batch_size=8,
    )
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "row"}
    tokenizer = data.tokenizer
    row = batch["row"][0]  # batches are formed longest first: the row's id says which example it is
    first = data.raw["validation"][row["id"]]
    # the raw source (no prefix) and gold target ride along for predictions and examples
    assert row == {"id": row["id"], "source": first["source"], "gold": first["target"]}
    assert tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True) == "translate: " + first["source"]
    labels = batch["labels"]
    lengths = (labels != -100).sum(-1)
    assert lengths.min() < labels.shape[1], "rows of different length must be padded"
    assert not (labels == tokenizer.pad_token_id).any(), "label padding must be -100, not the pad token"
    row = labels[0][labels[0] != -100]
    assert row[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(row, skip_special_tokens=True) == first["target"]


@pytest.fixture
def t5_without_post_processor(tiny_t5, tmp_path) -> str:
    """The tiny T5 with a tokenizer that appends nothing (a custom or from-scratch tokenizer)."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "t5-no-post-processor"
    shutil.copytree(tiny_t5, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.backend_tokenizer.post_processor = None
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_targets_end_in_eos_also_when_the_tokenizer_does_not_add_it(t5_without_post_processor, cipher_files):
    data = Seq2SeqData(
        tokenizer_name=t5_without_post_processor,
        train_file=cipher_files["train"],
        validation_file=cipher_files["validation"],
        max_target_length=4,  # the targets have 3 to 6 words
    )
    tokenizer = data.tokenizer
    assert tokenizer("rot katze").input_ids[-1] != tokenizer.eos_token_id  # the tokenizer appends nothing
    data.setup("fit")
    labels = data.datasets["validation"]["labels"]
    targets = texts(data, "validation")[1]
    for row, target in zip(labels, targets, strict=True):  # cut to 3 tokens + EOS, or whole + EOS
        assert row == [*tokenizer(target).input_ids[:3], tokenizer.eos_token_id]


def test_sources_and_targets_cut_at_their_lengths_are_counted(tiny_t5, cipher_files):
    data = Seq2SeqData(
        tokenizer_name=tiny_t5, validation_file=cipher_files["validation"], max_length=4, max_target_length=5
    )
    sources, targets = texts(data, "validation")
    source_lengths = [len(data.tokenizer(s).input_ids) for s in sources]
    target_lengths = [len(data.tokenizer(text_target=t).input_ids) for t in targets]
    with pytest.warns(UserWarning) as said:
        data.setup("validate")
    messages = [str(w.message) for w in said]
    for rows, setting, limit, lengths, effect in (
        ("sources", "max_length", 4, source_lengths, "the model reads only their first 4 tokens"),
        ("targets", "max_target_length", 5, target_lengths, "the model learns to write only their first 5 tokens"),
    ):
        cut = [n for n in lengths if n > limit]
        assert 0 < len(cut) < len(lengths)
        expected = (
            f"{len(cut)} of {len(lengths)} {rows} in the validation split ({cipher_files['validation']}) are longer "
            f"than data.{setting}={limit} tokens (the longest has {max(cut)}): {effect}. Raise data.{setting} to "
            "keep them."
        )
        assert expected in messages
    assert max(len(ids) for ids in data.datasets["validation"]["labels"]) == 5


def test_a_tokenizer_without_eos_is_refused_for_targets(t5_without_post_processor, cipher_files):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(t5_without_post_processor)
    tokenizer.eos_token = None
    tokenizer.save_pretrained(t5_without_post_processor)
    data = Seq2SeqData(tokenizer_name=t5_without_post_processor, train_file=cipher_files["train"])
    with pytest.raises(HFTrainError, match="no end-of-sequence token, which seq2seq training"):
        data.setup("fit")


def test_reads_hub_translation_shape_flat_columns_and_parallel_text(tiny_t5, tmp_path):
    rows = cipher_rows(6, seed=4)
    nested = write_jsonl(
        tmp_path / "nested.jsonl", [{"translation": {"en": r["source"], "de": r["target"]}} for r in rows]
    )
    flat = tmp_path / "flat.csv"
    flat.write_text("document,summary\n" + "".join(f"{r['source']},{r['target']}\n" for r in rows))
    parallel = write_parallel(tmp_path, "train", rows)
    shapes = [
        {"train_file": nested, "source_lang": "en", "target_lang": "de"},
        {"train_file": str(flat), "source_column": "document", "target_column": "summary"},
        {"train_file": parallel, "source_lang": "en", "target_lang": "de"},
    ]
    for shape in shapes:
        data = Seq2SeqData(tokenizer_name=tiny_t5, validation_split_percentage=0, **shape)
        sources, targets = texts(data, "train")
        assert (sources, targets) == ([r["source"] for r in rows], [r["target"] for r in rows]), shape


def test_parallel_predict_file_needs_no_target_side(tiny_t5, tmp_path):
    (tmp_path / "new.en").write_text("red cat\nbig dog\n")
    data = Seq2SeqData(
        tokenizer_name=tiny_t5, predict_file=str(tmp_path / "new.en"), source_lang="en", target_lang="de"
    )
    assert texts(data, "predict") == (["red cat", "big dog"], None)


def test_parallel_files_of_unequal_length_name_both_files_and_counts(tiny_t5, tmp_path):
    source = write_parallel(tmp_path, "train", cipher_rows(5, seed=5))
    (tmp_path / "train.de").write_text("eins\nzwei\n")
    with pytest.raises(HFTrainError, match=r"train\.en \(5 lines\) and .*train\.de \(2 lines\)"):
        Seq2SeqData(tokenizer_name=tiny_t5, train_file=source, source_lang="en", target_lang="de")


def test_bad_input_errors_say_where(tiny_t5, tmp_path):
    rows = cipher_rows(4, seed=6)
    source = write_parallel(tmp_path, "train", rows)
    lines = [r["target"] for r in rows]
    lines[2] = " "
    (tmp_path / "train.de").write_text("\n".join(lines) + "\n")
    with pytest.raises(HFTrainError, match=r"target text at .*train\.de, line 3"):
        Seq2SeqData(tokenizer_name=tiny_t5, train_file=source, source_lang="en", target_lang="de")

    (tmp_path / "train.de").unlink()
    with pytest.raises(HFTrainError, match=r"no parallel file .*train\.de"):
        Seq2SeqData(tokenizer_name=tiny_t5, train_file=source, source_lang="en", target_lang="de")

    nested = write_jsonl(tmp_path / "nested.jsonl", [{"translation": {"en": "a", "ro": "b"}}] * 3)
    with pytest.raises(HFTrainError, match=r"no language 'de' in its 'translation' column; it has en, ro"):
        Seq2SeqData(tokenizer_name=tiny_t5, train_file=nested, source_lang="en", target_lang="de")

    flat = write_jsonl(tmp_path / "flat.jsonl", [{"document": "a", "summary": "b"}] * 3)
    with pytest.raises(HFTrainError, match=r"no column 'text' \(data.source_column\).*document, summary"):
        Seq2SeqData(tokenizer_name=tiny_t5, train_file=flat, source_column="text", target_column="summary")

    empty = write_jsonl(tmp_path / "empty.jsonl", [{"source": "a", "target": "b"}, {"source": "c", "target": ""}])
    with pytest.raises(HFTrainError, match=r"target text at .*empty.jsonl, row 2 \('target'"):
        Seq2SeqData(tokenizer_name=tiny_t5, train_file=empty, validation_split_percentage=0)

    with pytest.raises(HFTrainError, match="both data.source_lang and data.target_lang"):
        Seq2SeqData(tokenizer_name=tiny_t5, train_file=flat, source_lang="en")


# ---------------------------------------------------------------------------------------------- metrics


def test_translation_metrics_match_sacrebleu():
    import sacrebleu

    preds = ["the cat sat on the mat", "a quick brown fox jumps", "hello there general kenobi"]
    refs = ["the cat sat on a mat", "the quick brown fox jumped", "hello there general kenobi"]
    metrics = generation_metrics("translation")
    metrics.update(preds[:2], [[r] for r in refs[:2]])
    metrics.update(preds[2:], [[r] for r in refs[2:]])
    values = scores(metrics)
    assert values["bleu"].item() == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score, abs=0.01)
    assert values["chrf"].item() == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score, abs=0.01)


@pytest.mark.parametrize(
    ("preds", "refs"),
    [
        # short outputs, some exactly right, no 4-gram matching: unsmoothed BLEU is 0, sacrebleu's is not
        (
            ["rot katze isst gross alt", "blau hund laeuft", "gross", "alt vogel isst", ""],
            ["rot katze schlaeft gross alt", "blau hund", "klein", "alt vogel schlaeft", "gruen"],
        ),
        # partly right longer outputs: the 4-gram order has matches in one row only
        (["the cat sat on the mat today", "a dog ran"], ["the cat sat on a mat today", "the dog ran far"]),
        # no output longer than two words: the 3- and 4-gram orders are never tried
        (["rot katze", "hund"], ["rot katze isst", "hund laeuft"]),
    ],
)
def test_bleu_and_chrf_equal_sacrebleu_defaults_on_short_partial_outputs(preds, refs):
    import sacrebleu

    metrics = generation_metrics("translation")
    for start in range(0, len(preds), 2):  # several updates, as batches
        metrics.update(preds[start : start + 2], [[r] for r in refs[start : start + 2]])
    values = scores(metrics)
    assert values["bleu"].item() == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score, abs=1e-4)
    assert values["chrf"].item() == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score, abs=1e-4)


def test_chrf_takes_the_best_of_several_references_as_sacrebleu():
    import sacrebleu

    preds, refs_a, refs_b = ["rot katze isst", "blau hund"], ["rot hund isst", "blau hund"], ["rot katze", "gross"]
    metrics = generation_metrics("translation")
    metrics.update(preds, [[a, b] for a, b in zip(refs_a, refs_b, strict=True)])
    values = scores(metrics)
    assert values["chrf"].item() == pytest.approx(sacrebleu.corpus_chrf(preds, [refs_a, refs_b]).score, abs=1e-4)
    assert values["bleu"].item() == pytest.approx(sacrebleu.corpus_bleu(preds, [refs_a, refs_b]).score, abs=1e-4)


def test_validation_encodes_each_batch_once_and_scores_what_plain_generation_gives(tiny_t5, cipher_files):
    """Validation reuses the sources' encoding from the loss for generation: the encoder runs once per batch,
    and the scores are those of `model.generate` on the same batches."""
    import torch
    from lightning.pytorch import Trainer

    data = Seq2SeqData(
        tokenizer_name=tiny_t5,
        train_file=cipher_files["train"],
        validation_file=cipher_files["validation"],
        batch_size=8,
    )
    module = Seq2Seq(model_name_or_path=tiny_t5, max_new_tokens=12)
    calls = []
    module.model.get_encoder().register_forward_hook(lambda *_: calls.append(1))
    metrics = Trainer(logger=False, enable_progress_bar=False).validate(module, datamodule=data)[0]
    batches = list(data.val_dataloader())
    assert len(calls) == len(batches) > 1

    expected = generation_metrics("translation")
    with torch.no_grad():
        for batch in batches:
            output = module.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            expected.update(module.decode(output), [[ref] for ref in module.decode(batch["labels"])])
    values = scores(expected)
    assert metrics["val/bleu"] == pytest.approx(values["bleu"].item(), abs=1e-6)
    assert metrics["val/chrf"] == pytest.approx(values["chrf"].item(), abs=1e-6)
    # a mean over all target tokens: each batch's mean weighs its tokens
    tokens = [(b["labels"] != -100).sum().item() for b in batches]
    loss = sum(module(**b).loss.item() * n for b, n in zip(batches, tokens, strict=True)) / sum(tokens)
    assert metrics["val/loss"] == pytest.approx(loss, rel=1e-5)


def test_summarization_metrics_match_rouge_score():
    from rouge_score import rouge_scorer

    # sentences in the other order: ROUGE-L matches one of them, ROUGE-Lsum both
    preds = ["the city is calm\npolice killed the gunman.", "a storm hit the coast on monday"]
    refs = ["the gunman was shot by police.\ncalm returned to the city", "a storm hit the east coast"]
    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(keys, use_stemmer=False)
    expected = {
        k: 100 * sum(scorer.score(r, p)[k].fmeasure for p, r in zip(preds, refs, strict=True)) / 2 for k in keys
    }
    metrics = generation_metrics("summarization", rouge_use_stemmer=False)
    metrics.update(preds, [[r] for r in refs])
    values = {k: v.item() for k, v in scores(metrics).items()}
    assert values == pytest.approx(expected, abs=0.01)
    assert values["rougeLsum"] != pytest.approx(values["rougeL"]), "Lsum must score sentence by sentence"


# ---------------------------------------------------------------------------------------------- training


def test_learns_a_substitution_cipher(tiny_t5, cipher_files):
    """The whole path must be right for a tiny T5 to translate word for word after a short CPU run."""
    main(
        [
            "fit",
            "--model",
            "hftrain.tasks.seq2seq.Seq2Seq",
            f"--model.model_name_or_path={tiny_t5}",
            "--model.learning_rate=3e-3",
            "--model.warmup_steps=0.1",
            "--data",
            "hftrain.tasks.seq2seq.Seq2SeqData",
            f"--data.train_file={cipher_files['train']}",
            f"--data.validation_file={cipher_files['validation']}",
            "--data.batch_size=32",
            "--trainer.max_epochs=10",
            "--trainer.check_val_every_n_epoch=5",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
        ]
    )
    run = Path("runs/seq2seq/version_0")
    results = read_results(run)
    assert results["monitor"] == "val/bleu"
    assert results["best"]["val/bleu"] >= 50, results["history"]
    assert {"val/loss", "val/chrf"} <= set(results["best"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"tensors": 0}).Reload()
    assert "val/examples/text_summary" in events.Tags()["tensors"]

    main(
        [
            "predict",
            "--config",
            str(run / "config.yaml"),
            f"--data.predict_file={cipher_files['predict']}",
            "--ckpt_path=best",
        ]
    )
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    rows = cipher_rows(8, seed=3)
    assert [(p["id"], p["source"]) for p in predictions] == [(i, r["source"]) for i, r in enumerate(rows)]
    assert not any("gold" in p for p in predictions)  # the predict file has sources only
    pairs = [
        (p, t)
        for row, r in zip(predictions, rows, strict=True)
        for p, t in zip(row["prediction"].split(), r["target"].split(), strict=False)
    ]
    assert sum(p == t for p, t in pairs) >= 0.6 * len(pairs), predictions

    # the exported folder (best weights, generation settings, tokenizer) generates what predict wrote
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    exported = AutoModelForSeq2SeqLM.from_pretrained(run / "hf_model")
    tokenizer = AutoTokenizer.from_pretrained(run / "hf_model")
    inputs = tokenizer([r["source"] for r in rows], padding=True, return_tensors="pt")
    outputs = tokenizer.batch_decode(exported.generate(**inputs), skip_special_tokens=True)
    assert outputs == [p["prediction"] for p in predictions]


def test_summarization_with_bart_reports_rouge_and_exports(tiny_bart, tmp_path):
    rows = [{"document": r["source"] + " " + r["source"], "summary": r["target"]} for r in cipher_rows(24, 7)]
    train = write_jsonl(tmp_path / "sum.jsonl", rows)
    main(
        [
            "fit",
            "--model",
            "hftrain.tasks.seq2seq.Seq2Seq",
            f"--model.model_name_or_path={tiny_bart}",
            "--model.task=summarization",
            "--model.num_beams=2",
            "--model.max_new_tokens=8",
            "--model.rouge_use_stemmer=false",
            "--data",
            "hftrain.tasks.seq2seq.Seq2SeqData",
            f"--data.train_file={train}",
            "--data.source_column=document",
            "--data.target_column=summary",
            "--data.validation_split_percentage=25",
            "--data.batch_size=8",
            "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
        ]
    )
    run = Path("runs/seq2seq/version_0")
    results = read_results(run)
    assert results["monitor"] == "val/rougeL"
    assert {"val/loss", "val/rouge1", "val/rouge2", "val/rougeL", "val/rougeLsum"} <= set(results["final"])
    from transformers import GenerationConfig

    generation = GenerationConfig.from_pretrained(run / "hf_model")
    assert (generation.num_beams, generation.max_new_tokens) == (2, 8)


def test_without_generation_only_loss_is_reported(tiny_t5, cipher_files):
    model = Seq2Seq(model_name_or_path=tiny_t5, predict_with_generate=False)
    assert (model.monitor, model.monitor_mode) == ("val/loss", "min")
    assert not hasattr(model, "metrics")


def test_invalid_generation_settings_are_a_user_error(tiny_t5):
    for setting in ({"num_beams": 0}, {"max_new_tokens": 0}):
        with pytest.raises(HFTrainError, match="generation settings are invalid"):
            Seq2Seq(model_name_or_path=tiny_t5, **setting)


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "config", ["translation/wmt16_en_ro.yaml", "summarization/xsum.yaml", "translation/multi30k_en_de.yaml"]
)
def test_shipped_configs_build(config, tiny_t5, cipher_files):
    """Every key of the shipped configs is accepted; model and data are swapped for local tiny ones."""
    path = REPO / "configs" / config
    cli = HFTrainCLI(
        args=[
            f"--config={path}",
            f"--model.init_args.model_name_or_path={tiny_t5}",
            "--data.init_args.dataset_name=null",
            "--data.init_args.source_lang=null",
            "--data.init_args.target_lang=null",
            "--data.init_args.source_column=source",
            "--data.init_args.target_column=target",
            f"--data.init_args.train_file={cipher_files['train']}",
            f"--data.init_args.validation_file={cipher_files['validation']}",
            "--data.init_args.test_file=null",
            "--trainer.precision=32",
        ],
        run=False,
    )
    assert isinstance(cli.model, Seq2Seq) and isinstance(cli.datamodule, Seq2SeqData)
    settings = yaml.safe_load(path.read_text())["model"]["init_args"]
    assert cli.model.task == settings.get("task", "translation")
    assert cli.model.generation_config.num_beams == settings.get("num_beams")


@pytest.mark.skipif(not (SHARED_DATA / "multi30k").is_dir(), reason="shared multi30k data absent")
def test_reads_multi30k_parallel_files(tiny_t5):
    folder = SHARED_DATA / "multi30k"
    data = Seq2SeqData(
        tokenizer_name=tiny_t5,
        train_file=str(folder / "val.en"),
        source_lang="en",
        target_lang="de",
        validation_split_percentage=0,
    )
    sources, targets = texts(data, "train")
    assert len(sources) == len(targets) == 1014
    assert targets[0].startswith("Eine Gruppe von Männern")
