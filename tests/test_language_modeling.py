"""Causal language modelling: packing, masking, token-weighted perplexity, learning, generation, LoRA export.

The model is a tiny random GPT-2 with a byte-level BPE tokenizer trained on counting sequences
("17 18 19 20 …"), which it can learn to continue in seconds.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_DATA, counting
from helpers import load_script
from lightning.pytorch import Trainer

from hftrain.cli import HFTrainCLI
from hftrain.core.errors import HFTrainError
from hftrain.tasks.language_modeling import LanguageModeling, LanguageModelingData

TASK = "hftrain.tasks.language_modeling"


def write_paragraphs(path: Path, docs: list[str]) -> str:
    path.write_text("\n\n".join(docs) + "\n")
    return str(path)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def counting_files(tmp_path) -> dict[str, str]:
    return {
        "train": write_paragraphs(tmp_path / "train.txt", counting(240, seed=1)),
        "validation": write_paragraphs(tmp_path / "valid.txt", counting(40, seed=2)),
    }


def cli(*args: str) -> HFTrainCLI:
    return HFTrainCLI(
        args=[
            *args,
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.log_every_n_steps=1",
        ]
    )


def test_packing_concatenates_documents_with_eos_between(tiny_gpt2, tmp_path):
    docs = ["1 2 3 4 5 6 7", "40 41 42", "88 89 90 91 92 93 94 95 96"]
    data = LanguageModelingData(
        tokenizer_name=tiny_gpt2,
        train_file=write_paragraphs(tmp_path / "train.txt", docs),
        validation_split_percentage=0,
        block_size=8,
    )
    data.setup("fit")
    tokenizer = data.tokenizer
    expected = [i for doc in docs for i in [*tokenizer(doc)["input_ids"], tokenizer.eos_token_id]]
    blocks = data.datasets["train"]
    assert [i for block in blocks["input_ids"] for i in block] == expected
    assert [len(block) for block in blocks["input_ids"]][:-1] == [8] * (len(blocks) - 1)
    assert blocks["labels"] == blocks["input_ids"]


def test_txt_files_split_into_documents_by_paragraph_line_or_file(tiny_gpt2, tmp_path):
    # WikiText-style: blank lines that hold a space still separate paragraphs
    path = tmp_path / "train.txt"
    path.write_text(" = Title = \n \n first line\n second line\n \n\n last paragraph\n")
    rows = {}
    for documents in ("paragraph", "line", "file"):
        data = LanguageModelingData(
            tokenizer_name=tiny_gpt2,
            train_file=str(path),
            validation_split_percentage=0,
            text_file_documents=documents,
        )
        rows[documents] = data.raw["train"]["text"]
    assert rows["paragraph"] == [" = Title = ", " first line\n second line", " last paragraph"]
    assert rows["line"] == [" = Title = ", " first line", " second line", " last paragraph"]
    assert len(rows["file"]) == 1


def test_prompt_completion_takes_loss_on_completion_only(tiny_gpt2, tmp_path):
    rows = [{"prompt": "1 2 3", "completion": " 4 5"}, {"prompt": "10 11 12 13 14", "completion": " 15"}]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("7 8 9\n\n20\n")
    data = LanguageModelingData(
        tokenizer_name=tiny_gpt2,
        train_file=str(train),
        predict_file=str(prompts),
        validation_split_percentage=0,
        prompt_column="prompt",
        completion_column="completion",
        packing=False,
    )
    data.setup("fit")
    tokenizer = data.tokenizer
    assert tokenizer.pad_token == tokenizer.eos_token  # set, as the GPT-2 style tokenizer has none

    batch = data.collator([data.datasets["train"][i] for i in range(2)])
    eos = tokenizer.eos_token_id
    for row, example in enumerate(rows):
        prompt = tokenizer(example["prompt"])["input_ids"]
        completion = [*tokenizer(example["completion"], add_special_tokens=False)["input_ids"], eos]
        length = len(prompt) + len(completion)
        assert batch["input_ids"][row, :length].tolist() == prompt + completion
        assert batch["labels"][row].tolist() == [-100] * len(prompt) + completion + [-100] * (
            batch["labels"].shape[1] - length
        )
        assert batch["attention_mask"][row].sum() == length

    # prompts to continue: one per line, padded on the left so generation follows each one's last token
    prompt_batch = data.collator(list(data.datasets["predict"]))
    assert "labels" not in prompt_batch
    assert prompt_batch["attention_mask"].tolist()[1][-1] == 1
    assert prompt_batch["attention_mask"].tolist()[1][0] == 0


# documents of very different lengths: padding, and batch means that would mislead
UNEVEN = [
    "1 2 3",
    "5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "42",
    "7 8 9 10",
    "60 61 62 63 64 65 66",
    "3 4",
]


@pytest.mark.parametrize(
    "devices, eval_batch_size",
    [(1, 4), pytest.param(2, 1, marks=pytest.mark.slow, id="ddp")],  # under DDP, ranks score unequal counts
)
def test_perplexity_is_exp_of_token_weighted_mean_nll(devices, eval_batch_size, tiny_gpt2, tmp_path):
    docs = UNEVEN
    data = LanguageModelingData(
        tokenizer_name=tiny_gpt2,
        train_file=write_paragraphs(tmp_path / "train.txt", docs),
        validation_file=write_paragraphs(tmp_path / "valid.txt", docs),
        packing=False,
        eval_batch_size=eval_batch_size,
    )
    model = LanguageModeling(model_name_or_path=tiny_gpt2)
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    metrics = trainer.validate(model, datamodule=data, verbose=False)[0]

    tokenizer, nll, count = data.tokenizer, 0.0, 0
    model.model.eval()
    with torch.no_grad():
        for doc in docs:
            ids = torch.tensor([[*tokenizer(doc)["input_ids"], tokenizer.eos_token_id]])
            logits = model.model(input_ids=ids).logits[0, :-1]
            nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    assert metrics["val/loss"] == pytest.approx(nll / count, rel=1e-5)
    assert metrics["val/perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_documents_and_prompts_cut_at_max_length_are_counted(tiny_gpt2, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1 2 3 4 5 6 7 8 9 10 11 12\n7 8\n")
    data = LanguageModelingData(
        tokenizer_name=tiny_gpt2,
        train_file=write_paragraphs(tmp_path / "train.txt", UNEVEN),
        predict_file=str(prompts),
        validation_split_percentage=0,
        packing=False,
        max_length=6,
    )
    lengths = [len(data.tokenizer(doc).input_ids) + 1 for doc in UNEVEN]  # each document ends in EOS
    longest = len(data.tokenizer("1 2 3 4 5 6 7 8 9 10 11 12").input_ids)
    with pytest.warns(UserWarning) as said:
        data.setup("fit")
    messages = [str(w.message) for w in said]
    cut = [n for n in lengths if n > 6]
    assert (
        f"{len(cut)} of {len(UNEVEN)} rows in the train split ({tmp_path / 'train.txt'}) are longer than "
        f"data.max_length=6 tokens (the longest has {max(cut)}): only their first 6 tokens are trained on or scored. "
        "Raise data.max_length to keep them."
    ) in messages
    assert (
        f"1 of 2 rows in the predict split ({prompts}) are longer than data.max_length=6 tokens (the longest has "
        f"{longest}): only their last 6 tokens are continued. Raise data.max_length to keep them."
    ) in messages


def test_validation_examples_are_continued_in_one_batch_as_each_alone(tiny_gpt2, tmp_path):
    data = LanguageModelingData(
        tokenizer_name=tiny_gpt2,
        train_file=write_paragraphs(tmp_path / "train.txt", UNEVEN),
        validation_file=write_paragraphs(tmp_path / "valid.txt", UNEVEN),
        packing=False,
    )
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    model = LanguageModeling(model_name_or_path=tiny_gpt2, do_sample=False, max_new_tokens=5).eval()
    calls = []
    generate = model.model.generate
    model.model.generate = lambda **inputs: calls.append(inputs) or generate(**inputs)
    with torch.no_grad():
        model.add_continued_examples(batch, [0, 1, 2])
    assert len(calls) == 1 and len(model.examples) == 3

    tokenizer = data.tokenizer
    for row, (start, gold, continuation) in enumerate(model.examples):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        cut = min(len(ids) // 2, 64)
        assert start == tokenizer.decode(ids[:cut]) and gold == tokenizer.decode(ids[cut : cut + 5])
        with torch.no_grad():
            alone = generate(input_ids=ids[None, :cut], attention_mask=torch.ones_like(ids[None, :cut]))
        assert continuation == tokenizer.decode(alone[0, cut:], skip_special_tokens=True)
    assert len({len(tokenizer(start)["input_ids"]) for start, _, _ in model.examples}) > 1  # padding was needed


def test_fit_halves_perplexity_and_exports_a_pipeline_model(tiny_gpt2, counting_files, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import pipeline

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("3 4 5 6\n70 71\n")
    common = [
        f"--model={TASK}.LanguageModeling",
        f"--model.model_name_or_path={tiny_gpt2}",
        "--model.learning_rate=3e-3",
        "--model.do_sample=false",
        "--model.max_new_tokens=6",
        f"--data={TASK}.LanguageModelingData",
        f"--data.train_file={counting_files['train']}",
        f"--data.validation_file={counting_files['validation']}",
        f"--data.predict_file={prompts}",
        "--data.block_size=64",
        "--data.batch_size=8",
    ]
    start = cli("validate", *common).trainer.callback_metrics["val/perplexity"].item()
    fit = cli("fit", *common, "--model.validation_prompts=[10 11 12]", "--trainer.max_epochs=4")
    run = Path(fit.trainer.log_dir)
    results = json.loads((run / "results.json").read_text())
    assert results["best"]["val/perplexity"] <= start / 2, (start, results["history"])

    events = EventAccumulator(str(run), size_guidance={"tensors": 0}).Reload()
    samples = events.Tensors("val/generations/text_summary")
    assert len(samples) == 4  # one table per validation (none for the sanity check)
    assert '| `"10 11 12"` | `"' in samples[-1].tensor_proto.string_val[0].decode()
    # and validation rows: a block's start, its true continuation and the model's
    examples = events.Tensors("val/examples/text_summary")
    assert len(examples) == 4 and len(examples[-1].tensor_proto.string_val[0].decode().splitlines()) == 2 + 3

    cli("predict", *common, "--ckpt_path=best")
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert [(p["id"], p["prompt"]) for p in predictions] == [(0, "3 4 5 6"), (1, "70 71")]
    generator = pipeline("text-generation", model=str(run / "hf_model"), device="cpu")
    for p in predictions:
        assert generator(p["prompt"], return_full_text=False)[0]["generated_text"] == p["completion"]


def test_batched_generation_matches_one_prompt_at_a_time(tiny_gpt2):
    model = LanguageModeling(model_name_or_path=tiny_gpt2, do_sample=False, max_new_tokens=5).eval()
    prompts = ["1 2 3 4 5 6 7", "30", "50 51 52"]
    assert model.generate(prompts) == [model.generate([p])[0] for p in prompts]


def test_lora_export_is_merged_and_gives_the_module_logits(tiny_gpt2, counting_files):
    pytest.importorskip("peft", reason="LoRA needs the lora extra: pip install -e '.[lora]'")
    from transformers import AutoModelForCausalLM

    run = cli(
        "fit",
        f"--model={TASK}.LanguageModeling",
        f"--model.model_name_or_path={tiny_gpt2}",
        "--model.lora_rank=4",
        "--model.learning_rate=1e-2",
        f"--data={TASK}.LanguageModelingData",
        f"--data.train_file={counting_files['train']}",
        f"--data.validation_file={counting_files['validation']}",
        "--data.block_size=64",
        "--trainer.max_epochs=1",
    )
    module = run.model.eval()
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) < 0.1 * sum(
        p.numel() for p in module.parameters()
    )
    folder = Path(run.trainer.log_dir) / "hf_model"
    assert not (folder / "adapter_config.json").exists()
    exported = AutoModelForCausalLM.from_pretrained(folder).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    input_ids = torch.tensor([module.tokenizer("12 13 14 15 16")["input_ids"]])
    with torch.no_grad():
        expected = module(input_ids=input_ids).logits
        assert torch.allclose(exported(input_ids=input_ids).logits, expected, atol=1e-5)
        assert not torch.allclose(base(input_ids=input_ids).logits, expected, atol=1e-3)  # the adapters learnt


def test_data_errors_name_the_setting_and_the_fix(tiny_gpt2, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"prompt": "1 2", "answer": " 3"}) + "\n")
    with pytest.raises(HFTrainError, match="go together"):
        LanguageModelingData(
            tokenizer_name=tiny_gpt2,
            train_file=str(train),
            validation_split_percentage=0,
            prompt_column="prompt",
        )
    with pytest.raises(HFTrainError, match=r"no column 'completion' \(data.completion_column\)"):
        LanguageModelingData(
            tokenizer_name=tiny_gpt2,
            train_file=str(train),
            validation_split_percentage=0,
            prompt_column="prompt",
            completion_column="completion",
        )
    data = LanguageModelingData(
        tokenizer_name=tiny_gpt2,
        train_file=str(train),
        validation_split_percentage=0,
        prompt_column="prompt",
        completion_column="answer",
        packing=False,
        max_length=2,
    )
    with pytest.raises(HFTrainError, match="row 1 .* no room for its completion"):
        data.setup("fit")


@pytest.mark.parametrize("name", ["wikitext2_gpt2.yaml", "wikitext2_local.yaml"])
def test_configs_instantiate(name, tiny_gpt2, counting_files):
    run = HFTrainCLI(
        args=[
            f"--config={REPO / 'configs' / 'lm' / name}",
            f"--model.init_args.model_name_or_path={tiny_gpt2}",
            "--data.init_args.dataset_name=null",
            f"--data.init_args.train_file={counting_files['train']}",
            "--data.init_args.test_file=null",
            "--data.init_args.block_size=null",
        ],
        run=False,
    )
    assert isinstance(run.model, LanguageModeling)
    assert isinstance(run.datamodule, LanguageModelingData)


def test_generation_settings_are_checked_early_and_saved_with_the_export(tiny_gpt2, tmp_path):
    import shutil

    from transformers import GenerationConfig

    with pytest.raises(HFTrainError, match="Sampling needs model.temperature > 0"):
        LanguageModeling(model_name_or_path=tiny_gpt2, temperature=0.0)
    # a model published with sampling settings (as Llama 3 is), fine-tuned for greedy decoding
    sampling_model = shutil.copytree(tiny_gpt2, tmp_path / "sampling-model")
    GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9).save_pretrained(sampling_model)
    model = LanguageModeling(model_name_or_path=str(sampling_model), do_sample=False, max_new_tokens=7)
    saved = GenerationConfig.from_pretrained(model.export(tmp_path / "hf_model"))
    assert (saved.do_sample, saved.max_new_tokens, saved.temperature) == (False, 7, None)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "wikitext2").is_dir(), reason="needs ../shared/data/wikitext2")
def test_wikitext2_local_config_learns(tmp_path):
    """The documented WikiText-2 run, shortened: a smaller model, 40 steps, part of the test set."""
    wikitext = SHARED_DATA / "wikitext2"
    model = tmp_path / "gpt2-wikitext2"
    with (wikitext / "valid.txt").open() as lines:
        load_script("make_lm_model").make_model(model, lines, vocab_size=2048, n_layer=2, n_embd=64, n_head=2)
    args = [
        f"--config={REPO / 'configs' / 'lm' / 'wikitext2_local.yaml'}",
        f"--model.init_args.model_name_or_path={model}",
        f"--data.init_args.train_file={wikitext / 'valid.txt'}",
        f"--data.init_args.test_file={wikitext / 'test.txt'}",
        "--trainer.limit_test_batches=20",
    ]
    fit = cli("fit", *args, "--trainer.max_epochs=1", "--trainer.limit_train_batches=40")
    tested = cli("test", *args, "--ckpt_path=best").trainer.callback_metrics
    assert tested["test/perplexity"] < 0.5 * 2048, fit.trainer.callback_metrics  # a random model scores ~2048
