"""Build a small randomly initialized T5 with a tokenizer trained on your text, saved as a model folder.

For translation experiments where no pretrained encoder-decoder is at hand (offline machines, a language
pair T5 never saw): the folder loads with `AutoModelForSeq2SeqLM.from_pretrained` and serves as
`model.model_name_or_path` of an hftrain seq2seq run, which then trains it from scratch.

    python scripts/make_seq2seq_model.py \\
        --texts ../shared/data/multi30k/train.en ../shared/data/multi30k/train.de \\
        --output runs/models/t5-multi30k --vocab-size 4000 --d-model 128 --layers 2 --d-ff 512

The tokenizer is a SentencePiece-style unigram model (word pieces marked with `▁`, `</s>` appended to every
sequence, `<pad>` = 0, `</s>` = 1, `<unk>` = 2 as in T5), shared by both languages.
"""

import argparse
from collections.abc import Iterable
from pathlib import Path

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def unigram_backend(unigram):
    """A `tokenizers.Tokenizer` around a unigram model, splitting and joining words the SentencePiece way."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers

    backend = Tokenizer(unigram)
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return backend


def t5_tokenizer(backend, model_max_length: int = 512):
    """Wrap a unigram backend whose vocabulary holds `<pad>`, `</s>`, `<unk>` as a T5-like fast tokenizer."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B:1 {EOS}:1", special_tokens=[(EOS, backend.token_to_id(EOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=model_max_length,
    )


def train_unigram_tokenizer(texts: Iterable[str], vocab_size: int = 8000, model_max_length: int = 512):
    """A T5-like tokenizer whose unigram vocabulary is trained on `texts`."""
    from tokenizers import models, trainers

    backend = unigram_backend(models.Unigram())
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS, UNK], unk_token=UNK)
    backend.train_from_iterator(texts, trainer)
    return t5_tokenizer(backend, model_max_length)


def small_t5(
    tokenizer,
    d_model: int = 256,
    layers: int = 3,
    heads: int = 4,
    d_ff: int = 1024,
    dropout: float = 0.1,
    seed: int = 0,
):
    """A randomly initialized T5 sized for `tokenizer`."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // heads,
        d_ff=d_ff,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=heads,
        dropout_rate=dropout,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5ForConditionalGeneration(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", nargs="+", required=True, help="text files to train the tokenizer on")
    parser.add_argument("--output", required=True, help="folder to write the model and tokenizer to")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3, help="encoder layers (and as many decoder layers)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-ff", type=int, default=1024)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    lines = [line for path in args.texts for line in Path(path).read_text(encoding="utf-8").split("\n") if line]
    tokenizer = train_unigram_tokenizer(lines, args.vocab_size)
    model = small_t5(tokenizer, args.d_model, args.layers, args.heads, args.d_ff, args.dropout, args.seed)
    tokenizer.save_pretrained(args.output)
    model.save_pretrained(args.output)
    params = sum(p.numel() for p in model.parameters())
    print(f"Wrote a {params / 1e6:.1f}M-parameter T5 with a {len(tokenizer)}-token vocabulary to {args.output}")


if __name__ == "__main__":
    main()
