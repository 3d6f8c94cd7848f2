"""The schema of `params.yaml`: every tunable of the pipeline, validated.

DVC tracks the file; each container reads only its own section, so a typo or
an out-of-range value fails at start with the offending key in the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from common import storage


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CollectParams(_Section):
    source: Literal["digits", "manifest", "archive", "folder", "gcs"] = "digits"
    uri: str | None = Field(
        default=None, description="Manifest, archive, folder or gs:// prefix; digits needs none."
    )
    limit: int | None = Field(default=None, ge=1, description="Keep only the first N items.")
    concurrency: int = Field(default=32, ge=1, le=512, description="Requests/reads in flight.")
    timeout: float = Field(default=30.0, gt=0, description="Seconds allowed per request.")
    retries: int = Field(default=4, ge=0, le=20, description="Retries of a transient failure.")
    backoff: float = Field(default=0.5, ge=0, description="First retry wait (s), doubling.")
    max_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="Reject bigger files.")
    max_pixels: int = Field(default=40_000_000, ge=1, description="Reject bigger images.")
    max_failure_share: float = Field(
        default=0.05, ge=0, le=1, description="Fail the run when more items than this fail."
    )

    @model_validator(mode="after")
    def _uri_when_needed(self) -> CollectParams:
        if self.source != "digits" and not self.uri:
            raise ValueError(f"source {self.source!r} needs collect.uri (see docs/data.md)")
        return self


class SplitRatios(_Section):
    train: float = Field(default=0.8, gt=0, lt=1)
    val: float = Field(default=0.1, ge=0, lt=1)
    test: float = Field(default=0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitRatios:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split ratios must sum to 1, they sum to {total:g}")
        return self


class ProcessParams(_Section):
    image_size: int = Field(default=16, ge=8, le=1024)
    color_mode: Literal["grayscale", "rgb"] = "grayscale"
    resize: Literal["stretch", "pad"] = Field(
        default="stretch", description="stretch to a square, or keep the aspect ratio and pad"
    )
    min_size: int = Field(default=8, ge=1, description="Reject images smaller on either side.")
    near_duplicates: bool = Field(
        default=False, description="Also drop near-duplicates (perceptual hash)."
    )
    near_duplicate_distance: int = Field(
        default=4, ge=0, le=16, description="Max differing bits of the 64-bit hash."
    )
    min_per_class: int = Field(default=10, ge=1, description="Fail if a class has fewer items.")
    split: SplitRatios = SplitRatios()
    shard_target_mb: float = Field(
        default=100.0, gt=0, description="Close a shard past this many MB (before compression)."
    )
    compression: Literal["none", "gzip"] = "none"
    png_compress_level: int = Field(
        default=0,
        ge=0,
        le=9,
        description="zlib level of the stored PNGs: 0 stores the pixels uncompressed "
        "(fastest to decode), 9 makes the smallest shards.",
    )


class AugmentParams(_Section):
    """Random augmentation: Keras layers applied in front of the model while training only;
    they are not part of the exported model."""

    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "none"
    rotation: float = Field(default=0.0, ge=0, le=0.5, description="Fraction of a full turn.")
    zoom: float = Field(default=0.0, ge=0, lt=1, description="Fraction of the side, in or out.")
    translation: float = Field(default=0.0, ge=0, lt=1, description="Fraction of the side.")
    contrast: float = Field(default=0.0, ge=0, lt=1, description="Contrast factor range.")


class TrainParams(_Section):
    model: Literal["small_cnn", "mobilenet_v3_small", "efficientnet_b0"] = "small_cnn"
    weights: Literal["imagenet", "none"] = Field(
        default="imagenet", description="Backbone weights (transfer models); none works offline."
    )
    fine_tune_layers: int = Field(
        default=0, ge=-1, description="Pretrained backbone layers to train, from the top; -1: all."
    )
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=64, ge=1, description="Per replica; global = × replicas.")
    steps_per_execution: int = Field(
        default=8,
        ge=1,
        description="Training steps per call into the compiled step (fewer Python round trips).",
    )
    learning_rate: float = Field(default=2e-3, gt=0)
    seed: int = 42
    tracking: Literal["wandb", "none"] = "wandb"
    cache_mb: float = Field(
        default=1024, ge=0, description="Cache a decoded split in memory if it fits; 0: never."
    )
    shuffle_buffer: int = Field(
        default=10_000,
        ge=1,
        description="Examples in the shuffle buffer of a streamed split (a cached one is "
        "fully reshuffled every epoch).",
    )
    augment: AugmentParams = AugmentParams()


class RegistryParams(_Section):
    model_name: str = Field(default="digits-cnn", pattern=r"^[a-z0-9][a-z0-9-]*$")
    min_accuracy: float = Field(default=0.9, ge=0, le=1)
    min_macro_f1: float = Field(
        default=0.85,
        ge=0,
        le=1,
        description="Test macro F1 (mean per-class F1) a candidate needs: catches a class "
        "the model neglects, which accuracy hides when classes are imbalanced.",
    )
    min_improvement: float = Field(
        default=0.005, ge=0, le=1, description="Test accuracy a candidate must add over production."
    )

    @model_validator(mode="after")
    def _not_reserved(self) -> RegistryParams:
        if self.model_name == "candidate":
            raise ValueError("model_name 'candidate' is reserved for the unregistered candidate")
        return self


class PruningParams(_Section):
    target_sparsity: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="Fraction of zero Conv/Dense kernel weights at the end.",
    )
    epochs: int = Field(default=4, ge=1, description="Fine-tuning epochs with the schedule.")
    begin_fraction: float = Field(default=0.0, ge=0, lt=1, description="Pruning starts here.")
    end_fraction: float = Field(
        default=0.75, gt=0, le=1, description="…and reaches the target here (of the steps)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> PruningParams:
        if self.end_fraction <= self.begin_fraction:
            raise ValueError("pruning.end_fraction must be above pruning.begin_fraction")
        return self


class DistillParams(_Section):
    filters: list[int] = Field(
        default_factory=lambda: [16, 32], min_length=1, description="The student's conv widths."
    )
    dense: int = Field(default=32, ge=1, description="Units of the student's dense layer.")
    temperature: float = Field(default=2.0, gt=0)
    alpha: float = Field(default=0.9, ge=0, le=1, description="Weight of the hard-label loss.")
    epochs: int | None = Field(default=None, ge=1, description="None: train.epochs.")


class OptimizeParams(_Section):
    """The optimize stage: quantized, pruned and distilled variants, and which one is served."""

    max_accuracy_drop: float = Field(
        default=0.01, ge=0, le=1, description="Test accuracy a variant may lose vs float32."
    )
    representative_examples: int = Field(
        default=256, ge=1, description="Train-split images for full-integer calibration."
    )
    latency_runs: int = Field(default=200, ge=1, description="Single-image invocations timed.")
    latency_tie: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="p50 latencies within this share of the fastest eligible one tie: the "
        "smallest file among them is served (timings move by a few percent between runs).",
    )
    throughput_batch: int = Field(default=32, ge=1)
    pruning: PruningParams = PruningParams()
    distill: DistillParams = DistillParams()


class VertexParams(_Section):
    """Training on Vertex AI (`mega train --on vertex`, `mega tune --on vertex`)."""

    machine_type: str = Field(
        default="n1-standard-4", pattern=r"^[a-z0-9-]+$", description="Each worker's machine."
    )
    accelerator_type: str = Field(
        default="NVIDIA_TESLA_T4",
        pattern=r"^[A-Z0-9_]+$",
        description="Vertex AI's AcceleratorType name; used when accelerator_count > 0.",
    )
    accelerator_count: int = Field(default=0, ge=0, le=16, description="GPUs per worker.")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Machines: one chief, and workers - 1 more (MultiWorkerMirroredStrategy).",
    )
    boot_disk_gb: int = Field(default=100, ge=100, le=65536)
    timeout_hours: float = Field(default=24.0, gt=0, le=168, description="Then Vertex stops it.")
    restart_on_worker_restart: bool = Field(
        default=True,
        description="Restart every worker when one restarts; the trainer resumes from "
        "AIP_CHECKPOINT_DIR's backup.",
    )


class RangeSpec(_Section):
    """A numeric search range: `{min, max, scale: linear|log, type: float|int}`."""

    min: float
    max: float
    scale: Literal["linear", "log"] = "linear"
    type: Literal["float", "int"] = "float"

    @model_validator(mode="after")
    def _ordered(self) -> RangeSpec:
        if self.max <= self.min:
            raise ValueError(f"max ({self.max:g}) must be above min ({self.min:g})")
        if self.scale == "log" and self.min <= 0:
            raise ValueError(f"a log scale needs min above 0, not {self.min:g}")
        if self.type == "int" and not (self.min.is_integer() and self.max.is_integer()):
            raise ValueError("type int needs whole min and max")
        return self


class ChoiceSpec(_Section):
    """A list of values to choose from: `{values: [...]}`."""

    values: list[bool | int | float | str] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ChoiceSpec:
        if len({repr(v) for v in self.values}) != len(self.values):
            raise ValueError(f"values repeat one another: {self.values}")
        return self


SearchSpec = RangeSpec | ChoiceSpec


def _default_space() -> dict[str, SearchSpec]:
    return {
        "train.learning_rate": RangeSpec(min=5e-4, max=1e-2, scale="log"),
        "train.batch_size": ChoiceSpec(values=[32, 64, 128]),
    }


class TuneParams(_Section):
    """Hyperparameter tuning (`mega tune`, `mega tune --on vertex`): what to search, and how.

    `space` maps a dotted `train.*` key to a range or a list of values; every value it
    can produce must be valid for that key.
    """

    metric: Literal["val_accuracy", "val_loss"] = Field(
        default="val_accuracy", description="The last epoch's value of this fit metric."
    )
    goal: Literal["maximize", "minimize"] = "maximize"
    trials: int = Field(default=8, ge=1, le=1000, description="Trainings in one tuning run.")
    parallel_trials: int = Field(
        default=2, ge=1, le=100, description="Trials at once (Vertex AI; local runs one by one)."
    )
    seed: int = Field(default=42, description="The sampler's seed: a re-run asks the same.")
    space: dict[str, SearchSpec] = Field(default_factory=_default_space, min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> TuneParams:
        wanted = {"val_accuracy": "maximize", "val_loss": "minimize"}[self.metric]
        if self.goal != wanted:
            raise ValueError(
                f"goal {self.goal} of {self.metric} would search for the worst model; "
                f"set tune.goal: {wanted}"
            )
        if self.parallel_trials > self.trials:
            raise ValueError(
                f"parallel_trials ({self.parallel_trials}) exceeds trials ({self.trials})"
            )
        for key, spec in self.space.items():
            _check_search_key(key, spec)
        return self


def _field(model: type[BaseModel], dotted: str) -> FieldInfo | None:
    """The schema field at `dotted` below `model` (`augment.zoom`), or None."""
    head, _, rest = dotted.partition(".")
    field = model.model_fields.get(head)
    if field is None or not rest:
        return field
    inner = field.annotation
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return _field(inner, rest)
    return None


def _check_search_key(key: str, spec: SearchSpec) -> None:
    """ValueError unless `key` is a train.* parameter that takes every value `spec` gives."""
    section, _, rest = key.partition(".")
    if section != "train":
        raise ValueError(
            f"space key {key!r}: only train.* parameters can be tuned (a trial is one training "
            "on the processed data)"
        )
    field = _field(TrainParams, rest)
    if field is None or (
        isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    ):
        raise ValueError(f"space key {key!r}: no such parameter in params.yaml's train section")
    if isinstance(spec, RangeSpec):
        if spec.type == "float" and field.annotation is int:
            raise ValueError(f"space key {key!r}: the parameter is whole: set type: int")
        edges: list[object] = [spec.min, spec.max]
        if spec.type == "int":
            edges = [int(spec.min), int(spec.max)]
    else:
        edges = list(spec.values)
    for value in edges:
        try:
            _set_train_value(rest, value)
        except ValidationError as exc:
            raise ValueError(
                f"space key {key!r}: {value!r} is not valid: {_problems(exc)}"
            ) from exc


def _set_train_value(dotted: str, value: object) -> TrainParams:
    data = TrainParams().model_dump()
    _assign(data, dotted.split("."), value)
    return TrainParams.model_validate(data)


def _assign(data: dict[str, Any], path: list[str], value: object) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


class PipelineParams(_Section):
    dataset: str = Field(default="digits", pattern=r"^[A-Za-z0-9_-]+$")
    collect: CollectParams = CollectParams()
    process: ProcessParams = ProcessParams()
    train: TrainParams = TrainParams()
    registry: RegistryParams = RegistryParams()
    optimize: OptimizeParams = OptimizeParams()
    vertex: VertexParams = VertexParams()
    tune: TuneParams = TuneParams()


class ParamsError(ValueError):
    """params.yaml is missing or invalid."""


def load_params(path: str | Path = "params.yaml") -> PipelineParams:
    """Read and validate params.yaml; errors name the file and the bad keys."""
    try:
        raw = yaml.safe_load(storage.read_text(path)) or {}
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: not found; run from the project root or pass --params") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return PipelineParams.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(f"{path}: invalid parameters: {_problems(exc)}") from exc


def _problems(exc: ValidationError) -> str:
    """A validation error as `dotted.key: message; ...` on one line."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
    )


def _parse_value(text: str) -> object:
    """`text` as a YAML scalar (`5` → 5, `0.5` → 0.5, `null` → None, `[8, 16]` → a list);
    text YAML cannot parse stays the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(params: PipelineParams, overrides: Mapping[str, str]) -> PipelineParams:
    """`params` with each dotted key of `overrides` (`{"train.epochs": "2"}`) set, validated.

    Values are strings, read as YAML (`2` is a number, `null` None, `[16, 32]` a list); a
    string parameter's value that YAML reads otherwise (`on`, `1e3`) is kept as written.
    The result is validated as a whole (split ratios set together must sum to 1).
    Raises ParamsError, one line naming the key: an unknown key, a section given a value,
    or a value the schema refuses. `params` itself is left unchanged.
    """
    data = params.model_dump()
    slots: dict[str, tuple[dict[str, Any], str]] = {}
    for key, text in overrides.items():
        node, name = _slot(data, key)
        node[name] = _parse_value(text)
        slots[key] = (node, name)
    try:
        return PipelineParams.model_validate(data)
    except ValidationError as exc:
        error = exc
    # YAML read a number or a bool where the schema may want the string as written.
    refused = {".".join(str(p) for p in err["loc"]) for err in error.errors()}
    retyped = [k for k in refused & set(slots) if not isinstance(slots[k][0][slots[k][1]], str)]
    for key in retyped:
        node, name = slots[key]
        node[name] = overrides[key]
    if retyped:
        try:
            return PipelineParams.model_validate(data)
        except ValidationError:
            pass  # the first error says it better
    loc = ".".join(str(p) for p in error.errors()[0]["loc"])
    culprit = next(
        (k for k in overrides if k == loc or k.startswith(f"{loc}.") or loc.startswith(f"{k}.")),
        None,
    )
    given = f"{culprit}={overrides[culprit]}: " if culprit else ""
    raise ParamsError(f"{given}{_problems(error)}") from error


def _slot(data: dict[str, Any], key: str) -> tuple[dict[str, Any], str]:
    """The dict holding dotted `key` in `data` (a params dump), and the name in it."""
    path = key.split(".")
    node: object = data
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if not all(path) or not isinstance(node, dict) or path[-1] not in node:
        raise ParamsError(f"{key}: no such parameter in params.yaml (keys look like train.epochs)")
    if isinstance(node[path[-1]], dict):
        raise ParamsError(f"{key}: is a section; set one of its keys ({key}.<name>=<value>)")
    return node, path[-1]
