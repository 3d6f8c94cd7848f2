"""The files that stages hand to each other (see docs/architecture.md).

Each artefact's file name is declared here once, and each JSON document a stage
reads from another stage is a pydantic model with `read(uri)` and `write(uri)`.
Writes keep today's bytes: sorted keys, two-space indent, a trailing newline
(`common.storage.write_json`), so identical inputs still give identical outputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from common import storage

SPLITS: tuple[Literal["train", "val", "test"], ...] = ("train", "val", "test")
Split = Literal["train", "val", "test"]

# The raw store (data/raw/<dataset>/): the collector's output.
IMAGES_DIR = "images"  # images/<label>/<sha256>.<ext>: see raw_image_path
MANIFEST = "manifest.jsonl"
COLLECT_REPORT = "collect_report.json"
# The processed data (data/processed/<dataset>/) beside the shards.
LABELS = "labels.json"
STATS = "stats.json"
PREPROCESS = "preprocess.json"
# The shards, `<split>-NNNNN-of-MMMMM.tfrecord`: see shard_name and is_shard.
SHARD_SUFFIX = ".tfrecord"
_SHARD = re.compile(r"(?P<split>[a-z]+)-\d{5,}-of-\d{5,}" + re.escape(SHARD_SUFFIX))
# The candidate (models/candidate/); LABELS and PREPROCESS are copied into it.
KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
TFLITE_FILE = "model.tflite"
LINEAGE = "lineage.json"
CURVES = "history.json"  # per-metric lists of the final run's epochs: {"loss": [..], ..}
RUN_RECORD = "training_run.json"  # per-run facts, outside DVC's hash (.dvcignore)
# A training run's backup folder: one row per finished epoch, for a resumed run.
EPOCH_LOG = "epochs.json"
# A registry version (models/<name>/<version>/) adds these to the candidate's files;
# common.registry declares its own VERSION_FILE and ALIASES_FILE.
METRICS = "metrics.json"
MODEL_CARD = "model_card.md"
TRAINING_CLASSES = "training_classes.json"
# The optimize stage (models/optimized/): each variant's `<name>.tflite` and this report.
OPTIMIZATION = "optimization.json"
# Test images register times the variants on, written by optimize beside them.
TIMING_IMAGES = "timing_images.npy"
# A tuning trial and the trainer it runs (cloudml-hypertune's variables): the tuner sets
# the file the trainer reports `tune.metric` to, and the trial's number.
TUNING_METRIC_FILE_ENV = "CLOUD_ML_HP_METRIC_FILE"
TUNING_TRIAL_ID_ENV = "CLOUD_ML_TRIAL_ID"
# Where cloudml-hypertune writes when TUNING_METRIC_FILE_ENV is unset; Vertex AI's trial
# agent reads this file.
TUNING_DEFAULT_METRIC_FILE = "/tmp/hypertune/output.metrics"


class ContractError(ValueError):
    """A stage's file does not match its contract; the message names the file and fields.

    `fix` is what the CLIs print after the message: what makes the file again.
    """

    fix = "re-run the stage that writes it (mega run)"


def problems(exc: ValidationError) -> str:
    """A validation error on one line: `field.path: message; …`."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'the top level'}: {err['msg']}"
        for err in exc.errors()
    )


def _problems_of_json(exc: ValidationError) -> str:
    """`problems`, or `not valid JSON (<why>)` when the text did not parse."""
    for err in exc.errors():
        if err["type"] == "json_invalid":  # bad syntax or bytes that are not UTF-8
            return f"not valid JSON ({err['msg']})"
    return problems(exc)


class Contract(BaseModel):
    """A JSON document one stage writes and another reads.

    Fields left unset are not written, so a document read and written again keeps
    its keys (the registry serves `lineage.json` and `metrics.json` as they are).
    """

    @classmethod
    def read(cls, uri: str | Path) -> Self:
        """Parse and validate the document at `uri` (a path or `gs://` URI).

        Raises:
            FileNotFoundError: nothing at `uri`.
            ContractError: not JSON, or not this contract's shape (one line, naming `uri`).
        """
        return cls.parse(storage.read_bytes(uri), str(uri))

    @classmethod
    def parse(cls, text: str | bytes, source: str) -> Self:
        """Validate the JSON `text`; `source` names where it came from in the error.

        Raises:
            ContractError: not JSON, or not this contract's shape (one line, naming `source`).
        """
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ContractError(f"{source}: {_problems_of_json(exc)}") from exc

    def document(self) -> dict[str, Any]:
        """The JSON object as it is written: plain types, unset fields left out."""
        return self.model_dump(mode="json", exclude_unset=True)

    def write(self, uri: str | Path) -> None:
        """Write atomically with sorted keys, so equal documents are equal bytes."""
        storage.write_json(uri, self.document())


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


class Preprocess(Contract):
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


class Stats(Contract):
    """The processor's `stats.json`: what the processed data holds, and its version.

    `counts[split][label]` are examples per split and class; `rejected` lists the items
    left out with the reason; `shards` maps shard file names to their sha256, from
    which (with the labels) `data_hash` is derived.
    """

    # Files written before issue 12 also stored `totals`, now the property below.
    model_config = ConfigDict(extra="ignore")

    dataset: str
    data_hash: str = Field(min_length=1)
    labels: list[str]
    preprocess: Preprocess
    compression: Literal["none", "gzip"] = "none"
    counts: dict[Split, dict[str, int]]
    rejected: list[Rejected] = Field(default_factory=list)
    shards: dict[str, str] = Field(default_factory=dict)

    @property
    def totals(self) -> dict[str, int]:
        """Examples per split (0 for a split the file does not list)."""
        return {split: sum(self.counts.get(split, {}).values()) for split in SPLITS}

    @property
    def examples(self) -> int:
        """Examples in all splits together."""
        return sum(self.totals.values())

    def split_sizes(self, separator: str = ", ") -> str:
        """`train N<separator>val N<separator>test N`, for summaries."""
        return separator.join(f"{split} {n}" for split, n in self.totals.items())


class SplitMetrics(BaseModel):
    """One split's scores in `metrics.json`; accuracy and macro F1 are what the gate reads."""

    model_config = ConfigDict(extra="allow")

    accuracy: float = Field(ge=0, le=1)
    macro_f1: float = Field(ge=0, le=1)  # the gate's class-balance check
    loss: float | None = None
    tflite_accuracy: float | None = Field(default=None, ge=0, le=1)
    examples: int | None = Field(default=None, ge=0)


class Metrics(Contract):
    """Evaluate's `metrics.json` (DVC metrics), copied into each registry version."""

    model_config = ConfigDict(extra="allow")

    test: SplitMetrics


class ClassScores(BaseModel):
    precision: float = Field(ge=0, le=1)
    recall: float = Field(ge=0, le=1)
    support: int = Field(ge=0, description="Test examples of the class.")


class Evaluation(Contract):
    """Evaluate's `evaluation.json`: per-class scores and the confusion matrix.

    `confusion_matrix[true][predicted]` counts test examples, rows and columns in
    `labels` order.
    """

    labels: list[str]
    per_class: dict[str, ClassScores]
    confusion_matrix: list[list[int]]


class Lineage(Contract):
    """`lineage.json`: where a model came from.

    The candidate holds what determines the model (data path and hash, parameters,
    TensorFlow version); a registry version adds the run's time and W&B run id and
    the git state at register time. Every field is optional: old versions lack some.
    """

    model_config = ConfigDict(extra="allow")

    data: str | None = None
    data_hash: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    tensorflow: str | None = None
    trained_at: str | None = None
    wandb_run_id: str | None = None
    git_sha: str | None = None
    git_dirty: bool | None = None


class RunRecord(Contract):
    """`training_run.json` beside the candidate: one run's facts (kept out of DVC's hash).

    `model_hash` is the tree hash of the files the run produced, so a record left over
    from another run (DVC restored the candidate from its cache) is never believed.
    """

    trained_at: str | None = None
    wandb_run_id: str | None = None
    model_hash: str


class TrainingClasses(Contract):
    """`training_classes.json` in a registry version: training examples per class.

    Written at register time from the data's `stats.json`, so serving (the drift
    gauge) needs nothing outside the version folder.
    """

    data_hash: str = Field(min_length=1)
    counts: dict[str, int]

    @classmethod
    def from_stats(cls, stats: Stats) -> Self:
        return cls(data_hash=stats.data_hash, counts=dict(stats.counts.get("train", {})))


class RegisterResult(Contract):
    """What `trainer register` did: the version published and the alias it earned."""

    model: str
    version: str
    alias: str
    promoted: bool
    # The version held production before: the same model and metrics registered again.
    was_production: bool = False
    reason: str
    uri: str


VariantName = Literal[
    "float32", "float16", "dynamic", "int8", "pruned_int8", "student_int8", "scratch_student_int8"
]


class VariantScores(BaseModel):
    """One LiteRT variant measured on the test split (a row of the optimization table).

    Bytes are the `.tflite` file's. The speed fields are absent from the optimize
    stage's report (timings differ from run to run, the stage's outputs must not) and
    set by register, which times every variant: latencies in milliseconds for one image
    with one interpreter thread, throughput in images per second at
    `optimize.throughput_batch`.
    """

    model_config = ConfigDict(extra="allow")

    name: VariantName
    file: str
    accuracy: float = Field(ge=0, le=1)
    macro_f1: float = Field(ge=0, le=1)
    agreement: float = Field(ge=0, le=1, description="Share of test items predicted as float32.")
    # Before the sizes: what people compare first (the page shows the fields in this order).
    latency_p50_ms: float | None = Field(default=None, ge=0)
    latency_p95_ms: float | None = Field(default=None, ge=0)
    throughput_per_s: float | None = Field(default=None, ge=0)
    bytes: int = Field(ge=1)
    gzip_bytes: int = Field(ge=1)
    parameters: int = Field(ge=0)
    sparsity: float = Field(ge=0, le=1)
    input_dtype: Literal["float32", "uint8", "int8"]
    eligible: bool = Field(
        description="Selectable, within max_accuracy_drop of float32 and above the F1 floor."
    )


class Optimization(Contract):
    """`optimization.json`: every variant of the candidate, measured in LiteRT.

    In models/optimized/ and reports/ (the optimize stage): accuracy, size and
    eligibility only, the same bytes on every run. In a registry version (register):
    each row timed as well, `selected` the variant the version serves and `reason`
    why, in one line.
    """

    baseline: Literal["float32"] = "float32"
    max_accuracy_drop: float = Field(ge=0, le=1)
    variants: list[VariantScores] = Field(min_length=1)
    selected: VariantName | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _selected_is_a_row(self) -> Self:
        names = [row.name for row in self.variants]
        if self.baseline not in names:
            raise ValueError(f"no {self.baseline!r} row among the variants {names}")
        if self.selected is not None and self.selected not in names:
            raise ValueError(f"selected {self.selected!r} is not among the variants {names}")
        return self

    def variant(self, name: str) -> VariantScores:
        """The row called `name`; KeyError when there is none."""
        for row in self.variants:
            if row.name == name:
                return row
        raise KeyError(name)


def raw_image_path(label: str, sha256: str, ext: str) -> str:
    """Where the raw store keeps an image, relative to it: `images/<label>/<sha256>.<ext>`.

    The sha256 names the record from here on (manifest, TFRecords, predictions.csv).
    """
    return f"{IMAGES_DIR}/{label}/{sha256}.{ext}"


def shard_name(split: str, index: int, count: int) -> str:
    """The file name of shard `index` (0-based) of `count`: `train-00000-of-00003.tfrecord`."""
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def is_shard(name: str, split: str) -> bool:
    """Whether the file name `name` (no folder) is one of `split`'s shards."""
    found = _SHARD.fullmatch(name)
    return found is not None and found["split"] == split


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


_LABELS = TypeAdapter(list[str])


def read_labels(uri: str | Path) -> list[str]:
    """Class names in model-output order: a non-empty JSON list of distinct strings.

    Raises:
        FileNotFoundError: nothing at `uri`.
        ContractError: not JSON, not a list of strings, empty, or with a name twice
            (one line, naming `uri`).
    """
    try:
        labels = _LABELS.validate_json(storage.read_bytes(uri))
    except ValidationError as exc:
        if any(err["type"] == "json_invalid" for err in exc.errors()):
            raise ContractError(f"{uri}: {_problems_of_json(exc)}") from exc
        raise ContractError(f"{uri}: expected a JSON list of class names") from exc
    if not labels or len(set(labels)) != len(labels):
        raise ContractError(f"{uri}: needs distinct class names, has {labels!r}")
    return labels
