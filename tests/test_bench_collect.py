"""The collection comparison's measurements: what counts as stored, the steady rate."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from versus import collect


def test_only_images_under_their_final_names_count(tmp_path: Path) -> None:
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "ab.png").write_bytes(b"x")  # ours
    (tmp_path / "3" / ".ab.png.7-0.tmp").write_bytes(b"x")  # ours, mid-write
    (tmp_path / "00000").mkdir()
    (tmp_path / "00000" / "000000001.jpg").write_bytes(b"x")  # img2dataset's
    (tmp_path / "00000" / "000000001.json").write_text("{}")
    (tmp_path / "00000.parquet").write_bytes(b"x")
    assert collect.count_images(tmp_path) == 2


def test_steady_rate_leaves_out_start_up_and_tail() -> None:
    # 1 s of start-up, then 100 images/s, then a slow tail.
    samples = [(0.0, 0), (1.0, 0), *((1.0 + t / 10, 10 * t) for t in range(1, 11)), (9.0, 100)]
    assert collect.steady_rate(samples, 100) == pytest.approx(100.0)
    assert collect.reached(samples, 1)[0] == pytest.approx(1.1)


def test_start_up_line_gives_both_medians_and_our_target() -> None:
    line = collect.startup_line({"ours": [1.2, 1.4, 3.0], "img2dataset": [13.0, 14.0, 12.0]})
    assert line == (
        "collect_startup_s: ours 1.4 vs img2dataset 13.0 (process start to first image "
        "stored, median of 3 runs each) · target ours ≤ 1.5 s: met"
    )


def test_the_runs_folder_is_removed_with_a_line_saying_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with collect.scratch_folder(10_000) as folder:
        (folder / "ours-0" / "3").mkdir(parents=True)
        (folder / "ours-0" / "3" / "ab.png").write_bytes(b"x")
        (folder / "urls.txt").write_text("u\n")
    assert not folder.exists()
    assert "removing the 10,000-URL runs' 2 files" in capsys.readouterr().err
