"""hftrain takes the HF Trainer's optimizer steps: from the same weights, on the same batches in the same order,
with dropout off, both end with the same weights. This covers what decides training besides the data order
and dropout: AdamW and its weight-decay groups, the learning-rate schedule with warmup, gradient clipping,
the loss, gradient accumulation (a token-level loss averaged over all the tokens of a step, an epoch's last,
shorter step included), and an epoch boundary. Each test runs twice: with whole batches, and with every batch
split by length wherever its rows differ in length (`data.split_by_length`, free parts), which must take the
same steps. Left to their own shuffles and dropout, two runs differ as two seeds do, which is how
docs/performance.md's side-by-side runs are read.
"""

import copy
import random
from pathlib import Path

import pytest
import torch
from conftest import FILLER, counting, sentiment_rows, write_csv
from helpers import quiet_trainer, write_jsonl
from test_language_modeling import write_paragraphs
from test_multiple_choice import swag_rows
from test_question_answering import sentiment_questions, squad_file
from test_seq2seq import cipher_rows
from test_token_classification import ner_rows
from torch.utils.data import DataLoader

from hftrain.core import length_split
from hftrain.core.module import TaskModule
from hftrain.core.sampling import EpochShuffleSampler
from hftrain.tasks.language_modeling import LanguageModeling, LanguageModelingData
from hftrain.tasks.multiple_choice import MultipleChoice, MultipleChoiceData
from hftrain.tasks.question_answering import QuestionAnswering, QuestionAnsweringData
from hftrain.tasks.seq2seq import Seq2Seq, Seq2SeqData
from hftrain.tasks.text_classification import TextClassification, TextClassificationData
from hftrain.tasks.token_classification import TokenClassification, TokenClassificationData

# question answering's loss counts padded positions, so its batches are never split (`loss_reads_padding`): its
# split run must train on whole batches alone
NEVER_SPLIT = {"test_question_answering_takes_the_hf_trainers_steps"}


@pytest.fixture(params=["whole batches", "split batches"], autouse=True)
def split(request, monkeypatch):
    """Run the test with whole batches, then with each batch cut wherever its rows' lengths differ (parts cost
    nothing); the second run must have trained on split batches, unless its task never splits them."""
    if request.param == "whole batches":
        yield
        return
    monkeypatch.setattr(length_split, "PART_COST", 0)
    parts = []
    split_batch_loss = TaskModule.split_batch_loss
    monkeypatch.setattr(
        TaskModule, "split_batch_loss", lambda self, batch: split_batch_loss(self, parts.append(batch) or batch)
    )
    yield
    if request.function.__name__ in NEVER_SPLIT:
        assert not parts, "a batch was split"
    else:
        assert parts, "no batch was split"


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for layer in model.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
    return model


def assert_same_steps(
    module: TaskModule, data, collator, tmp_path: Path, steps: int, accumulate: int, clip, epochs, no_gradient=()
):
    """Fit `module` for `steps` optimizer steps with Lightning, and a copy of its model with the HF Trainer on
    the batches hftrain's sampler drew (`epochs` of them, in order); the weights must agree, except those named
    in `no_gradient`, whose gradient is zero but for rounding, which AdamW's normalized steps turn into moves
    of up to the learning rate on either side."""
    from transformers import Trainer as HFTrainer
    from transformers import TrainingArguments

    hf_model = copy.deepcopy(without_dropout(module.model))
    before = copy.deepcopy(module.model.state_dict())
    quiet_trainer(max_steps=steps, accumulate_grad_batches=accumulate, gradient_clip_val=clip).fit(
        module, datamodule=data
    )

    train = data.datasets["train"]
    train = train.select_columns([c for c in train.column_names if c in module.model_inputs])
    sampler = EpochShuffleSampler(len(train), data.seed)
    order = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order += sampler.order().tolist()

    class SameBatches(HFTrainer):
        def get_train_dataloader(self) -> DataLoader:
            return DataLoader(train, batch_size=data.batch_size, sampler=order, collate_fn=collator)

    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=steps,
        per_device_train_batch_size=data.batch_size,
        gradient_accumulation_steps=accumulate,
        learning_rate=module.learning_rate,
        weight_decay=module.weight_decay,
        adam_epsilon=module.adam_epsilon,
        warmup_steps=module.warmup_steps,
        lr_scheduler_type=module.lr_scheduler_type,
        max_grad_norm=clip or 0.0,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    SameBatches(model=hf_model, args=args).train()

    hf_weights = dict(hf_model.named_parameters())
    for name, weight in module.model.named_parameters():
        message = lambda m, name=name: f"{name}: {m}"  # noqa: E731
        if name in no_gradient:
            continue
        torch.testing.assert_close(weight, hf_weights[name], rtol=1e-5, atol=2e-5, msg=message)
        assert not torch.equal(weight, before[name]), f"{name} did not train"


def assert_micro_batches_step_as_one_batch(make_data, make_module) -> None:
    """Train 8 steps of one batch of 12 and 8 steps of 3 accumulated micro-batches of 4, from the same weights
    (`make_module(data)` after the same seed) with dropout off: the weights must agree."""
    weights = []
    for batch_size, accumulate in [(12, 1), (4, 3)]:
        data = make_data(batch_size)
        torch.manual_seed(0)
        module = make_module(data)
        without_dropout(module.model)
        quiet_trainer(max_steps=8, accumulate_grad_batches=accumulate).fit(module, datamodule=data)
        weights.append(module.model.state_dict())
    for name, weight in weights[0].items():
        torch.testing.assert_close(weights[1][name], weight, rtol=1e-4, atol=2e-5)


def varied_sentiment_file(folder: Path, rows: int, seed: int) -> str:
    """A CSV of sentiment sentences with 0-9 filler words added, so batches have rows of different lengths."""
    rng = random.Random(seed)
    varied = [
        {**row, "text": " ".join([row["text"], *rng.sample(FILLER, rng.randint(0, 9))])} for row in sentiment_rows(rows)
    ]
    return str(write_csv(folder / "train.csv", varied))


@pytest.mark.parametrize(("schedule", "clip"), [("linear", 1.0), ("cosine", None)])
def test_text_classification_takes_the_hf_trainers_steps(tiny_bert, tmp_path, schedule, clip):
    from transformers import DataCollatorWithPadding

    data = TextClassificationData(
        tokenizer_name=tiny_bert,
        train_file=varied_sentiment_file(tmp_path, 72, seed=0),
        validation_split_percentage=0,
        batch_size=8,
    )
    module = TextClassification(
        model_name_or_path=tiny_bert,
        label_names=data.label_names,
        problem_type=data.problem_type,
        learning_rate=2e-3,
        weight_decay=0.01,
        warmup_steps=0.25,  # of 18 steps: 4.5, which the HF Trainer rounds up
        lr_scheduler_type=schedule,
    )
    without_dropout(module.model)
    collator = DataCollatorWithPadding(data.tokenizer)
    assert_same_steps(module, data, collator, tmp_path, steps=18, accumulate=1, clip=clip, epochs=2)


def test_multiple_choice_takes_the_hf_trainers_steps(tiny_bert, tmp_path):
    """SWAG-shaped rows whose contexts have 0-9 filler words added; the HF side batches them with transformers'
    own `DataCollatorForMultipleChoice`, as run_swag does."""
    from transformers import DataCollatorForMultipleChoice

    rng = random.Random(0)
    rows = [
        {**row, "sent1": " ".join([row["sent1"], *rng.sample(FILLER, rng.randint(0, 9))])} for row in swag_rows(48, 1)
    ]
    data = MultipleChoiceData(
        tokenizer_name=tiny_bert,
        train_file=write_jsonl(tmp_path / "train.json", rows),
        validation_split_percentage=0,
        batch_size=8,
    )
    # a small rate: the pooler's bias gets a gradient summed over a row's choices that nearly cancels, whose
    # rounding noise AdamW's normalized steps made differ by up to 2.3e-5 (over the tolerance) at 5e-4
    module = MultipleChoice(model_name_or_path=tiny_bert, learning_rate=2e-4, weight_decay=0.01, warmup_steps=2)
    without_dropout(module.model)
    collator = DataCollatorForMultipleChoice(data.tokenizer)
    # the classifier's bias adds the same to every choice's score, which the softmax over choices cancels
    no_gradient = ("classifier.bias",)
    assert_same_steps(
        module, data, collator, tmp_path, steps=12, accumulate=1, clip=1.0, epochs=2, no_gradient=no_gradient
    )


def test_language_modeling_averages_accumulated_micro_batches_over_their_tokens(tiny_gpt2, tmp_path):
    """100 documents of 5-15 numbers, one example each, in micro-batches of 4 accumulated by 3: a step's
    micro-batches hold different numbers of predicted tokens, and the epoch's 9th step has one micro-batch.
    The HF Trainer divides each step's summed token loss by the step's count of predicted tokens."""
    data = LanguageModelingData(
        tokenizer_name=tiny_gpt2,
        train_file=write_paragraphs(tmp_path / "train.txt", counting(100, seed=1)),
        validation_split_percentage=0,
        packing=False,
        batch_size=4,
    )
    data.setup("fit")
    module = LanguageModeling(model_name_or_path=tiny_gpt2, learning_rate=2e-3, warmup_steps=2)
    # a GPT-2 built from a config names no loss type, and the HF Trainer (transformers 5.24) then counts each
    # row's first label, which nothing predicts (docs/benchmarks/2026-11-30-cpu-journal.md,
    # section 3); the loss is the same
    module.model.loss_type = "ForCausalLM"
    without_dropout(module.model)
    assert_same_steps(module, data, data.collator, tmp_path, steps=9, accumulate=3, clip=1.0, epochs=1)


def test_accumulated_micro_batches_weigh_class_weighted_tokens_as_one_batch(tiny_bert, tmp_path):
    """Token classification with class weights: 3 micro-batches of 4 sentences make the step one batch of 12
    makes (the weighted cross-entropy divides by the summed weights of the labelled tokens)."""
    train = str(write_jsonl(tmp_path / "train.jsonl", ner_rows(96, seed=1)))
    assert_micro_batches_step_as_one_batch(
        lambda batch_size: TokenClassificationData(
            tokenizer_name=tiny_bert, train_file=train, validation_split_percentage=0, batch_size=batch_size
        ),
        lambda data: TokenClassification(
            model_name_or_path=tiny_bert,
            label_names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
            class_weights={"B-PER": 3.0, "I-PER": 2.0, "O": 0.5},
            learning_rate=2e-3,
        ),
    )


def test_class_weighted_text_classification_steps_over_micro_batches_as_one_batch(tiny_bert, tmp_path):
    """The weighted cross-entropy divides by the gold classes' summed weights: 3 micro-batches of 4 (and the
    parts of a split batch) are weighed by theirs, so the step equals one batch of 12."""
    train = varied_sentiment_file(tmp_path, 96, seed=1)
    assert_micro_batches_step_as_one_batch(
        lambda batch_size: TextClassificationData(
            tokenizer_name=tiny_bert, train_file=train, validation_split_percentage=0, batch_size=batch_size
        ),
        lambda data: TextClassification(
            model_name_or_path=tiny_bert,
            label_names=data.label_names,
            class_weights={"pos": 4.0, "neg": 0.5},
            learning_rate=2e-3,
        ),
    )


def test_seq2seq_takes_the_hf_trainers_steps(tiny_t5, tmp_path):
    """Sources of 3-6 words and their targets: the loss is a mean over a batch's target tokens (accumulation
    is left out: T5's own loss ignores the HF Trainer's token count, see docs/benchmarks/2026-11-30-cpu-journal.md)."""
    data = Seq2SeqData(
        tokenizer_name=tiny_t5,
        train_file=write_jsonl(tmp_path / "train.jsonl", cipher_rows(64, seed=1)),
        validation_split_percentage=0,
        batch_size=8,
    )
    data.setup("fit")
    module = Seq2Seq(model_name_or_path=tiny_t5, learning_rate=2e-3, warmup_steps=2)
    without_dropout(module.model)
    assert_same_steps(module, data, data.collator, tmp_path, steps=10, accumulate=1, clip=1.0, epochs=2)


def test_token_classification_takes_the_hf_trainers_steps(tiny_bert, tmp_path):
    """Sentences of 4-8 words tagged IOB2, padded by `run_ner.py`'s collator on the HF side: the loss is a
    mean over a batch's labelled first subwords (accumulation is left out: BERT's token classification loss
    ignores the HF Trainer's token count, as T5's does)."""
    from transformers import DataCollatorForTokenClassification

    data = TokenClassificationData(
        tokenizer_name=tiny_bert,
        train_file=write_jsonl(tmp_path / "train.jsonl", ner_rows(48, seed=1)),
        validation_split_percentage=0,
        batch_size=8,
    )
    data.setup("fit")
    module = TokenClassification(
        model_name_or_path=tiny_bert,
        label_names=data.label_names,
        learning_rate=2e-3,
        weight_decay=0.01,
        warmup_steps=2,
    )
    without_dropout(module.model)
    collator = DataCollatorForTokenClassification(data.tokenizer)
    assert_same_steps(module, data, collator, tmp_path, steps=12, accumulate=1, clip=1.0, epochs=2)


def test_question_answering_takes_the_hf_trainers_steps(tiny_bert, tmp_path):
    """Questions whose contexts span one window or several (max_length 32, stride 8), a quarter unanswerable:
    the loss is a mean over a batch's windows, padded by `run_qa.py`'s collator on the HF side."""
    from transformers import DataCollatorWithPadding

    data = QuestionAnsweringData(
        tokenizer_name=tiny_bert,
        train_file=squad_file(tmp_path / "train.json", sentiment_questions(24, seed=1)),
        validation_split_percentage=0,
        max_length=32,
        doc_stride=8,
        batch_size=8,
    )
    data.setup("fit")
    module = QuestionAnswering(model_name_or_path=tiny_bert, learning_rate=2e-3, weight_decay=0.01, warmup_steps=2)
    without_dropout(module.model)
    collator = DataCollatorWithPadding(data.tokenizer)
    steps = 2 * -(-len(data.datasets["train"]) // data.batch_size)
    # the biases that shift every position's start (or end) logit alike have no gradient but rounding noise (the
    # span softmax ignores a common shift), which AdamW turns into steps of full size: rounding, not training
    no_gradient = ("qa_outputs.bias", "bert.encoder.layer.1.output.LayerNorm.bias")
    assert_same_steps(
        module, data, collator, tmp_path, steps, accumulate=1, clip=1.0, epochs=2, no_gradient=no_gradient
    )
