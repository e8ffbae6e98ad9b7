"""A chat model's answers: `predict` on conversations and plain prompts, the same replies from
`transformers.pipeline` on the export (which keeps the chat template), and sample replies in TensorBoard."""

import json
from pathlib import Path

import pytest
from helpers import run_cli, write_jsonl
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_chat import FAMILIES, chat_config, chat_data, conversations

from hftrain.cli import HFTrainCLI
from hftrain.tasks.language_modeling import LanguageModeling, LanguageModelingData

# ChatML without the default system prompt: a template of the config's own, not the tokenizer's
TERSE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
    " + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CONVERSATION = [{"role": "system", "content": "Count."}, {"role": "user", "content": "1 2 3"}]


def test_predict_answers_conversations_and_plain_prompts_as_the_pipeline_does(tiny_chat_lm, tmp_path):
    from transformers import pipeline

    template = tmp_path / "terse.jinja"
    template.write_text(TERSE)
    data = LanguageModelingData(
        tokenizer_name=tiny_chat_lm,
        train_file=write_jsonl(tmp_path / "train.jsonl", conversations(4)),
        messages_column="messages",
        chat_template=str(template),
        validation_split_percentage=0,
    )
    assert data.end_of_turn == "<|im_end|>"
    module = LanguageModeling(
        model_name_or_path=tiny_chat_lm, do_sample=False, max_new_tokens=8, end_of_turn=data.end_of_turn
    )
    im_end = data.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert module.model.generation_config.eos_token_id == [data.tokenizer.eos_token_id, im_end]
    answered = [*CONVERSATION, {"role": "assistant", "content": "4 5 6"}]
    records = module.predict([CONVERSATION, "4 5", answered], data)
    assert [r["messages"] for r in records] == [CONVERSATION, [{"role": "user", "content": "4 5"}], CONVERSATION]
    assert records[0]["prompt"] == "<|im_start|>system\nCount.<|im_end|>\n<|im_start|>user\n1 2 3<|im_end|>\n" + (
        "<|im_start|>assistant\n"
    )
    assert records[1]["completion"].strip()  # a reply, not nothing (the random model answers others with newlines)
    assert records[2]["gold"] == "4 5 6" and records[2]["completion"] == records[0]["completion"]
    assert module.predict(CONVERSATION, data) == [{**records[0], "gold": None}]  # one conversation: its messages

    module.export(tmp_path / "hf_model", data.tokenizer)
    generator = pipeline("text-generation", model=str(tmp_path / "hf_model"), device="cpu")
    assert generator.tokenizer.chat_template == TERSE
    for record in records[:2]:
        [answer] = generator(record["messages"])  # greedy, 8 new tokens: the exported generation config
        assert answer["generated_text"] == [*record["messages"], {"role": "assistant", "content": record["completion"]}]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_reply_ends_at_the_templates_end_of_turn_token(family, tiny_chat_lm, tmp_path):
    template, end = FAMILIES[family]
    data = chat_data(tiny_chat_lm, write_jsonl(tmp_path / "train.jsonl", conversations(2)), chat_template=template)
    assert data.end_of_turn == (end or data.tokenizer.eos_token)


@pytest.mark.processes  # a fit, then predict through the CLI
def test_validation_logs_sample_replies_and_cli_predict_answers_plain_prompts(tiny_chat_lm, tmp_path):
    from transformers import pipeline

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("count from 3\n7 8\n")
    path = chat_config(
        tmp_path,
        tiny_chat_lm,
        train_file=write_jsonl(tmp_path / "train.jsonl", conversations(16)),
        validation_file=write_jsonl(tmp_path / "valid.jsonl", conversations(4)),
        predict_file=str(prompts),
        packing=True,
        block_size=128,
    )
    settings = ["--model.do_sample=false", "--model.max_new_tokens=6", "--model.logged_examples=2"]
    fit = HFTrainCLI(args=["fit", f"--config={path}", *settings])
    run = Path(fit.trainer.log_dir)
    events = EventAccumulator(str(run), size_guidance={"tensors": 0}).Reload()
    tables = events.Tensors("val/examples/text_summary")
    assert len(tables) == 2  # one per validation, none for the sanity check
    lines = tables[-1].tensor_proto.string_val[0].decode().splitlines()[2:]
    assert len(lines) == 2
    for line in lines:  # the conversation up to its reply, the true reply with its end of turn, the model's
        prompt, gold, _ = (
            json.loads(cell.strip().strip("`").replace("\\|", "|")) for cell in line.strip("|").split(" | ")
        )
        assert prompt.endswith("<|im_start|>assistant\n") and gold.endswith("<|im_end|>") and "user" not in gold

    assert run_cli("predict", f"--config={path}", *settings, "--ckpt_path=best") == 0
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert [p["messages"] for p in predictions] == [
        [{"role": "user", "content": "count from 3"}],
        [{"role": "user", "content": "7 8"}],
    ]
    im_end = fit.datamodule.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in json.loads((run / "hf_model" / "generation_config.json").read_text())["eos_token_id"]
    generator = pipeline("text-generation", model=str(run / "hf_model"), device="cpu")
    assert any(p["completion"].strip() for p in predictions)
    for p in predictions:
        assert generator(p["messages"])[0]["generated_text"][-1] == {"role": "assistant", "content": p["completion"]}
