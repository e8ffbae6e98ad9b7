"""Build a small random GPT-2 with a byte-level BPE tokenizer trained on local text, for offline runs.

No pretrained causal LM is available without network, so the measured WikiText-2 run in
docs/language_modeling.md trains one of these from scratch. The folder this writes is what
`save_pretrained` writes, so `model.model_name_or_path` takes it like a Hub id. The tests build their
tiny model with `make_model` too.

    python scripts/make_lm_model.py ../shared/data/wikitext2/valid.txt runs/models/gpt2-wikitext2
"""

import argparse
from collections.abc import Iterable
from pathlib import Path

EOS = "<|endoftext|>"
# ChatML (Qwen's, SmolLM's) with `{% generation %}` markers around what the assistant writes: its content and the
# end-of-turn token. hftrain finds those spans without the markers (which render as nothing); TRL's SFTTrainer needs
# them for `assistant_only_loss`, so with this template both train on the same tokens (scripts/bench_vs_trl.py).
CHATML = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int):
    """A GPT-2-style byte-level BPE tokenizer: any text encodes (no unknown tokens), `<|endoftext|>` is EOS,
    and, as with GPT-2, there is no padding token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        model_max_length=model_max_length,
    )


def make_model(
    folder: str | Path,
    texts: Iterable[str],
    vocab_size: int = 8192,
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 4,
    n_positions: int = 256,
    seed: int = 0,
) -> Path:
    """Train the tokenizer on `texts`, build a random GPT-2 of the given size, save both to `folder`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = train_tokenizer(texts, vocab_size, n_positions)
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    torch.manual_seed(seed)
    folder = Path(folder)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def add_chat_template(
    folder: str | Path, template: str = CHATML, special_tokens: list[str] = CHATML_TOKENS, dropout: float | None = None
) -> Path:
    """Make the causal LM saved in `folder` a chat model: the template's special tokens added to its tokenizer
    (with embeddings for them), the template as the tokenizer's own; `dropout` (if given) replaces every dropout
    rate of its config, e.g. 0 for runs that must take identical steps."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(special_tokens, special_tokens=True)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if dropout is not None:
        for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            setattr(model.config, key, dropout)
    model.save_pretrained(folder)
    return Path(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text_file", type=Path, help="UTF-8 text to train the tokenizer on")
    parser.add_argument("output_dir", type=Path, help="folder to write the model and tokenizer to")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-positions", type=int, default=256, help="longest input the model takes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with args.text_file.open(encoding="utf-8") as lines:
        folder = make_model(
            args.output_dir,
            lines,
            vocab_size=args.vocab_size,
            n_layer=args.n_layer,
            n_embd=args.n_embd,
            n_head=args.n_head,
            n_positions=args.n_positions,
            seed=args.seed,
        )
    print(f"Wrote a random GPT-2 and its tokenizer to {folder}")


if __name__ == "__main__":
    main()
