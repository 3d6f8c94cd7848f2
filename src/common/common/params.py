"""The schema of `params.yaml`: every tunable of the pipeline, validated.

DVC tracks the file; each container reads only its own section, so a typo or
an out-of-range value fails at start with the offending key in the message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    shuffle_buffer: int = Field(default=10_000, ge=1, description="Examples in the shuffle buffer.")
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


class PipelineParams(_Section):
    dataset: str = Field(default="digits", pattern=r"^[A-Za-z0-9_-]+$")
    collect: CollectParams = CollectParams()
    process: ProcessParams = ProcessParams()
    train: TrainParams = TrainParams()
    registry: RegistryParams = RegistryParams()
    optimize: OptimizeParams = OptimizeParams()
    vertex: VertexParams = VertexParams()


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
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ParamsError(f"{path}: invalid parameters: {problems}") from exc
