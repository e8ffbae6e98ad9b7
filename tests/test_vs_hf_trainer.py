"""hftrain takes the HF Trainer's optimizer steps: from the same weights, on the same batches in the same order,
with dropout off, both end with the same weights. This covers what decides training besides the data order
and dropout: AdamW and its weight-decay groups, the learning-rate schedule with warmup, gradient clipping,
the loss, and an epoch boundary. Left to their own shuffles and dropout, two runs differ as two seeds do,
which is how docs/performance.md's side-by-side runs are read.
"""

import copy

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from hftrain.core.sampling import EpochShuffleSampler
from hftrain.tasks.text_classification import TextClassification, TextClassificationData

STEPS, BATCH = 18, 8  # 96 training rows: one and a half epochs


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for layer in model.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
    return model


@pytest.mark.parametrize(("schedule", "clip"), [("linear", 1.0), ("cosine", None)])
def test_the_same_steps_as_the_hf_trainer(tiny_bert, sentiment_files, tmp_path, schedule, clip):
    from transformers import DataCollatorWithPadding, TrainingArguments
    from transformers import Trainer as HFTrainer

    data = TextClassificationData(
        tokenizer_name=tiny_bert,
        train_file=sentiment_files["train"],
        validation_file=sentiment_files["validation"],
        batch_size=BATCH,
    )
    module = TextClassification(
        model_name_or_path=tiny_bert,
        label_names=data.label_names,
        problem_type=data.problem_type,
        learning_rate=2e-3,
        weight_decay=0.01,
        warmup_steps=0.25,
        lr_scheduler_type=schedule,
    )
    hf_model = copy.deepcopy(without_dropout(module.model))
    before = module.model.classifier.weight.detach().clone()
    trainer = Trainer(
        max_steps=STEPS,
        gradient_clip_val=clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)

    train = data.datasets["train"]
    train = train.select_columns([c for c in train.column_names if c in module.model_inputs])
    sampler = EpochShuffleSampler(len(train), data.seed)
    order = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order += sampler.order().tolist()

    class SameBatches(HFTrainer):
        def get_train_dataloader(self) -> DataLoader:
            return DataLoader(
                train, batch_size=BATCH, sampler=order, collate_fn=DataCollatorWithPadding(data.tokenizer)
            )

    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        learning_rate=2e-3,
        weight_decay=0.01,
        warmup_steps=0.25,
        lr_scheduler_type=schedule,
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
        torch.testing.assert_close(
            weight, hf_weights[name], rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
        )
    assert not torch.allclose(module.model.classifier.weight, before, atol=1e-3)  # training moved the weights
