"""`apply_overrides`: dotted `key=value` strings over params.yaml, validated by the schema."""

import pytest

from common.params import ParamsError, PipelineParams, apply_overrides


def test_values_are_read_as_yaml_and_validated() -> None:
    params = PipelineParams()
    changed = apply_overrides(
        params,
        {
            "train.epochs": "2",
            "train.learning_rate": "0.0031",
            "train.augment.flip": "horizontal",
            "collect.limit": "null",
            "optimize.distill.filters": "[8, 16]",
            "process.split.val": "0.2",
            "process.split.test": "0.0001",
            "process.split.train": "0.7999",
        },
    )
    assert changed.train.epochs == 2 and changed.train.learning_rate == 0.0031
    assert changed.train.augment.flip == "horizontal"
    assert changed.collect.limit is None
    assert changed.optimize.distill.filters == [8, 16]
    assert changed.process.split.val == 0.2
    assert params == PipelineParams(), "the given params are left as they were"


def test_vertex_style_numbers_are_accepted() -> None:
    """Vertex AI passes a discrete value as a double and may write an exponent."""
    changed = apply_overrides(
        PipelineParams(), {"train.batch_size": "64.0", "train.learning_rate": "3.1e-03"}
    )
    assert changed.train.batch_size == 64 and changed.train.learning_rate == 0.0031


def test_a_string_parameter_keeps_what_yaml_would_turn_into_a_number_or_bool() -> None:
    changed = apply_overrides(PipelineParams(), {"registry.model_name": "on", "dataset": "1e3"})
    assert (changed.registry.model_name, changed.dataset) == ("on", "1e3")


BAD = {
    "unknown key": ({"train.epoch": "2"}, "train.epoch: no such parameter"),
    "unknown section": ({"trian.epochs": "2"}, "trian.epochs: no such parameter"),
    "too deep": ({"train.epochs.x": "2"}, "train.epochs.x: no such parameter"),
    "empty part": ({"train..epochs": "2"}, "no such parameter"),
    "a section": ({"train": "3"}, "train: is a section"),
    "a nested section": ({"train.augment": "3"}, "train.augment: is a section"),
    "not a number": ({"train.epochs": "two"}, r"train\.epochs=two: train\.epochs: Input should be"),
    "out of range": ({"train.epochs": "0"}, r"train\.epochs=0: train\.epochs: .*greater than"),
    "fraction for a whole": ({"train.batch_size": "64.5"}, r"train\.batch_size=64\.5"),
    "not a choice": ({"train.model": "resnet"}, r"train\.model=resnet"),
    "null where required": ({"train.epochs": "null"}, r"train\.epochs=null"),
    "model check": ({"process.split.val": "0.5"}, "sum to 1"),
    "tune consistency": ({"tune.goal": "minimize"}, "set tune.goal: maximize"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_override_is_named_in_one_line(case: str) -> None:
    overrides, says = BAD[case]
    with pytest.raises(ParamsError, match=says) as caught:
        apply_overrides(PipelineParams(), overrides)
    assert "\n" not in str(caught.value)
