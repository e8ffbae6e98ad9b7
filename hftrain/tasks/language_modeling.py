"""Causal language modelling: fine-tune GPT-2, Llama and the like to continue text.

The model is `AutoModelForCausalLM`; its loss is next-token cross-entropy on the positions whose label is
not -100. The data module turns documents into labelled token sequences, either packed into fixed-size
blocks (the HF `run_clm` way) or one example per document, prompt/completion pairs into sequences
whose prompt tokens carry no loss, and conversations into sequences whose assistant turns alone carry loss
(`chat_processing.py`). Validation reports the loss and perplexity over all scored tokens,
and continues a few configured prompts so the TensorBoard log shows what the model writes.
"""

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import datasets
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from hftrain.core.corpus import TEXT_SUFFIXES, DocumentSplit, log_perplexity, pack_blocks, split_documents
from hftrain.core.data import TaskDataModule
from hftrain.core.data_checks import require_columns, require_text
from hftrain.core.errors import HFTrainError
from hftrain.core.generation import log_text_table, set_generation_config
from hftrain.core.losses import IGNORE_INDEX
from hftrain.core.module import Stage, TaskModule
from hftrain.core.pretrained import load_model, require_eos
from hftrain.core.sources import column
from hftrain.tasks import chat_packing, lora
from hftrain.tasks import chat_processing as chat

SOURCE_ROW = "hftrain_source_row"  # a conversation's row in its file, for the messages that name it
LM_EOS_USE = "language modelling, to mark where a document ends"
OVERFLOW_NOTES = {  # what becomes of conversations longer than a row, by data.overflow
    "drop": "they are left out, since cut they would teach answers without their end. Raise the limit to keep "
    "them, or set data.overflow to truncate or split them.",
    "truncate": "only their first tokens are learnt (data.overflow=truncate), an answer cut short without its end.",
    "split": "they are split into pieces of that length (data.overflow=split), each learnt without the ones before it.",
}


@dataclass(eq=False, repr=False, kw_only=True)
class LanguageModeling(TaskModule):
    """Fine-tune a causal language model for text generation.

    Args:
        validation_prompts: Prompts continued at the end of every validation and logged to TensorBoard as
            text (tag `val/generations`), to see what the model writes as it trains.
        max_new_tokens: Most tokens generated per prompt, in validation samples and `predict`.
        do_sample: Sample each next token; false: greedy decoding.
        temperature: Sampling temperature; lower is more conservative (sampling only).
        top_k: Sample among the k most likely tokens; 0 disables (sampling only).
        top_p: Sample among the most likely tokens whose probabilities add up to top_p (sampling only).
        generation_seed: Seed for the validation samples, so that they change between validations only
            because the model did; training's own random state is left as it was.
        lora_rank: Train LoRA adapters of this rank instead of all weights (needs `pip install
            'hftrain[lora]'`). The exported model has them merged in and loads without peft. Unset: train
            all weights.
        lora_alpha: LoRA scale: the adapters' update is multiplied by lora_alpha / lora_rank.
        lora_dropout: Dropout on the adapters' input.
        lora_target_modules: Names of the layers that get adapters (`[c_attn]` for GPT-2, `[q_proj, v_proj]`
            for Llama), or `all-linear` for every linear layer but the output head (as QLoRA does); unset, peft's
            default for the architecture.
        load_in_4bit: Load the base weights quantized to 4 bits (NF4, bf16 compute) and train LoRA adapters on
            them: QLoRA. Needs `lora_rank`, a CUDA GPU and `pip install 'hftrain[qlora]'`; the export merges the
            adapters into the base loaded again in full precision.
        end_of_turn: A token that also ends generation, besides EOS: the chat template's end of an assistant turn
            (`<|im_end|>` …), so that a reply stops there. Set by the CLI from the data; in Python pass
            `data.end_of_turn`.
    """

    pipeline_tag: ClassVar[str] = "text-generation"
    validation_prompts: list[str] | None = None
    max_new_tokens: int = 40
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    generation_seed: int = 0
    lora_rank: int | None = None
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_target_modules: lora.TargetModules = None
    load_in_4bit: bool = False
    end_of_turn: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_new_tokens < 1:
            raise HFTrainError(f"model.max_new_tokens must be a positive integer, got {self.max_new_tokens}.")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise HFTrainError(f"model.lora_rank must be a positive integer (or unset), got {self.lora_rank}.")
        if self.do_sample and (self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0):
            raise HFTrainError(
                "Sampling needs model.temperature > 0, model.top_p in (0, 1] and model.top_k >= 0 (0: no "
                f"top-k), got {self.temperature}, {self.top_p} and {self.top_k}. For greedy decoding set "
                "model.do_sample=false."
            )
        # generation happens in the module (validation samples, predict), so it needs the model's tokenizer
        self.tokenizer = require_eos(self.load_tokenizer(pad_with_eos=True), self.model_name_or_path, LM_EOS_USE)
        if self.load_in_4bit and not self.lora_rank:
            raise HFTrainError(
                "model.load_in_4bit is set without model.lora_rank: 4-bit weights cannot be trained themselves. "
                "Set model.lora_rank (e.g. 16) to train LoRA adapters on them (QLoRA), or unset model.load_in_4bit."
            )
        loading = lora.quantized_loading(self.load_in_4bit)
        model = self.load_pretrained(AutoModelForCausalLM, loading=loading, pad_token_id=self.tokenizer.pad_token_id)
        # greedy decoding clears the pretrained sampling settings: transformers refuses to save both
        sampling = {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}
        set_generation_config(
            model,
            strict=True,
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            pad_token_id=self.tokenizer.pad_token_id,
            **self._stop_tokens(model),
            **(sampling if self.do_sample else dict.fromkeys(sampling)),
        )
        if self.lora_rank:
            model = lora.add_lora(
                model,
                self.model_name_or_path,
                self.lora_rank,
                self.lora_alpha,
                self.lora_dropout,
                self.lora_target_modules,
                self.gradient_checkpointing,
                quantized=self.load_in_4bit,
            )
        self.model = model
        self.isolation_checked = False  # whether the model was seen to keep packed conversations apart
        self.monitor = "val/perplexity"
        self.monitor_mode = "min"

    def _stop_tokens(self, model: PreTrainedModel) -> dict[str, list[int]]:
        """The generation setting that stops a reply at `end_of_turn` too (none without one): the model's own
        EOS ids, with the end of turn's added."""
        if self.end_of_turn is None:
            return {}
        token = self.tokenizer.convert_tokens_to_ids(self.end_of_turn)
        if token is None or token == self.tokenizer.unk_token_id:
            raise HFTrainError(
                f"model.end_of_turn '{self.end_of_turn}' is not a token of the tokenizer of "
                f"'{self.model_name_or_path}'. Give one of its special tokens, or leave it unset."
            )
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        return {"eos_token_id": eos + [token] if token not in eos else eos}

    def forward(self, **batch: torch.Tensor):
        """The model's outputs; a batch of packed conversations goes through transformers' packed-sequence path
        (`chat_packing`), once the model has shown that its architecture takes it."""
        if chat_packing.is_packed(batch):
            if not self.isolation_checked and not chat_packing.isolates_packed_sequences(self.model):
                raise HFTrainError(
                    f"The model '{self.model_name_or_path}' ({type(self.model).__name__}) lets packed conversations "
                    "attend to each other: its architecture does not restart attention where the position ids "
                    "restart. Set data.packing=false (one example per conversation), or use a model whose "
                    "transformers code builds its mask with create_causal_mask (GPT-2, Llama, Qwen, Mistral, Gemma …)."
                )
            self.isolation_checked = True
            batch = chat_packing.packed_model_inputs(batch, self.model.config._attn_implementation)
        return super().forward(**batch)

    def loss_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The predicted positions: every label after the first that is not -100 (the model shifts them)."""
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, batch: dict[str, torch.Tensor], stage: Stage) -> None:
        scored = batch["labels"][:, 1:] != IGNORE_INDEX
        tokens = scored.sum()
        if tokens > 0:
            outputs = self(**batch)
            self.log_loss(stage, outputs.loss, batch)
            if self.custom[stage]:
                predicted = outputs.logits[:, :-1].argmax(-1)
                self.update_custom_metrics(stage, predicted[scored], batch["labels"][:, 1:][scored])
        rows = self.examples_wanted(stage, list(range(len(batch["input_ids"]))))
        if rows:
            self.add_continued_examples(batch, rows)

    def add_continued_examples(self, batch: dict[str, torch.Tensor], rows: list[int]) -> None:
        """Validation examples: each of the batch's `rows` (a packed row's first conversation) cut after its prompt
        (a completion's, or a conversation's up to its first assistant reply) or half way (at most 64 tokens in),
        shown with its true continuation (up to the end of the learnt reply) and the model's, which one
        `generate` call makes for all of them."""
        starts, golds = [], []
        for row in rows:
            if chat_packing.is_packed(batch):  # the row's first conversation
                ids = batch["input_ids"][row][: chat_packing.first_sequence_length(batch["position_ids"][row])]
            else:
                ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
            labels = batch["labels"][row][: len(ids)]
            # a packed sequence's first label is -100 whatever it is (chat_packing): one is no prompt
            prompted = int((labels == IGNORE_INDEX).long().cumprod(0).sum())
            cut = prompted if 1 < prompted < len(ids) else min(len(ids) // 2, 64)
            answer = int((labels[cut:] != IGNORE_INDEX).long().cumprod(0).sum()) or len(ids)  # one reply's end
            starts.append(ids[:cut].tolist())
            golds.append(ids[cut : cut + min(answer, self.max_new_tokens)].tolist())
        inputs = self.tokenizer.pad({"input_ids": starts}, padding_side="left", return_tensors="pt").to(self.device)
        with self.generation_rng():
            continuations = self._continue(inputs["input_ids"], inputs["attention_mask"])
        decode = self.tokenizer.decode  # end-of-text marks shown
        self.add_examples((decode(s), decode(g), c) for s, g, c in zip(starts, golds, continuations, strict=True))

    def log_metrics(self, stage: Stage) -> None:
        log_perplexity(self, stage)
        if stage == self.val_stages[0] and self.validation_prompts and not self.trainer.sanity_checking:
            with self.generation_rng():
                completions = self.generate(self.validation_prompts)
            rows = list(zip(self.validation_prompts, completions, strict=True))
            log_text_table(self, "val/generations", ["prompt", "completion"], rows)

    # ------------------------------------------------------------------ generation

    @contextlib.contextmanager
    def generation_rng(self) -> Iterator[None]:
        """Sample with `generation_seed`, so validation samples change only because the model did; training's
        own random state is restored afterwards."""
        on_cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device.index] if on_cuda else []):
            torch.manual_seed(self.generation_seed)
            yield

    @torch.no_grad()
    def generate(self, prompts: list[str]) -> list[str]:
        """Continue each prompt with the configured generation settings; returns the continuations only."""
        inputs = self.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt").to(self.device)
        return self._continue(inputs["input_ids"], inputs["attention_mask"])

    def _continue(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        """Generate after left-padded prompts and decode what follows each prompt."""
        output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask)
        return self.tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[dict[str, str]]:
        """Per prompt: its id, text and gold completion where the data has one, then the generated text."""
        prompts = self.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
        completions = self._continue(batch["input_ids"], batch["attention_mask"])
        return self.with_rows(
            batch, [{"prompt": p, "completion": c} for p, c in zip(prompts, completions, strict=True)]
        )

    # ------------------------------------------------------------------ export

    def exported_model(self, weights: dict[str, torch.Tensor] | None) -> tuple[PreTrainedModel, dict | None]:
        """With LoRA, a copy with the adapters merged into the weights (for QLoRA, into the base loaded again in
        full precision), so the export loads without peft."""
        if self.lora_rank is None:
            return self.model, weights
        load_base = self._full_precision_base if self.load_in_4bit else None
        return lora.merged_model(self.model, weights, load_base), None

    def _full_precision_base(self) -> PreTrainedModel:
        model, _ = load_model(
            AutoModelForCausalLM,
            self.model_name_or_path,
            self.revision,
            self.trust_remote_code,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        model.generation_config = self.model.generation_config
        return model


@dataclass
class CausalLMCollator:
    """Pad a batch for a causal LM: training examples on the right with labels padded by -100, so padding adds
    no loss; prompts (no labels) on the left, since generation continues from each row's last position.

    Written here because `DataCollatorForSeq2Seq` pads on the tokenizer's side, which some causal LM
    tokenizers set to the left.
    """

    tokenizer: PreTrainedTokenizerBase

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        if "position_ids" in features[0]:
            return chat_packing.collate_packed(features, self.tokenizer.pad_token_id)
        labels = [f["labels"] for f in features] if "labels" in features[0] else None
        batch = self.tokenizer.pad(
            [{"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]} for f in features],
            padding_side="left" if labels is None else "right",
            return_tensors="pt",
        )
        if labels is not None:
            batch["labels"] = torch.full_like(batch["input_ids"], IGNORE_INDEX)
            for row, row_labels in enumerate(labels):
                batch["labels"][row, : len(row_labels)] = torch.tensor(row_labels)
        return batch


@dataclass(eq=False, repr=False, kw_only=True)
class LanguageModelingData(TaskDataModule):
    """Text to learn to continue: whole documents, prompt/completion pairs whose prompts carry no loss, or
    conversations whose assistant turns alone carry loss (`messages_column`).

    Documents come from a Hub dataset's text column (wikitext), JSONL/CSV rows, or .txt files. Every
    document ends with the tokenizer's end-of-sequence token, so the model learns where text stops.
    `max_length` is the example length when `packing` is off, and the longest prompt for `predict`
    (longer prompts keep their last tokens).

    Args:
        text_column: Column with the documents (a .txt file's text lands in this column).
        prompt_column: Column with prompts. With `completion_column`, the model learns to write the
            completion after the prompt, and the loss is taken on the completion only.
        completion_column: Column with the completions to learn.
        packing: Concatenate the documents and cut them into `block_size` blocks, as the HF `run_clm`
            example does: no padding, and no text is cut off. Conversations are packed whole instead, best-fit
            into rows of `block_size`, each attending only to itself (position ids restart with each one).
            False: one example per document or conversation, cut at `max_length`, padding left out of the loss.
        block_size: Tokens per packed block; defaults to the tokenizer's `model_max_length`, at most 1024.
        text_file_documents: How a .txt file splits into documents: `paragraph` (blocks separated by blank
            lines), `line`, or `file` (the whole file is one document). A .txt predict file always holds
            one prompt per line.
        messages_column: Column with conversations to learn: lists of `{role, content}` messages (OpenAI
            format; roles system, user, assistant) or of ShareGPT's `{from, value}` (human, gpt, system). They are
            rendered with the chat template.
        chat_template: Jinja chat template (its text, or a file holding it) for `messages_column`; unset: the
            tokenizer's own.
        train_on: Which tokens of a conversation carry loss: every `assistant` turn's content and end-of-turn
            token (found from the template's own rendering, no `{% generation %}` markers needed), the
            `last_assistant` turn's only, or `all` tokens.
        overflow: What becomes of a conversation longer than a packed row (`block_size`), or than `max_length`
            unpacked: `drop` it (named in a warning), `truncate` it to its first tokens, or `split` it into
            consecutive pieces, each learnt without the ones before it.
    """

    text_column: str = "text"
    prompt_column: str | None = None
    completion_column: str | None = None
    packing: bool = True
    block_size: int | None = None
    text_file_documents: DocumentSplit = "paragraph"
    messages_column: str | None = None
    chat_template: str | None = None
    train_on: Literal["assistant", "all", "last_assistant"] = "assistant"
    overflow: chat_packing.Overflow = "drop"

    pad_with_eos: ClassVar[bool] = True
    streams: ClassVar[bool] = True

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return require_eos(super().tokenizer, self.tokenizer_name, LM_EOS_USE)

    @property
    def end_of_turn(self) -> str | None:
        """The token that closes the chat template's assistant turns (none without conversations), where a reply
        ends: the CLI links it to `model.end_of_turn`."""
        if not self.messages_column:
            return None
        template = chat.load_template(self.chat_template) if self.chat_template else None
        return chat.end_of_turn_token(self.tokenizer, template, chat.end_of_turn_pattern(self.tokenizer))

    @property
    def collator(self) -> CausalLMCollator:
        return CausalLMCollator(self.tokenizer)

    # ------------------------------------------------------------------ reading

    def supported_suffixes(self) -> list[str]:
        return sorted([*super().supported_suffixes(), *TEXT_SUFFIXES])

    def read_file(self, path: Path) -> datasets.Dataset:
        """Read a .txt file, or one without a suffix (WikiExtractor's `wiki_00`), as documents (a predict
        file: prompts, one per line); others as the base does."""
        if path.suffix.lower() not in TEXT_SUFFIXES:
            return super().read_file(path)
        is_prompts = self.predict_file is not None and path == Path(self.predict_file).expanduser()
        text = self.read_text(path)
        if is_prompts and self.messages_column:  # each line a user's message
            lines = split_documents(text, "line", "prompt")["prompt"]
            return datasets.Dataset.from_dict({self.messages_column: [chat.user_turn(line) for line in lines]})
        if is_prompts:
            return split_documents(text, "line", self.prompt_column or self.text_column)
        return split_documents(text, self.text_file_documents, self.text_column)

    def check_data(self, raw: datasets.DatasetDict) -> None:
        if self.messages_column and self.streaming:
            raise HFTrainError(
                "data.messages_column is set with data.streaming=true: conversations are checked and measured "
                "whole before training (long ones are left out), which a stream cannot do. Set data.streaming=false."
            )
        if self.messages_column:
            self._check_conversations(raw)
            return
        if self.chat_template is not None or self.train_on != "assistant" or self.overflow != "drop":
            raise HFTrainError(
                "data.chat_template, data.train_on and data.overflow apply to conversations: set "
                "data.messages_column to the column that holds them, or leave them unset for documents and "
                "prompt/completion pairs."
            )
        if (self.prompt_column is None) != (self.completion_column is None):
            raise HFTrainError(
                "data.prompt_column and data.completion_column go together: set both to learn completions of "
                "prompts, or neither to learn whole documents from data.text_column."
            )
        if self.block_size is not None and self.block_size < 1:
            raise HFTrainError(f"data.block_size must be a positive integer (or unset), got {self.block_size}.")
        if self.prompt_column:
            columns = {"prompt_column": self.prompt_column, "completion_column": self.completion_column}
        else:
            columns = {"text_column": self.text_column}
        require_columns(raw, columns, self.source, optional=("completion_column",))
        require_text(raw, list(columns.values()), self.source)

    def _check_conversations(self, raw: datasets.DatasetDict) -> None:
        """Chat settings, then every conversation's messages, roles and turns, naming the first bad row; each row
        keeps its number in its file for the messages of tokenization (after validation is held out)."""
        if self.chat_template is not None:
            self.chat_template = chat.load_template(self.chat_template)  # the text, so the cache follows edits
            # exported with the model (hf_model/), so that pipeline("text-generation") renders messages as trained
            self.tokenizer.chat_template = self.chat_template
        elif not self.tokenizer.chat_template:
            raise HFTrainError(
                f"The tokenizer of '{self.tokenizer_name}' has no chat template to render data.messages_column "
                "with. Give one as data.chat_template (a Jinja template, or a file holding it), or use the "
                "tokenizer of a chat model."
            )
        require_columns(raw, {"messages_column": self.messages_column}, self.source)
        for split, dataset in raw.items():
            for row, conversation in enumerate(column(dataset, self.messages_column)):
                try:
                    chat.check_turns(chat.to_messages(conversation), needs_assistant=self._needs_assistant(split))
                except chat.ConversationError as err:
                    raise self._conversation_error(split, row, err) from err
            raw[split] = dataset.add_column(SOURCE_ROW, list(range(len(dataset))))

    def _needs_assistant(self, split: str) -> bool:
        return split != "predict" and self.train_on != "all"

    def _conversation_error(self, split: str, row: int, err: chat.ConversationError) -> HFTrainError:
        return HFTrainError(
            f"The {split} data ({self.source(split)}) has a conversation at row {row + 1} (column "
            f"'{self.messages_column}') that cannot be trained on: {err}. Fix or drop that row"
            + (
                ", or give a data.chat_template that renders it as given."
                if isinstance(err, chat.TemplateMismatch)
                else "."
            )
        )

    def input_columns(self) -> list[str]:
        return [self.messages_column or self.prompt_column or self.text_column]

    def predict_rows(self, inputs: list) -> list[dict]:
        """For conversations: each input a conversation (a list of messages), a plain prompt (a string, made a
        user's message) or a row; a list of messages alone is one conversation."""
        if not self.messages_column:
            return super().predict_rows(inputs)
        if all(isinstance(item, Mapping) and self.messages_column not in item for item in inputs):
            inputs = [inputs]
        rows = []
        for item in inputs:
            if isinstance(item, Mapping):
                rows.append(dict(item))
            else:
                rows.append({self.messages_column: chat.user_turn(item) if isinstance(item, str) else item})
        return rows

    # ------------------------------------------------------------------ tokenization

    def packed_block_size(self) -> int:
        """`block_size`, or the tokenizer's longest input capped at 1024 (tokenizers without one say 1e30)."""
        limit = self.tokenizer.model_max_length
        if self.block_size is None:
            return min(limit, 1024)
        if self.block_size > limit:
            raise HFTrainError(
                f"data.block_size {self.block_size} is longer than the model takes ({limit} tokens, the "
                f"tokenizer's model_max_length). Set data.block_size to {limit} or less."
            )
        return self.block_size

    def stream_block_size(self) -> int | None:
        return self.packed_block_size() if self.packing else None

    def preprocess(self, raw: datasets.DatasetDict) -> datasets.DatasetDict:
        processed = self.map_splits(raw, self.encode)
        if self.messages_column:
            processed = self._fit_conversations(processed)
        processed = self.report_truncation(
            processed,
            "length",
            "max_length",
            lambda split, _: (
                f"only their last {self.max_length} tokens are continued"
                if split == "predict"
                else f"only their first {self.max_length} tokens are trained on or scored"
            ),
        )
        for split, examples in processed.items():
            if self.packing and split != "predict" and not self.messages_column:
                processed[split] = examples.map(
                    pack_blocks,
                    fn_kwargs={"size": self.packed_block_size()},
                    batched=True,
                    num_proc=self.preprocessing_num_workers,
                    desc=f"Packing {split} into blocks",
                )
        return processed

    def row_fields(self, batch: dict[str, list], split: str, features: datasets.Features) -> dict[str, list] | None:
        """Prompts to continue (`predict`) keep their text and, where the data has it, the gold completion;
        the other splits' rows are packed or dropped when blank, so they carry none."""
        if split != "predict":
            return None
        if self.messages_column:
            template, conversations = self.chat_template, batch[self.messages_column]
            return {
                "messages": [chat.prompt_messages(c) for c in conversations],
                "prompt": [chat.prompt_text(self.tokenizer, c, template) for c in conversations],
                "gold": [chat.final_answer(c) for c in conversations],
            }
        fields = {"prompt": batch[self.prompt_column or self.text_column]}
        if self.completion_column and self.completion_column in batch:
            fields["gold"] = batch[self.completion_column]
        return fields

    def encode(
        self, batch: dict[str, list], split: str, features: datasets.Features, rows: list[int]
    ) -> dict[str, list]:
        """Prompts to continue for `predict`, labelled examples for the other splits (`rows`: the batch's
        positions in its split, for error messages)."""
        if split == "predict":
            return self._encode_prompts(batch)
        if self.messages_column:
            return self._encode_conversations(batch, split)
        return self._encode_examples(batch, rows, split)

    def _encode_conversations(self, batch: dict[str, list], split: str) -> dict[str, list]:
        """Ids and labels per conversation, loss on the turns `train_on` names; each row's length and row in its
        file go to `_drop_long_conversations`."""
        end_of_turn = chat.end_of_turn_pattern(self.tokenizer)
        input_ids, labels = [], []
        for row, conversation in zip(batch[SOURCE_ROW], batch[self.messages_column], strict=True):
            try:
                ids, row_labels = chat.encode_conversation(
                    self.tokenizer, conversation, self.chat_template, self.train_on, end_of_turn
                )
            except chat.ConversationError as err:
                raise self._conversation_error(split, row, err) from err
            input_ids.append(ids)
            labels.append(row_labels)
        return {
            "input_ids": input_ids,
            "attention_mask": [[1] * len(ids) for ids in input_ids],
            "labels": labels,
            "length": [len(ids) for ids in input_ids],
            SOURCE_ROW: batch[SOURCE_ROW],
        }

    def _fit_conversations(self, processed: datasets.DatasetDict) -> datasets.DatasetDict:
        """Conversations longer than a row (`block_size` packed, `max_length` not) dropped, truncated or split as
        `overflow` says, and named; then, with `packing`, packed best-fit into rows. By default an evaluation
        split keeps none of them either, so its loss is over whole turns."""
        limit = self.packed_block_size() if self.packing else self.max_length
        setting = "data.block_size" if self.packing else "data.max_length"
        for split, encoded in processed.items():
            if split == "predict":
                continue
            lengths, rows = column(encoded, "length"), column(encoded, SOURCE_ROW)
            long = [i for i, n in enumerate(lengths) if n > limit]
            if len(long) == len(encoded) and self.overflow == "drop":
                raise HFTrainError(
                    f"Every conversation of the {split} data ({self.source(split)}) is longer than {setting}="
                    f"{limit} tokens (the shortest has {min(lengths)}). Raise {setting}, or set data.overflow to "
                    "truncate or split them."
                )
            if long:
                named = ", ".join(str(rows[i] + 1) for i in sorted(long, key=rows.__getitem__)[:10])
                self._notes.append(
                    f"{len(long)} of {len(encoded)} conversations in the {split} split ({self.source(split)}) are "
                    f"longer than {setting}={limit} tokens (the longest has {max(lengths[i] for i in long)}; rows "
                    f"{named}{', …' if len(long) > 10 else ''}): {OVERFLOW_NOTES[self.overflow]}"
                )
            processed[split] = encoded.map(
                chat_packing.fit_conversations,
                fn_kwargs={"limit": limit, "overflow": self.overflow, "pack": self.packing},
                batched=True,
                remove_columns=encoded.column_names,
                num_proc=self.preprocessing_num_workers,
                desc=f"Packing {split} conversations" if self.packing else f"Fitting {split} conversations",
            )
        return processed

    def _encode_examples(self, batch: dict[str, list], indices: list[int], split: str) -> dict[str, list]:
        """Ids and labels per row, ending in EOS; prompt tokens labelled -100; blank documents skipped."""
        eos = self.tokenizer.eos_token_id
        # not verbose: the tokenizer would warn about documents longer than the model takes, which this cuts

        def ended(ids: list[int]) -> list[int]:
            return ids if ids[-1:] == [eos] else [*ids, eos]

        if self.prompt_column:
            prompts = self.tokenizer(batch[self.prompt_column], verbose=False)["input_ids"]
            completions = self.tokenizer(batch[self.completion_column], add_special_tokens=False, verbose=False)[
                "input_ids"
            ]
            labels = [[IGNORE_INDEX] * len(p) + ended(c) for p, c in zip(prompts, completions, strict=True)]
            input_ids = [p + ended(c) for p, c in zip(prompts, completions, strict=True)]
        else:
            kept = [(i, text) for i, text in zip(indices, batch[self.text_column], strict=True) if text.strip()]
            indices = [i for i, _ in kept]
            input_ids = [ended(ids) for ids in self.tokenizer([text for _, text in kept], verbose=False)["input_ids"]]
            labels = [list(ids) for ids in input_ids]
        lengths = [len(ids) for ids in input_ids]
        if not self.packing:
            input_ids = [ids[: self.max_length] for ids in input_ids]
            labels = [row[: self.max_length] for row in labels]
            for row, row_labels in zip(indices, labels, strict=True):
                if all(label == IGNORE_INDEX for label in row_labels):
                    raise HFTrainError(
                        f"The {split} data ({self.source(split)}) has a prompt at row {row + 1} of "
                        f"{len(row_labels)} or more tokens, which leaves no room for its completion within "
                        f"data.max_length = {self.max_length}. Raise data.max_length or shorten the prompt."
                    )
        return {
            "input_ids": input_ids,
            "attention_mask": [[1] * len(ids) for ids in input_ids],
            "labels": labels,
            **({} if self.packing else {"length": lengths}),  # packing cuts no text: nothing to report
        }

    def _encode_prompts(self, batch: dict[str, list]) -> dict[str, list]:
        """Prompts to continue, keeping each one's last `max_length` tokens (nearest what comes next); a
        conversation's is its text up to its last assistant turn, with the generation prompt."""
        if self.messages_column:
            texts = [chat.prompt_text(self.tokenizer, c, self.chat_template) for c in batch[self.messages_column]]
            encoded = self.tokenizer(texts, add_special_tokens=False, verbose=False)
        else:
            encoded = self.tokenizer(batch[self.prompt_column or self.text_column], verbose=False)
        kept = {key: [row[-self.max_length :] for row in encoded[key]] for key in ("input_ids", "attention_mask")}
        return {**kept, "length": [len(ids) for ids in encoded["input_ids"]]}
