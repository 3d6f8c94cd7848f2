"""Runtime settings: where things live and how to reach services.

Defaults are local and offline; cloud settings stay unset until a `gs://` path
or a cloud service needs them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Settings read from `MEGA_*` environment variables and an optional `.env`."""

    model_config = SettingsConfigDict(env_prefix="MEGA_", env_file=".env", extra="ignore")

    # Storage roots: local folders by default, `gs://bucket/prefix` in the cloud.
    models_root: str = "models"

    # Google Cloud (needed only for cloud runs).
    gcp_project: str | None = None

    # External services (Cloud Storage, W&B): seconds to open a connection, to wait for
    # one answer, and for one operation with its retries (common.services.ServiceBudget).
    service_connect_timeout: float = Field(default=5.0, gt=0)
    service_read_timeout: float = Field(default=10.0, gt=0)
    service_retry_seconds: float = Field(default=15.0, gt=0)

    # Experiment tracking. The API key is read by wandb itself from WANDB_API_KEY.
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "mega-pipeline"
    wandb_dir: str = ".wandb"
    # Online: how long the end of a run may wait for its last uploads before giving up
    # with a warning (the data stays on disk for `wandb sync`); 0 waits for ever.
    wandb_finish_timeout: float = Field(default=120.0, ge=0)

    # Training: the resumable backup folder or gs:// URI (`trainer train --run-dir` wins;
    # unset: AIP_CHECKPOINT_DIR on Vertex AI, else .mega/runs/<key>).
    train_run_dir: str | None = None

    # Serving.
    model_name: str = "digits-cnn"
    model_alias: str = "production"
    model_cache_dir: str = ".cache/models"
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    serve_threads: int = 1
    static_dir: str | None = None
    # Serving: size limits of one uploaded image (413 beyond them). Unset, the API
    # takes the served model's (collect.max_bytes / max_pixels, recorded in its
    # preprocess.json): serving accepts what training took. Set, a hard ceiling
    # below the model's; a lower one is logged as a warning at model load.
    max_upload_bytes: int | None = Field(default=None, ge=1)
    max_image_pixels: int | None = Field(default=None, ge=1)
    max_files_per_request: int = 16
    # Serving: micro-batching. A batch closes at max_batch images or max_wait_ms after
    # its first image; max_queue bounds waiting images (503 `overloaded` beyond it).
    max_batch: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    # Serving: hot swap. The alias is re-read this often (0 turns watching off).
    model_poll_seconds: float = 5.0
    # Serving: the drift gauge compares this many latest predictions with training.
    drift_window: int = 1000
    # Serving: browser origins allowed by CORS, comma-separated; empty = same origin only.
    cors_allow_origins: Annotated[list[str], NoDecode] = []
    access_log: bool = True

    @field_validator("max_upload_bytes", "max_image_pixels", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`MEGA_MAX_UPLOAD_BYTES=` (as compose writes an unset variable) means unset."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """Accept `https://a.example,https://b.example` from the environment."""
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
