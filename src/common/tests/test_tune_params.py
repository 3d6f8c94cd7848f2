"""The `tune:` section: a search space every trial of which is a valid training."""

from pathlib import Path

import pytest
import yaml

from common.params import ChoiceSpec, ParamsError, RangeSpec, TuneParams, load_params


def load_tune(tmp_path: Path, tune: dict) -> TuneParams:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"tune": tune}))
    return load_params(path).tune


def test_the_default_space_is_the_learning_rate_and_the_batch_size() -> None:
    tune = TuneParams()
    assert (tune.metric, tune.goal, tune.trials, tune.parallel_trials) == (
        "val_accuracy",
        "maximize",
        8,
        2,
    )
    assert tune.space == {
        "train.learning_rate": RangeSpec(min=0.0005, max=0.01, scale="log", type="float"),
        "train.batch_size": ChoiceSpec(values=[32, 64, 128]),
    }


def test_a_valid_space_loads(tmp_path: Path) -> None:
    tune = load_tune(
        tmp_path,
        {
            "metric": "val_loss",
            "goal": "minimize",
            "space": {
                "train.epochs": {"min": 2, "max": 8, "type": "int"},
                "train.augment.rotation": {"min": 0.0, "max": 0.2},
                "train.model": {"values": ["small_cnn", "mobilenet_v3_small"]},
            },
        },
    )
    assert tune.space["train.epochs"] == RangeSpec(min=2, max=8, type="int")
    assert isinstance(tune.space["train.model"], ChoiceSpec)


BAD_TUNE = {
    "val_loss maximized": ({"metric": "val_loss"}, "set tune.goal: minimize"),
    "val_accuracy minimized": ({"goal": "minimize"}, "set tune.goal: maximize"),
    "unknown metric": ({"metric": "accuracy"}, r"tune\.metric"),
    "more parallel than trials": ({"trials": 2, "parallel_trials": 3}, "exceeds trials"),
    "no trials": ({"trials": 0}, r"tune\.trials"),
    "empty space": ({"space": {}}, r"tune\.space"),
    "not a train key": (
        {"space": {"process.image_size": {"values": [16, 32]}}},
        "only train.* parameters can be tuned",
    ),
    "unknown train key": (
        {"space": {"train.learning_rat": {"min": 0.001, "max": 0.1}}},
        "no such parameter",
    ),
    "a section": ({"space": {"train.augment": {"values": [1]}}}, "no such parameter"),
    "range not ordered": (
        {"space": {"train.learning_rate": {"min": 0.1, "max": 0.01}}},
        r"max \(0.01\) must be above min \(0.1\)",
    ),
    "empty range": ({"space": {"train.learning_rate": {"min": 0.1, "max": 0.1}}}, "must be above"),
    "log from zero": (
        {"space": {"train.augment.zoom": {"min": 0.0, "max": 0.5, "scale": "log"}}},
        "log scale needs min above 0",
    ),
    "float range of a whole key": (
        {"space": {"train.epochs": {"min": 2, "max": 8}}},
        "set type: int",
    ),
    "int range with a fraction": (
        {"space": {"train.epochs": {"min": 2.5, "max": 8, "type": "int"}}},
        "whole min and max",
    ),
    "range past the key's bounds": (
        {"space": {"train.augment.rotation": {"min": 0.1, "max": 0.9}}},
        r"0\.9 is not valid: augment\.rotation",
    ),
    "negative learning rate": (
        {"space": {"train.learning_rate": {"min": -0.1, "max": 0.1}}},
        r"-0\.1 is not valid",
    ),
    "a value the key refuses": (
        {"space": {"train.model": {"values": ["small_cnn", "resnet"]}}},
        "'resnet' is not valid",
    ),
    "batch size zero": ({"space": {"train.batch_size": {"values": [0, 32]}}}, "0 is not valid"),
    "no values": ({"space": {"train.batch_size": {"values": []}}}, r"tune\.space"),
    "repeated values": ({"space": {"train.batch_size": {"values": [32, 32]}}}, "repeat"),
    "range and values mixed": (
        {"space": {"train.batch_size": {"min": 1, "max": 4, "values": [2]}}},
        r"tune\.space",
    ),
}


@pytest.mark.parametrize("case", BAD_TUNE)
def test_a_bad_tune_section_is_named(case: str, tmp_path: Path) -> None:
    tune, says = BAD_TUNE[case]
    with pytest.raises(ParamsError, match=says) as caught:
        load_tune(tmp_path, tune)
    assert "\n" not in str(caught.value)
