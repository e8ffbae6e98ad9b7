"""One tokenizer for model and data: `model.revision` (and `trust_remote_code`) reach the data's tokenizer too."""

import json
import os
import shutil
import subprocess
import sys

from helpers import load_script

from hftrain.core.pretrained import load_tokenizer


def hub_cache_with_two_revisions(cache, main_folder, v1_folder, repo="acme/tiny-lm"):
    """A Hugging Face cache holding `repo` at two revisions (`main` and the tag `v1`), as a download leaves it."""
    root = cache / f"models--{repo.replace('/', '--')}"
    for ref, folder, commit in (("main", main_folder, "a" * 40), ("v1", v1_folder, "b" * 40)):
        shutil.copytree(folder, root / "snapshots" / commit)
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return repo


PROBE = """
import json, sys
from hftrain.cli import HFTrainCLI
cli = HFTrainCLI(args=sys.argv[1:], run=False)
print(json.dumps({
    "module": cli.model.tokenizer.get_vocab(), "data": cli.datamodule.tokenizer.get_vocab(),
    "pads": [cli.datamodule.tokenizer.pad_token, cli.model.tokenizer.pad_token, cli.model.tokenizer.eos_token],
}))
"""


def test_revision_reaches_the_data_tokenizer(tiny_gpt2, tmp_path):
    v1 = tmp_path / "v1"
    texts = [" ".join(f"w{i * j % 97}" for j in range(12)) for i in range(200)]  # another vocabulary
    load_script("make_lm_model").make_model(v1, texts, vocab_size=300, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    repo = hub_cache_with_two_revisions(tmp_path / "hub", tiny_gpt2, v1)
    (tmp_path / "train.txt").write_text("w1 w2 w3\n\nw4 w5 w6\n")
    args = [
        "--model=hftrain.tasks.language_modeling.LanguageModeling",
        f"--model.model_name_or_path={repo}",
        "--model.revision=v1",
        "--data=hftrain.tasks.language_modeling.LanguageModelingData",
        f"--data.train_file={tmp_path / 'train.txt'}",
        "--data.validation_split_percentage=0",
    ]
    # a fresh process: the Hub client reads its cache folder from the environment once, at import
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub")}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.splitlines()[-1])
    pinned = load_tokenizer(str(v1)).get_vocab()
    assert pinned != load_tokenizer(tiny_gpt2).get_vocab()
    assert loaded["module"] == pinned  # decodes generations
    assert loaded["data"] == pinned  # tokenized the training data
    assert len(set(loaded["pads"])) == 1  # both pad with the end-of-sequence token


def test_half_precision_checkpoints_train_in_float32(tiny_bert, tmp_path):
    """transformers 5 keeps a checkpoint's dtype; AdamW on bf16 weights would drop most updates."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from hftrain.core.pretrained import load_model

    half = tmp_path / "bf16"
    AutoModelForSequenceClassification.from_pretrained(tiny_bert, dtype=torch.bfloat16).save_pretrained(half)
    load_tokenizer(tiny_bert).save_pretrained(half)
    assert AutoModelForSequenceClassification.from_pretrained(half).dtype == torch.bfloat16  # what we guard against
    model, report = load_model(AutoModelForSequenceClassification, str(half))
    assert {p.dtype for p in model.parameters()} == {torch.float32} and model.training
    assert not any(report.values())  # every weight came from the checkpoint (the head was saved with it)
