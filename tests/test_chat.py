"""Conversations in the language-modelling task: chat templates of four families, assistant-only labels found
without `{% generation %}` markers, ShareGPT data, bad conversations, and a fit through the CLI.

The templates are written here after the published ones (Qwen's ChatML, Llama 3, Gemma 3, Mistral v0.1),
and the tokenizer is the tiny GPT-2's with their special tokens added, so every test runs offline.
"""

import json
from pathlib import Path

import pytest
import yaml
from conftest import CHATML
from helpers import run_cli, tree_digest, write_jsonl

from hftrain.cli import HFTrainCLI
from hftrain.core.errors import HFTrainError
from hftrain.core.length_split import batch_parts
from hftrain.tasks import chat_processing as chat
from hftrain.tasks.language_modeling import LanguageModelingData

LLAMA3 = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + "
    "'<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
GEMMA = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set first = messages[0]['content'] + '\\n\\n' %}"
    "{%- set turns = messages[1:] %}{%- else %}{%- set first = '' %}{%- set turns = messages %}{%- endif %}"
    "{%- for message in turns %}{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first if loop.first else '') + message['content'] | trim + "
    "'<end_of_turn>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{%- endif %}"
)
MISTRAL = (
    "{{ bos_token }}{%- set system = messages[0]['content'] + '\\n\\n' if messages[0]['role'] == 'system' else '' %}"
    "{%- for message in messages if message['role'] != 'system' %}{%- if message['role'] == 'user' %}"
    "{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{%- else %}{{ message['content'] + eos_token }}{%- endif %}{%- endfor %}"
)
# template -> its end-of-turn token (None: the tokenizer's EOS, as Mistral's template ends turns with it)
FAMILIES = {"chatml": (CHATML, "<|im_end|>"), "llama3": (LLAMA3, "<|eot_id|>"), "gemma": (GEMMA, "<end_of_turn>")}
FAMILIES["mistral"] = (MISTRAL, None)
CONVERSATION = [
    {"role": "system", "content": "Count on."},
    {"role": "user", "content": "1 2 3"},
    {"role": "assistant", "content": "4 5 6"},
    {"role": "user", "content": "then?"},
    {"role": "assistant", "content": "7 8\n9 10"},
]


@pytest.fixture
def tokenizer(tiny_chat_lm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_chat_lm)


def labelled_runs(tokenizer, input_ids: list[int], labels: list[int]) -> list[str]:
    """The decoded text of each stretch of consecutive labelled tokens."""
    runs, run = [], []
    for token, label in zip(input_ids, labels, strict=True):
        if label != chat.IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            runs, run = [*runs, run], []
    return [tokenizer.decode(ids) for ids in [*runs, *([run] if run else [])]]


def encode(tokenizer, conversation, template, train_on="assistant"):
    end_of_turn = chat.end_of_turn_pattern(tokenizer)
    return chat.encode_conversation(tokenizer, conversation, template, train_on, end_of_turn)


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_are_exactly_the_assistant_turns_with_their_end_of_turn_token(family, tokenizer):
    template, end = FAMILIES[family]
    end = end or tokenizer.eos_token
    input_ids, labels = encode(tokenizer, CONVERSATION, template)
    assert labelled_runs(tokenizer, input_ids, labels) == ["4 5 6" + end, "7 8\n9 10" + end]
    # the pieces put together are the template's own rendering, special tokens as single tokens
    assert tokenizer.decode(input_ids) == tokenizer.apply_chat_template(
        CONVERSATION, chat_template=template, tokenize=False
    )
    assert tokenizer.convert_tokens_to_ids(end) in input_ids

    last_ids, last_labels = encode(tokenizer, CONVERSATION, template, "last_assistant")
    assert last_ids == input_ids and labelled_runs(tokenizer, last_ids, last_labels) == ["7 8\n9 10" + end]
    all_ids, all_labels = encode(tokenizer, CONVERSATION, template, "all")
    assert all_labels == all_ids


def test_sharegpt_conversations_are_mapped_to_messages(tokenizer):
    sharegpt = [
        {"from": "system", "value": "Count on."},
        {"from": "human", "value": "1 2 3"},
        {"from": "gpt", "value": "4 5 6"},
        {"from": "human", "value": "then?"},
        {"from": "gpt", "value": "7 8\n9 10"},
    ]
    assert chat.to_messages(sharegpt) == CONVERSATION
    assert encode(tokenizer, sharegpt, None) == encode(tokenizer, CONVERSATION, CHATML)


@pytest.mark.parametrize(
    "conversation, problem",
    [
        ([{"role": "robot", "content": "hi"}], "message 1 has the unknown role 'robot'"),
        ([{"from": "bot", "value": "hi"}], "message 1 has the unknown role 'bot' .*human, .*gpt"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}], r"message 2 \(assistant\) has no"),
        ([{"role": "user", "content": "hi"}], "no assistant turn"),
        ([{"role": "system", "content": "a"}, {"role": "system", "content": "b"}], "2 system messages"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "system message is message 2"),
        ("hello", "not a list of messages"),
    ],
)
def test_malformed_conversations_say_what_is_wrong(conversation, problem, tokenizer):
    with pytest.raises(chat.ConversationError, match=problem):
        encode(tokenizer, conversation, CHATML)


def test_a_template_that_changes_the_content_is_refused(tokenizer):
    # Llama 3's template trims the content, so an answer with a trailing space is not what the model would learn
    spaced = [{"role": "user", "content": "1 2"}, {"role": "assistant", "content": "3 4 "}]
    with pytest.raises(chat.ConversationError, match="renders assistant message 2 differently from its content"):
        encode(tokenizer, spaced, LLAMA3)
    # a template whose earlier turns change once more follow (a reasoning model's, say)
    unstable = "{% for m in messages %}{{ m['content'] if loop.last else '...' }}<|im_end|>{% endfor %}"
    with pytest.raises(chat.ConversationError, match="renders it differently as it grows"):
        encode(tokenizer, CONVERSATION[1:], unstable)


# ------------------------------------------------------------------ the data module


def conversations(n: int, long: int = 0) -> list[dict]:
    """`n` short counting conversations, the `long`-th (1-based) made long; with the system prompt on odd rows."""
    rows = []
    for i in range(n):
        count = " ".join(str(k) for k in range(i, i + (60 if i + 1 == long else 3)))
        messages = [{"role": "user", "content": f"count from {i}"}, {"role": "assistant", "content": count}]
        rows.append({"messages": ([{"role": "system", "content": "Count."}] if i % 2 else []) + messages})
    return rows


def chat_data(tiny_chat_lm, train: str, **settings) -> LanguageModelingData:
    options = {"messages_column": "messages", "packing": False, "validation_split_percentage": 0}
    return LanguageModelingData(tokenizer_name=tiny_chat_lm, train_file=train, **options | settings)


def test_bad_conversations_in_a_file_are_named_by_split_file_and_row(tiny_chat_lm, tmp_path):
    rows = conversations(4)
    rows[2]["messages"][-1]["role"] = "bot"
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(HFTrainError, match=rf"train data \({train}\) has a conversation at row 3 .*'bot'.*Fix or"):
        chat_data(tiny_chat_lm, train)
    # found at tokenization, after validation was held out: still the row in the file
    rows = conversations(20)
    rows[13]["messages"][-1]["content"] += " "
    train = write_jsonl(tmp_path / "spaced.jsonl", rows)
    data = chat_data(tiny_chat_lm, train, chat_template=LLAMA3, validation_split_percentage=20)
    with pytest.raises(HFTrainError, match="at row 14 .*renders assistant message 3 differently.*data.chat_template"):
        data.setup("fit")


def test_chat_settings_are_checked_before_anything_loads(tiny_gpt2, tiny_chat_lm, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", conversations(4))
    with pytest.raises(HFTrainError, match="has no chat template .* data.chat_template"):
        chat_data(tiny_gpt2, train)
    with pytest.raises(HFTrainError, match="neither a Jinja template .* nor an existing file"):
        chat_data(tiny_chat_lm, train, chat_template="templates/missing.jinja")
    with pytest.raises(HFTrainError, match=r"no column 'conversations' \(data.messages_column\)"):
        chat_data(tiny_chat_lm, train, messages_column="conversations")
    with pytest.raises(HFTrainError, match="apply to conversations: set data.messages_column"):
        chat_data(tiny_chat_lm, train, messages_column=None, train_on="all")


def test_conversations_longer_than_max_length_are_left_out_and_named(tiny_chat_lm, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", conversations(6, long=5))
    template = tmp_path / "gemma.jinja"
    template.write_text(GEMMA)
    data = chat_data(tiny_chat_lm, train, chat_template=str(template), max_length=40)
    with pytest.warns(UserWarning, match=r"1 of 6 conversations in the train split .*; rows 5\): they are left out"):
        data.setup("fit")
    assert len(data.datasets["train"]) == 5
    assert data.chat_template == GEMMA  # the file's text: the tokenized cache follows edits to it


def chat_config(tmp_path: Path, model: str, **data) -> Path:
    """A fit config for conversations in `data`'s files: `messages_column: messages`, no packing, batch 8."""
    config = {
        "model": {
            "class_path": "hftrain.tasks.language_modeling.LanguageModeling",
            "init_args": {"model_name_or_path": model, "learning_rate": 3e-3},
        },
        "data": {
            "class_path": "hftrain.tasks.language_modeling.LanguageModelingData",
            "init_args": {"messages_column": "messages", "packing": False, "batch_size": 8, **data},
        },
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "enable_progress_bar": False},
    }
    path = tmp_path / "chat.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_through_the_cli_learns_from_assistant_tokens_only(tiny_chat_lm, tmp_path):
    path = chat_config(
        tmp_path,
        tiny_chat_lm,
        train_file=write_jsonl(tmp_path / "train.jsonl", conversations(24)),
        validation_file=write_jsonl(tmp_path / "valid.jsonl", conversations(6)),
    )
    run = HFTrainCLI(args=["fit", f"--config={path}"])
    results = json.loads((Path(run.trainer.log_dir) / "results.json").read_text())
    history = [epoch["val/loss"] for epoch in results["history"]]
    assert history[-1] < history[0], history

    tokenizer = run.datamodule.tokenizer
    answers = {f"{' '.join(str(k) for k in range(i, i + 3))}<|im_end|>" for i in range(24)}
    learnt = []
    for part in batch_parts(next(iter(run.datamodule.train_dataloader()))):  # the batch as the model gets it
        for ids, labels in zip(part["input_ids"].tolist(), part["labels"].tolist(), strict=True):
            [answer] = labelled_runs(tokenizer, ids, labels)
            learnt.append(answer)
    assert len(learnt) == 8 and set(learnt) <= answers


def test_predict_continues_a_conversation_after_its_last_user_turn(tiny_chat_lm, tmp_path):
    rows = conversations(3)
    data = chat_data(
        tiny_chat_lm, write_jsonl(tmp_path / "train.jsonl", rows), predict_file=write_jsonl(tmp_path / "p.jsonl", rows)
    )
    data.setup("predict")
    prompt = data.tokenizer.apply_chat_template(rows[1]["messages"][:-1], tokenize=False, add_generation_prompt=True)
    example = data.datasets["predict"][1]
    assert data.tokenizer.decode(example["input_ids"]) == prompt and prompt.endswith("<|im_start|>assistant\n")
    assert example["row"] == {"id": 1, "messages": rows[1]["messages"][:-1], "prompt": prompt, "gold": "1 2 3"}


def test_a_bad_conversation_stops_the_cli_with_a_paragraph_and_changes_nothing(tiny_chat_lm, tmp_path, capsys):
    earlier = tmp_path / "runs" / "chat" / "version_0"
    earlier.mkdir(parents=True)
    (earlier / "results.json").write_text('{"best": {"val/loss": 1.0}}\n')
    before = tree_digest(tmp_path / "runs")
    rows = conversations(8)
    rows[6]["messages"][-1]["content"] = "7 8 "  # found only when rendered: Llama 3's template trims it
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    path = chat_config(tmp_path, tiny_chat_lm, train_file=train, chat_template=LLAMA3, validation_split_percentage=0)
    status = run_cli("fit", "--config", path)
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    assert f"The train data ({train}) has a conversation at row 7 (column 'messages')" in err
    assert tree_digest(tmp_path / "runs") == before


def test_a_sharegpt_file_gives_the_examples_of_the_same_messages_file(tiny_chat_lm, tmp_path):
    rows = conversations(4)
    sharegpt = [
        {
            "conversations": [
                {"from": {"user": "human", "assistant": "gpt"}.get(m["role"], m["role"]), "value": m["content"]}
                for m in row["messages"]
            ]
        }
        for row in rows
    ]
    examples = []
    for name, column, data in (("messages", "messages", rows), ("sharegpt", "conversations", sharegpt)):
        data = chat_data(tiny_chat_lm, write_jsonl(tmp_path / f"{name}.jsonl", data), messages_column=column)
        data.setup("fit")
        examples.append(data.datasets["train"].to_list())
    assert examples[0] == examples[1] and len(examples[0]) == 4
