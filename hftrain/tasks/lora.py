"""LoRA adapters for causal LM fine-tuning, on a full-precision base or on one quantized to 4 bits (QLoRA), and
the export that merges them into plain weights, so `hf_model/` loads without peft (or bitsandbytes).

peft adds and merges the adapters, bitsandbytes quantizes; what is written here is the glue: the errors that
name the missing package or setting, and the QLoRA export. Merging into 4-bit weights would round the merged
weights to 4 bits again and write a model that needs bitsandbytes, so a quantized run's export loads the base
again in full precision on the CPU and merges the trained adapters into that instead.
"""

import copy
import os
from collections.abc import Callable
from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from hftrain.core.errors import HFTrainError

# lora_target_modules: layer names, or peft's shorthand for every linear layer but the output head
TargetModules = list[str] | Literal["all-linear"] | None


def quantized_loading(load_in_4bit: bool) -> dict[str, Any]:
    """The `from_pretrained` options that load a model in 4 bits, with the NF4 settings of the QLoRA paper
    (double quantization, bf16 compute), placed whole on this process's GPU (one per rank under DDP); none
    without `load_in_4bit`. Needs a CUDA GPU and bitsandbytes, refused here with the fix rather than deep inside
    `from_pretrained`."""
    if not load_in_4bit:
        return {}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise HFTrainError(
            "model.load_in_4bit needs bitsandbytes: run `pip install 'hftrain[qlora]'` (or `pip install "
            "bitsandbytes`) on the GPU machine, or set model.load_in_4bit=false."
        ) from err
    if not torch.cuda.is_available():
        raise HFTrainError(
            "model.load_in_4bit needs a CUDA GPU (bitsandbytes quantizes on it), and none is visible. Run on a GPU "
            "(configs/trainer/gpu_bf16.yaml), or set model.load_in_4bit=false to train LoRA on full-precision weights."
        )
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    return {"quantization_config": config, "device_map": {"": int(os.environ.get("LOCAL_RANK", 0))}}


def add_lora(
    model: PreTrainedModel,
    name: str,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: TargetModules,
    gradient_checkpointing: bool,
    quantized: bool,
):
    """`model` with trainable LoRA adapters of `rank` on `target_modules` (all linear layers for `all-linear`,
    peft's choice for the architecture when None), every other weight frozen."""
    try:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    except ImportError as err:
        raise HFTrainError(
            "model.lora_rank is set but peft is not installed: run `pip install 'hftrain[lora]'` (or "
            "`pip install peft`), or unset model.lora_rank to train all weights."
        ) from err
    if quantized:  # norms and embeddings in float32, inputs that need gradients (peft's QLoRA recipe)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        # the frozen embeddings would otherwise give checkpointed blocks no input that needs a gradient
        model.enable_input_require_grads()
    config = LoraConfig(
        task_type="CAUSAL_LM", r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        layers = sorted(
            {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if type(m).__name__ in ("Linear", "Conv1D")}
        )
        raise HFTrainError(
            f"Could not add LoRA adapters to '{name}': {err}. Set model.lora_target_modules to some of its layer "
            f"names ({', '.join(layers)}), or to all-linear."
        ) from err


def merged_model(
    adapted, weights: dict[str, torch.Tensor] | None, load_base: Callable[[], PreTrainedModel] | None = None
) -> PreTrainedModel:
    """A plain model with the adapters of `adapted` (with `weights`, its state dict, if given: a checkpoint's)
    merged into the base weights. The module keeps its adapters (a `test` may follow the fit). With
    `load_base` (a quantized run), the adapters are merged into that base, loaded anew in full precision."""
    if load_base is None:
        copied = copy.deepcopy(adapted)
        if weights is not None:
            copied.load_state_dict(weights)
        return copied.merge_and_unload()
    from peft import get_peft_model

    fresh = get_peft_model(load_base(), copy.deepcopy(adapted.peft_config["default"]))
    state = adapted.state_dict() if weights is None else weights
    adapters = {key: value.float().cpu() for key, value in state.items() if "lora_" in key}
    missing = fresh.load_state_dict(adapters, strict=False).unexpected_keys
    if missing:
        raise RuntimeError(f"adapter weights with no place in the full-precision base: {missing[:3]}")
    return fresh.merge_and_unload()
