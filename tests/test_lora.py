"""LoRA on every linear layer (`lora_target_modules: all-linear`) and the QLoRA settings: the export merges the
adapters and loads without peft, with the adapted model's logits, also along the QLoRA export's path (the base
loaded again in full precision), which runs here without a GPU."""

import pytest
import torch
from safetensors import safe_open

from hftrain.core.errors import HFTrainError
from hftrain.tasks import lora
from hftrain.tasks.language_modeling import LanguageModeling

pytest.importorskip("peft", reason="LoRA needs the lora extra: pip install -e '.[lora]'")

LLAMA_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def trained_adapters(module: LanguageModeling) -> LanguageModeling:
    """The module with its adapters' B matrices made nonzero (peft starts them at zero, where merging changes
    nothing and the export would match the adapted model whatever it merged)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in module.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    return module.eval()


def test_all_linear_adapts_every_linear_layer_and_the_export_gives_the_same_logits(tiny_chat_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    module = trained_adapters(
        LanguageModeling(model_name_or_path=tiny_chat_llama, lora_rank=4, lora_target_modules="all-linear")
    )
    adapted = {name.rsplit(".", 1)[-1] for name, m in module.model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == LLAMA_LINEAR  # every linear layer of every block, not the output head
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert 0 < trainable < 0.2 * sum(p.numel() for p in module.parameters())

    folder = module.export(tmp_path / "hf_model")
    assert not (folder / "adapter_config.json").exists()
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert not any("lora" in key or "base_model" in key for key in weights.keys())  # noqa: SIM118
    exported = AutoModelForCausalLM.from_pretrained(folder).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_llama).eval()
    input_ids = torch.tensor([module.tokenizer("12 13 14 15 16")["input_ids"]])
    with torch.no_grad():
        expected = module(input_ids=input_ids).logits
        assert torch.allclose(exported(input_ids=input_ids).logits, expected, atol=1e-5)
        assert not torch.allclose(base(input_ids=input_ids).logits, expected, atol=1e-3)

        # the QLoRA export: the adapters merged into the base loaded again, not into the module's own weights
        for weights in (None, module.model.state_dict()):  # the module's own, or a checkpoint's
            merged = lora.merged_model(module.model, weights, load_base=module._full_precision_base).eval()
            assert torch.allclose(merged(input_ids=input_ids).logits, expected, atol=1e-5)


def test_qlora_settings_are_checked_before_anything_loads(tiny_gpt2):
    with pytest.raises(HFTrainError, match="load_in_4bit is set without model.lora_rank"):
        LanguageModeling(model_name_or_path=tiny_gpt2, load_in_4bit=True)
    if not torch.cuda.is_available():  # here: no GPU, and bitsandbytes only where one is
        needs = r"load_in_4bit needs (bitsandbytes: run `pip install 'hftrain\[qlora\]'|a CUDA GPU)"
        with pytest.raises(HFTrainError, match=needs):
            LanguageModeling(model_name_or_path=tiny_gpt2, lora_rank=8, load_in_4bit=True)
