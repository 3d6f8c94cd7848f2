from pathlib import Path

import pytest
import yaml

from common.params import ParamsError, PipelineParams, load_params

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_repository_params_file_is_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.collect.source == "digits"
    assert params.registry.min_accuracy >= 0.9


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, {})) == PipelineParams()


def test_split_ratios_must_sum_to_one(tmp_path: Path) -> None:
    path = write(tmp_path, {"process": {"split": {"train": 0.8, "val": 0.3, "test": 0.1}}})
    with pytest.raises(ParamsError, match=r"process\.split.*sum to 1"):
        load_params(path)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"train\.epoch"):
        load_params(write(tmp_path, {"train": {"epoch": 3}}))


def test_reserved_model_name(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="reserved"):
        load_params(write(tmp_path, {"registry": {"model_name": "candidate"}}))


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="run from the project root"):
        load_params(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)


def _flat(data: dict, prefix: str = "") -> dict[str, object]:
    """`{"a": {"b": 1}}` → `{"a.b": 1}`."""
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_schema_defaults_are_the_params_file_values() -> None:
    """params.yaml is the documented default: it lists every key, with the schema's default.

    So a key left out of a fork's params.yaml (or an empty file) means what the
    committed file says.
    """
    written = _flat(yaml.safe_load((REPO / "params.yaml").read_text()))
    defaults = _flat(PipelineParams().model_dump())
    assert sorted(written) == sorted(defaults), "keys differ between params.yaml and the schema"
    differing = {
        key: (defaults[key], written[key]) for key in defaults if defaults[key] != written[key]
    }
    assert not differing, f"schema default ≠ params.yaml value: {differing}"


@pytest.mark.parametrize(
    ("optimize", "says"),
    [
        ({"pruning": {"begin_fraction": 0.8, "end_fraction": 0.5}}, "end_fraction must be above"),
        ({"pruning": {"target_sparsity": 1.0}}, r"optimize\.pruning\.target_sparsity"),
        ({"distill": {"filters": []}}, r"optimize\.distill\.filters"),
        ({"distill": {"alpha": 1.5}}, r"optimize\.distill\.alpha"),
        ({"max_accuracy_drop": -0.1}, r"optimize\.max_accuracy_drop"),
    ],
)
def test_bad_optimize_params_are_named(tmp_path: Path, optimize: dict, says: str) -> None:
    with pytest.raises(ParamsError, match=says):
        load_params(write(tmp_path, {"optimize": optimize}))


def test_the_repository_optimize_section_matches_the_contract() -> None:
    optimize = load_params(REPO / "params.yaml").optimize
    assert (optimize.max_accuracy_drop, optimize.throughput_batch) == (0.01, 32)
    assert optimize.distill.epochs is None and optimize.distill.filters == [16, 32]
