"""The files that stages hand to each other (see docs/architecture.md)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from common import storage

SPLITS: tuple[Literal["train", "val", "test"], ...] = ("train", "val", "test")
Split = Literal["train", "val", "test"]

MANIFEST = "manifest.jsonl"
COLLECT_REPORT = "collect_report.json"
LABELS = "labels.json"
STATS = "stats.json"
PREPROCESS = "preprocess.json"
LINEAGE = "lineage.json"
METRICS = "metrics.json"


class ManifestItem(BaseModel):
    """One collected image, as a row of `manifest.jsonl`."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Path relative to the raw data folder.")
    label: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source: str
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class Rejected(BaseModel):
    """An item left out of a stage's output, and why."""

    item: str
    reason: str


class Preprocess(BaseModel):
    """How raw pixels are shaped before the model sees them; shared by training and serving."""

    image_size: int
    color_mode: Literal["grayscale", "rgb"]
    resize: Literal["stretch", "pad"] = "stretch"
    # Images smaller on a side were refused in training (process.min_size); serving
    # refuses them too. 1 for models trained before this was recorded.
    min_size: int = Field(default=1, ge=1)
    # The size limits training applied (collect.max_bytes, collect.max_pixels): the
    # API accepts what they accept. None for models trained before they were recorded
    # (the contract's defaults, common.images.MAX_BYTES / MAX_PIXELS, then apply).
    max_bytes: int | None = Field(default=None, ge=1)
    max_pixels: int | None = Field(default=None, ge=1)

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "grayscale" else 3

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's `(height, width, channels)` as the model takes it."""
        return (self.image_size, self.image_size, self.channels)


def write_manifest(uri: str, items: Iterable[ManifestItem]) -> None:
    """Write the manifest, sorted by path so identical data gives identical bytes."""
    rows = sorted(items, key=lambda item: item.path)
    storage.write_text(uri, "".join(item.model_dump_json() + "\n" for item in rows))


def read_manifest(uri: str) -> list[ManifestItem]:
    """Parse `manifest.jsonl`; a malformed row fails with its line number."""
    items = []
    for number, line in enumerate(storage.read_text(uri).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(ManifestItem.model_validate_json(line))
        except ValueError as exc:
            raise ValueError(f"{uri}:{number}: invalid manifest row: {exc}") from exc
    return items


def read_labels(uri: str | Path) -> list[str]:
    """Class names in model-output order."""
    labels = json.loads(storage.read_text(uri))
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{uri}: expected a JSON list of class names")
    return labels
