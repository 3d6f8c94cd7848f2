"""Data that cannot give an honest model is refused, naming the problem and the fix."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from raw_builder import TEST_SPLIT, noise_png, process_params, with_background, write_raw_store

from processor.process import ProcessError, assign_split, process


def _in_splits(rng: np.random.Generator, wanted: set[str], ratios: dict[str, float]) -> bytes:
    """A noise PNG whose content hash puts it in one of the `wanted` splits."""
    while True:
        data = noise_png(rng)
        if assign_split(hashlib.sha256(data).hexdigest(), ratios) in wanted:
            return data


def test_a_single_class_is_refused_before_any_work(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    write_raw_store(tmp_path / "raw", {f"{i}.png": ("cat", noise_png(rng)) for i in range(40)})
    with pytest.raises(ProcessError, match=r"only 1 class \('cat'\).*at least 2.*one more class"):
        process(str(tmp_path / "raw"), str(tmp_path / "out"), process_params(), "one", workers=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("small_in", "missing"),
    [({"train"}, "val, test"), ({"train", "val"}, "test"), ({"test"}, "train, val")],
)
def test_a_class_missing_from_a_split_is_named(
    tmp_path: Path, small_in: set[str], missing: str
) -> None:
    rng = np.random.default_rng(6)
    small = {f"s{i}.png": ("small", _in_splits(rng, small_in, TEST_SPLIT)) for i in range(12)}
    write_raw_store(tmp_path / "raw", with_background(small))
    with pytest.raises(ProcessError) as caught:
        process(str(tmp_path / "raw"), str(tmp_path / "out"), process_params(), "gap", workers=1)
    message = str(caught.value)
    assert f"'small' has no example in {missing}" in message
    assert "bg0" not in message and "bg1" not in message
    assert "process.split" in message and "Collect more" in message
    assert not (tmp_path / "out").exists()


def test_no_val_split_needs_no_val_examples(tmp_path: Path) -> None:
    ratios = {"train": 0.8, "val": 0.0, "test": 0.2}
    rng = np.random.default_rng(7)
    small = {f"s{i}.png": ("small", _in_splits(rng, {"train", "test"}, ratios)) for i in range(12)}
    write_raw_store(tmp_path / "raw", with_background(small))
    stats = process(
        str(tmp_path / "raw"),
        str(tmp_path / "out"),
        process_params(split=ratios),
        "noval",
        workers=1,
    )
    assert stats.totals["val"] == 0 and stats.counts["test"]["small"] > 0


def test_the_cli_refuses_one_class_in_one_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    write_raw_store(tmp_path / "raw", {f"{i}.png": ("cat", noise_png(rng)) for i in range(20)})
    (tmp_path / "params.yaml").write_text("process: {min_per_class: 1}\n")
    result = subprocess.run(
        [sys.executable, "-m", "processor", "--raw", "raw", "--out", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("process: error: ") and "only 1 class ('cat')" in line
