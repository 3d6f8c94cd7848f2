"""One record keeps its name, the image's sha256, from the collector's manifest to the reports."""

from __future__ import annotations

import csv

import numpy as np
from support import TinyPipeline

from common.contracts import MANIFEST, read_manifest
from trainer.plots import misclassified_titles


def test_a_record_is_followed_from_the_manifest_to_predictions_csv(
    tiny_pipeline: TinyPipeline,
) -> None:
    manifest = {item.sha256: item for item in read_manifest(str(tiny_pipeline.raw / MANIFEST))}
    with (tiny_pipeline.root / "reports/plots/predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    test_split = {path.name.split(".")[0] for path, _ in tiny_pipeline.test_images()}
    assert rows and {row["sha256"] for row in rows} <= test_split
    assert len({row["sha256"] for row in rows}) == len(rows), "one row per record"
    for row in rows:
        item = manifest[row["sha256"]]  # the key finds the manifest row …
        assert row["actual"] == item.label  # … whose label is the one evaluated
        assert (tiny_pipeline.raw / item.path).is_file()  # … and the file to look at


def test_the_misclassified_grid_names_each_file() -> None:
    shas = ["a" * 64, "b" * 64, "c" * 64]
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    titles = misclassified_titles(np.array([0, 0, 1]), probabilities, ["cat", "dog"], shas)
    assert titles == [(1, f"cat → dog (0.80)\n{'b' * 12}")]
