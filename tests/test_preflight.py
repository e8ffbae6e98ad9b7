"""The checks made from the config alone, before any framework is imported: the arguments merged in
jsonargparse's order, and the trainer value rules held against Lightning's own."""

import pytest
from lightning.pytorch import Trainer

from hftrain.core.errors import HFTrainError
from hftrain.preflight import TRAINER_RULES, check_trainer_values, merged_config

# per rule, values at the edge of what it accepts (each one Lightning accepts too) and just past it
EDGES = {
    "max_epochs": ([-1, 0, 3], [-2]),
    "min_epochs": ([0, 2], [-1]),
    "max_steps": ([-1, 0, 10], [-2]),
    "min_steps": ([0, 5], [-1]),
    "val_check_interval": ([1, 0.25, 1.0], [0, 0.0, 1.5, -1]),
    "check_val_every_n_epoch": ([1, 2], [0, -1]),
    "accumulate_grad_batches": ([1, 4], [0, -2]),
    "log_every_n_steps": ([0, 1, 50], [-1]),
    "num_sanity_val_steps": ([-1, 0, 2], [-2]),
    "gradient_clip_val": ([0, 0.5, 1], [-1.0]),
    "num_nodes": ([1], [0]),
    "devices": ([1], [0, -2]),  # -1 (all) too, but a CPU trainer refuses it: the check of the machine decides
    **{f"limit_{stage}_batches": ([0, 0.0, 0.5, 1.0, 1, 10], [-1, 1.5, -0.1]) for stage in ("train", "val", "test")},
}


def test_every_rule_has_its_edges():
    assert set(EDGES) <= set(TRAINER_RULES)
    assert {name for name in TRAINER_RULES if not name.startswith("limit_")} <= set(EDGES)


@pytest.mark.parametrize("name", list(EDGES))
def test_a_rule_accepts_what_lightning_accepts_and_refuses_past_it(name):
    good, bad = EDGES[name]
    for value in good:
        check_trainer_values({name: value})
        Trainer(**{name: value}, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    for value in bad:
        with pytest.raises(HFTrainError, match=rf"trainer\.{name} must be .*; got {value!r}"):
            check_trainer_values({name: value})


def test_values_of_another_type_are_left_to_the_parser():
    check_trainer_values({"max_epochs": "many", "devices": "auto", "val_check_interval": "00:00:10:00"})


def test_arguments_merge_in_order_later_ones_winning(tmp_path):
    first = tmp_path / "first.yaml"
    first.write_text(
        "model:\n  class_path: TextClassification\n  init_args:\n    model_name_or_path: a\n"
        "trainer:\n  max_epochs: 5\n  logger: {class_path: lightning.pytorch.loggers.CSVLogger}\n"
    )
    argv = ["--trainer.max_epochs", "-3", "-c", str(first), "--model.init_args.learning_rate=0.001", "--verbose"]
    config = merged_config(argv + ["--data", '{"class_path": "TextClassificationData", "init_args": {"x": 1}}'])
    assert config["trainer"]["max_epochs"] == 5  # the file came after the option
    assert config["model"] == {
        "class_path": "TextClassification",
        "init_args": {"model_name_or_path": "a", "learning_rate": 0.001},
    }
    assert config["data"] == {"class_path": "TextClassificationData", "init_args": {"x": 1}}
    assert merged_config(["-c", str(first), "--trainer.max_epochs", "-3"])["trainer"]["max_epochs"] == -3


def test_a_config_is_a_file_or_the_config_itself(tmp_path):
    assert merged_config(["--config", "{trainer: {max_epochs: 7}}"])["trainer"]["max_epochs"] == 7
    with pytest.raises(HFTrainError, match=r"The config file nowhere.yaml does not exist"):
        merged_config(["--config", "nowhere.yaml"])
