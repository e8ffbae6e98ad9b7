"""The model card's text from a run's facts, on hand-built inputs: the base model it names, the metrics it lists."""

from huggingface_hub import ModelCard

from hftrain.core.model_card import base_model_of, model_card, with_test_results

RESULTS = {
    "monitor": "val/f1",
    "best": {"epoch": 0, "step": 5, "val/f1": 0.5, "val/support_PER": 12.0},
    "final": {"epoch": 2, "step": 15, "val/f1": 0.4, "val/support_PER": 12.0},
}


def card(base_model: str) -> str:
    return model_card(
        "ner", "token-classification", base_model, {"train": "train.jsonl (10 rows)"}, None, {}, RESULTS, {}
    )


def test_the_base_model_is_a_hub_id_or_the_folders_last_parts_never_a_local_path(tmp_path):
    assert base_model_of("bert-base-cased") == ("bert-base-cased", "bert-base-cased")
    folder = tmp_path / "models" / "my-bert"
    folder.mkdir(parents=True)
    assert base_model_of(str(folder)) == ("models/my-bert", None)
    text = card(str(folder))
    assert str(tmp_path) not in text and "fine-tuned from `models/my-bert`" in text
    assert ModelCard(text).data.base_model is None
    # a run's hf_model/ trained further: the Hub model its own card names
    export = tmp_path / "runs" / "ner" / "version_0" / "hf_model"
    export.mkdir(parents=True)
    (export / "README.md").write_text(card("dslim/bert-base-NER"))
    assert base_model_of(str(export)) == (
        "version_0/hf_model (fine-tuned from dslim/bert-base-NER)",
        "dslim/bert-base-NER",
    )
    assert ModelCard(card(str(export))).data.base_model == "dslim/bert-base-NER"


def test_metrics_count_epochs_from_1_and_leave_out_the_datas_counts():
    text = card("bert-base-cased")
    assert "Best (epoch 1, step 5)" in text and "Final (epoch 3, step 15)" in text
    assert "val/f1" in text and "support" not in text


def test_a_test_of_the_exported_weights_joins_the_results_once():
    text = with_test_results(card("bert-base-cased"), "the weights of this folder", {"test/f1": 0.25})
    text = with_test_results(text, "the weights of this folder", {"test/f1": 0.75})
    results, hyperparameters = text.split("## Hyperparameters")
    assert results.count("Test (the weights of this folder):") == 1 and "| test/f1 | 0.75 |" in results
    assert ModelCard(text).data.pipeline_tag == "token-classification"
