"""The stage contracts: derived values, stable bytes, one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from common.contracts import ContractError, Lineage, Metrics, Stats

STATS = {
    "dataset": "digits",
    "data_hash": "ab" * 32,
    "labels": ["0", "1"],
    "preprocess": {"image_size": 8, "color_mode": "grayscale", "resize": "stretch"},
    "compression": "none",
    "counts": {"train": {"0": 3, "1": 4}, "val": {"0": 1, "1": 0}, "test": {"0": 1, "1": 1}},
    "rejected": [{"item": "images/0/x.png", "reason": "not a readable image"}],
    "shards": {"train-00000-of-00001.tfrecord": "cd" * 32},
}


def test_totals_are_derived_not_stored(tmp_path: Path) -> None:
    stats = Stats.model_validate(STATS)
    assert stats.totals == {"train": 7, "val": 1, "test": 2} and stats.examples == 10
    assert stats.split_sizes(" / ") == "train 7 / val 1 / test 2"
    stats.write(tmp_path / "stats.json")
    assert "totals" not in json.loads((tmp_path / "stats.json").read_text())


def test_a_file_that_stored_totals_still_reads(tmp_path: Path) -> None:
    """Data versions in git history and the DVC remote were written with `totals`."""
    old = {**STATS, "totals": {"train": 7, "val": 1, "test": 2}}
    (tmp_path / "stats.json").write_text(json.dumps(old))
    assert Stats.read(tmp_path / "stats.json").totals == old["totals"]


@pytest.mark.parametrize(
    "document",
    [
        {"test": {"accuracy": 0.5, "macro_f1": 0.25, "examples": 4, "custom": "kept"}},
        {"data": "d", "data_hash": "h", "params": {"train": {"epochs": 2}}, "extra": [1]},
    ],
)
def test_read_then_write_keeps_the_bytes(tmp_path: Path, document: dict[str, object]) -> None:
    """Keys the file has are kept (extras too) and none are added: /v1/model shows them."""
    original = json.dumps(document, indent=2, sort_keys=True) + "\n"
    (tmp_path / "in.json").write_text(original)
    model = Metrics if "test" in document else Lineage
    model.read(tmp_path / "in.json").write(tmp_path / "out.json")
    assert (tmp_path / "out.json").read_text() == original


@pytest.mark.parametrize(
    ("content", "part"),
    [
        ({k: v for k, v in STATS.items() if k != "counts"}, "counts: Field required"),
        ({**STATS, "compression": "zip"}, "compression: Input should be 'none' or 'gzip'"),
        ("{not json", "Invalid JSON"),
    ],
)
def test_a_mismatched_file_is_named_in_one_line(tmp_path: Path, content: object, part: str) -> None:
    path = tmp_path / "stats.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ContractError) as caught:
        Stats.read(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and part in message and "\n" not in message


def test_shard_names_are_built_and_matched_by_one_declaration() -> None:
    from common.contracts import is_shard, shard_name

    assert shard_name("train", 0, 3) == "train-00000-of-00003.tfrecord"
    assert shard_name("val", 12, 123456) == "val-00012-of-123456.tfrecord"
    assert is_shard(shard_name("test", 2, 3), "test")
    assert is_shard(shard_name("val", 12, 123456), "val")
    for other in [
        shard_name("train", 0, 1).replace("train", "val"),  # another split's
        "train-notes.tfrecord",  # a stray file that is no shard
        "train-00000.tfrecord",
        ".train-00000.partial",  # a part still being written
        "train-00000-of-00001.tfrecord.bak",
    ]:
        assert not is_shard(other, "train"), other


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("[]", "needs distinct class names, has []"),
        ('["a", "b", "a"]', "needs distinct class names"),
        ('{"a": 0}', "expected a JSON list of class names"),
        ('["a", 1]', "expected a JSON list of class names"),
        ("[a, b]", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
    ],
    ids=["empty", "duplicate", "object", "not strings", "not JSON", "not UTF-8"],
)
def test_read_labels_refuses_what_no_model_can_use(
    content: str | bytes, says: str, tmp_path: Path
) -> None:
    """The one labels reader, for the trainer and the API alike: a ContractError naming it."""
    from common.contracts import read_labels

    path = tmp_path / "labels.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ContractError, match=rf"^{path}: {re.escape(says)}"):
        read_labels(path)


def test_a_contract_file_that_is_not_json_says_so(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_bytes(b"{'test': 1}")
    with pytest.raises(ContractError, match=rf"^{path}: not valid JSON \("):
        Metrics.read(path)
