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
    source: Literal["digits"] = "digits"
    limit: int | None = Field(default=None, ge=1, description="Keep only the first N items.")


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
    image_size: int = Field(default=32, ge=8, le=1024)
    color_mode: Literal["grayscale", "rgb"] = "grayscale"
    split: SplitRatios = SplitRatios()
    shard_size: int = Field(default=1000, ge=1, description="Examples per TFRecord shard.")


class TrainParams(_Section):
    model: Literal["small_cnn"] = "small_cnn"
    epochs: int = Field(default=15, ge=1)
    batch_size: int = Field(default=64, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    seed: int = 42
    tracking: Literal["wandb", "none"] = "wandb"


class RegistryParams(_Section):
    model_name: str = Field(default="digits-cnn", pattern=r"^[a-z0-9][a-z0-9-]*$")
    min_accuracy: float = Field(default=0.9, ge=0, le=1)

    @model_validator(mode="after")
    def _not_reserved(self) -> RegistryParams:
        if self.model_name == "candidate":
            raise ValueError("model_name 'candidate' is reserved for the unregistered candidate")
        return self


class PipelineParams(_Section):
    dataset: str = Field(default="digits", pattern=r"^[A-Za-z0-9_-]+$")
    collect: CollectParams = CollectParams()
    process: ProcessParams = ProcessParams()
    train: TrainParams = TrainParams()
    registry: RegistryParams = RegistryParams()


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
