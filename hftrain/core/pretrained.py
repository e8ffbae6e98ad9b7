"""Loading pretrained models and tokenizers: one loader each, so the model, the module's tokenizer (which
decodes generations) and the data's tokenizer (which tokenized the training data) are loaded from the same
name, revision and `trust_remote_code`, and fail with the same message.
"""

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from hftrain.core import reuse
from hftrain.core.errors import HFTrainError


def load_tokenizer(
    name: str, revision: str | None = None, trust_remote_code: bool = False, pad_with_eos: bool = False
) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained(name)` with a clear error.

    `pad_with_eos` gives a tokenizer without a padding token (GPT-2, Llama) its end-of-sequence token as one:
    batching needs some padding id, and which one does not matter, as padding is masked out of attention and
    its label is -100.

    A search's trials share one tokenizer (`reuse`). The one thing a run changes in it, the chat template that
    `data.chat_template` sets, is put back as loaded before the next trial, which never sees the template of the
    trial before.
    """
    key = ("tokenizer", name, revision, trust_remote_code, pad_with_eos)
    tokenizer, _ = reuse.once(
        key, lambda: _load_tokenizer(name, revision, trust_remote_code, pad_with_eos), _with_its_own_template
    )
    return tokenizer


def _load_tokenizer(
    name: str, revision: str | None, trust_remote_code: bool, pad_with_eos: bool
) -> tuple[PreTrainedTokenizerBase, str | dict | None]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise HFTrainError(
            f"Could not load the tokenizer '{name}': {err}. If it is a folder, check that it exists and holds the "
            "tokenizer files (a run's hf_model/ does); if it is a Hub id, check the name and your network "
            "(offline, use a local folder)."
        ) from err
    if pad_with_eos and tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise HFTrainError(
                f"The tokenizer of '{name}' has neither a padding nor an end-of-sequence token; language "
                "modelling needs the end-of-sequence token to mark where a document ends. Use a causal language "
                "model's tokenizer, or set its eos_token."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, getattr(tokenizer, "chat_template", None)


def _with_its_own_template(loaded: tuple[PreTrainedTokenizerBase, str | dict | None]) -> None:
    tokenizer, chat_template = loaded
    tokenizer.chat_template = chat_template


def require_eos(tokenizer: PreTrainedTokenizerBase, name: str, needed_for: str) -> PreTrainedTokenizerBase:
    """The tokenizer, if it has an end-of-sequence token: generated text stops at it, so every target a model
    learns from ends with it (causal LM documents, seq2seq targets); without one the model never learns to
    stop."""
    if tokenizer.eos_token_id is None:
        raise HFTrainError(
            f"The tokenizer of '{name}' has no end-of-sequence token, which {needed_for} needs. Use the "
            "tokenizer saved with a model of this kind, or set its eos_token (tokenizer_config.json)."
        )
    return tokenizer


def load_model(
    auto_class: type,
    name: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    ignore_mismatched_sizes: bool = False,
    loading: dict[str, Any] | None = None,
    **config_overrides: Any,
) -> tuple[PreTrainedModel, dict[str, list[str]]]:
    """Load `name` with `auto_class` (`AutoModelForSequenceClassification`, …), overriding config fields
    (labels, problem type), in training mode; `loading` adds options of `from_pretrained` (a quantization
    config and its device map).

    The weights are loaded in float32 whatever the checkpoint holds: transformers 5 keeps a bf16 or fp16
    checkpoint's dtype, and AdamW on half-precision weights loses most small updates. Mixed precision
    (`trainer.precision: bf16-mixed`) computes in half precision on top of these float32 weights;
    `bf16-true` converts them.

    Also returns which weights did not come from the checkpoint, as sorted names: `missing_keys` (newly
    initialized, such as a new classifier head), `mismatched_keys` (re-initialized for another shape) and
    `unexpected_keys` (in the checkpoint but unused), which the run's first lines report.
    """
    options = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(name, **options, **config_overrides)
        model, info = auto_class.from_pretrained(
            name,
            config=config,
            ignore_mismatched_sizes=ignore_mismatched_sizes,
            dtype=torch.float32,
            output_loading_info=True,
            **options,
            **(loading or {}),
        )
    except OSError as err:
        where = (
            f"the folder {Path(name).resolve()} does not hold a model"
            if Path(name).exists()
            else "it is neither an existing folder nor a Hub id that could be downloaded"
        )
        raise HFTrainError(
            f"Could not load the model '{name}': {where}. Check the path or Hub id; offline (no network, or "
            "HF_HUB_OFFLINE=1), only local folders and models already in the Hugging Face cache load. "
            f"Details: {str(err).splitlines()[0]}"
        ) from err
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        raise HFTrainError(
            f"The model '{name}' has weights of another shape than this task needs (e.g. a classifier head for a "
            "different number of labels). Set model.ignore_mismatched_sizes=true to re-initialize them. "
            f"Details: {str(err).splitlines()[0]}"
        ) from err
    report = {
        kind: sorted(key if isinstance(key, str) else key[0] for key in info.get(kind, ()))  # mismatched: tuples
        for kind in ("missing_keys", "mismatched_keys", "unexpected_keys")
    }
    # from_pretrained leaves the model in eval mode, and Lightning keeps each submodule's mode as found:
    # without this, dropout would stay off during training
    return model.train(), report
