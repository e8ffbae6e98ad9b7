"""Conversations for causal LM fine-tuning: check them, render them with a chat template, and label the
assistant's turns.

The tokenizer's own `apply_chat_template` renders; what it lacks is which tokens are the assistant's. Its
`return_assistant_tokens_mask` needs `{% generation %}` markers that stock templates do not have (QwenLM/Qwen3
#1522, huggingface/trl #4879), so the spans are found here from the template's own rendering instead: the
conversation is rendered up to each assistant turn with the generation prompt, and up to the end of that
turn; the turn's text between the two must hold the assistant's content verbatim, followed only by
end-of-turn markup (special tokens and whitespace). The labelled text is the content plus that markup,
trailing whitespace excepted, so the model learns to end its turn.

The rendering is tokenized piece by piece (prompt, answer, prompt, …) rather than whole: each answer then
starts on a token boundary exactly where generation starts after the prompt, so training sees the tokens
that inference will produce. Pure functions, tested on hand-built templates of the four common families.
"""

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from hftrain.core.errors import HFTrainError
from hftrain.core.losses import IGNORE_INDEX

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
TrainOn = Literal["assistant", "all", "last_assistant"]


class ConversationError(ValueError):
    """What is wrong with one conversation; the data module adds where it is and what to do."""


class TemplateMismatch(ConversationError):
    """The chat template does not render a conversation so that its assistant turns can be found."""


def to_messages(conversation: Any) -> list[dict[str, str]]:
    """A conversation as OpenAI-style messages (`role`, `content`): given so, or in ShareGPT's form (`from`:
    human/gpt/system, `value`), which is mapped. Raises `ConversationError` for anything else, an unknown role
    or empty content."""
    if not isinstance(conversation, list) or not conversation:
        raise ConversationError(f"it is not a list of messages (got {type(conversation).__name__})")
    messages = []
    for number, message in enumerate(conversation, 1):
        if not isinstance(message, dict):
            raise ConversationError(f"message {number} is not an object with role and content")
        if message.get("role") is not None:
            role, content = message["role"], message.get("content")
            known = ROLES
        elif message.get("from") is not None:
            role, content = SHAREGPT_ROLES.get(message["from"], message["from"]), message.get("value")
            known = tuple(SHAREGPT_ROLES)
        else:
            raise ConversationError(f"message {number} has neither 'role' (OpenAI format) nor 'from' (ShareGPT)")
        if role not in ROLES:
            raise ConversationError(f"message {number} has the unknown role '{role}' (known: {', '.join(known)})")
        if not isinstance(content, str) or not content.strip():
            raise ConversationError(f"message {number} ({role}) has no text")
        messages.append({"role": role, "content": content})
    return messages


def check_turns(messages: Sequence[dict[str, str]], needs_assistant: bool) -> None:
    """At most one system message, and first; an assistant turn to learn from where `needs_assistant`."""
    roles = [m["role"] for m in messages]
    if roles.count("system") > 1:
        raise ConversationError(f"it has {roles.count('system')} system messages (one, first, at most)")
    if "system" in roles[1:]:
        raise ConversationError(f"its system message is message {roles.index('system') + 1} (it must come first)")
    if needs_assistant and "assistant" not in roles:
        raise ConversationError("it has no assistant turn to learn from")


def render(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]], template: str | None, prompt: bool = False
) -> str:
    """The conversation as text by the template (None: the tokenizer's own); `prompt` adds the generation
    prompt that opens the assistant's next turn. No messages render as nothing."""
    if not messages:
        return ""
    return tokenizer.apply_chat_template(
        list(messages), chat_template=template, tokenize=False, add_generation_prompt=prompt
    )


def end_of_turn_pattern(tokenizer: PreTrainedTokenizerBase) -> re.Pattern:
    """What may follow the assistant's content within its turn: the tokenizer's special and added tokens
    (`<|im_end|>`, `<|eot_id|>`, `</s>` …) and whitespace."""
    tokens = sorted({*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()}, key=len, reverse=True)
    return re.compile(r"(?:\s|" + "|".join(map(re.escape, tokens)) + r")*\Z")


def assistant_spans(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, str]],
    template: str | None,
    train_on: TrainOn,
    end_of_turn: re.Pattern,
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans to learn: each assistant turn's content plus its
    end-of-turn markup (the last turn only for `last_assistant`; all the text for `all`)."""
    text = render(tokenizer, messages, template)
    if train_on == "all":
        return text, [(0, len(text))]
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans = []
    for i in turns[-1:] if train_on == "last_assistant" else turns:
        before = render(tokenizer, messages[:i], template, prompt=True)
        through = render(tokenizer, messages[: i + 1], template)
        if not (through.startswith(before) and text.startswith(through)):
            raise TemplateMismatch(
                f"the chat template renders it differently as it grows (the text up to assistant message {i + 1} "
                "is not the start of the whole conversation's text), so its assistant turns cannot be found"
            )
        turn, content = through[len(before) :], messages[i]["content"]
        at = turn.rfind(content)
        tail = turn[at + len(content) :] if at >= 0 else ""
        if at < 0 or not end_of_turn.match(tail):
            raise TemplateMismatch(
                f"the chat template renders assistant message {i + 1} differently from its content (rendered: "
                f"{turn!r}), so its tokens cannot be told apart from the template's"
            )
        start = len(before) + at
        spans.append((start, start + len(content) + len(tail.rstrip())))
    return text, spans


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase, template: str | None, end_of_turn: re.Pattern) -> str | None:
    """The special token that closes an assistant turn in the template's rendering (`<|im_end|>`, `<|eot_id|>`,
    `<end_of_turn>`, `</s>` …), found on a probe conversation; None where the template renders none there."""
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    try:
        text, [(start, end)] = assistant_spans(tokenizer, probe, template, "assistant", end_of_turn)
    except ConversationError:
        return None
    specials = {*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()}
    markup = tokenizer.tokenize(text[start + len("Hello") : end])
    return next((token for token in markup if token in specials), None)


def tokenize_spans(
    tokenizer: PreTrainedTokenizerBase, text: str, spans: Sequence[tuple[int, int]]
) -> tuple[list[int], list[int]]:
    """Token ids of `text` and their labels: the tokens of `spans` labelled with themselves, the rest -100.
    Each piece between span edges is tokenized on its own (see the module docstring)."""
    edges = sorted({0, len(text), *(edge for span in spans for edge in span)})
    pieces = [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]
    encoded = tokenizer([text[a:b] for a, b in pieces], add_special_tokens=False, verbose=False)["input_ids"]
    input_ids, labels = [], []
    for (a, b), ids in zip(pieces, encoded, strict=True):
        learnt = any(start <= a and b <= end for start, end in spans)
        input_ids += ids
        labels += ids if learnt else [IGNORE_INDEX] * len(ids)
    return input_ids, labels


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase,
    conversation: Any,
    template: str | None,
    train_on: TrainOn,
    end_of_turn: re.Pattern,
) -> tuple[list[int], list[int]]:
    """A raw conversation (OpenAI or ShareGPT form) as token ids and labels; `ConversationError` if malformed."""
    messages = to_messages(conversation)
    check_turns(messages, needs_assistant=train_on != "all")
    text, spans = assistant_spans(tokenizer, messages, template, train_on, end_of_turn)
    return tokenize_spans(tokenizer, text, spans)


def user_turn(prompt: str) -> list[dict[str, str]]:
    """A plain prompt as a conversation: one user message."""
    return [{"role": "user", "content": prompt}]


def prompt_messages(conversation: Any) -> list[dict[str, str]]:
    """The messages a model answers: the conversation without its last turn if that is the assistant's (the
    gold answer)."""
    messages = to_messages(conversation)
    check_turns(messages, needs_assistant=False)
    return messages[:-1] if messages[-1]["role"] == "assistant" else messages


def prompt_text(tokenizer: PreTrainedTokenizerBase, conversation: Any, template: str | None) -> str:
    """The conversation up to its last assistant turn, with the generation prompt: what a model continues to
    answer it, as `pipeline("text-generation")` renders the same messages."""
    return render(tokenizer, prompt_messages(conversation), template, prompt=True)


def final_answer(conversation: Any) -> str | None:
    """The content of the conversation's last message if the assistant's: the gold answer to its prompt."""
    last = to_messages(conversation)[-1]
    return last["content"] if last["role"] == "assistant" else None


def load_template(value: str) -> str:
    """`data.chat_template` as Jinja text: given inline (it holds `{{` or `{%`), or read from a file."""
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise HFTrainError(
            f"data.chat_template '{value}' is neither a Jinja template (it holds no '{{{{' or '{{%') nor an existing "
            f"file (looked in {path.resolve()}). Give the template's text, or the path of a file holding it."
        )
    return path.read_text(encoding="utf-8")
