"""Runtime settings: where things live and how to reach services.

Defaults are local and offline; cloud settings stay unset until a `gs://` path
or a cloud service needs them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings read from `MEGA_*` environment variables and an optional `.env`.

    The settings of the pipeline stages and `mega`; the API service's own settings
    subclass these (`api_service.settings.ServingSettings`), so one `.env` serves both.
    """

    # An empty variable is an unset one (`MEGA_MODEL_NAME=` in .env, or compose's
    # `${MEGA_MODEL_NAME:-}` when the shell has none): the default here stays the only one.
    model_config = SettingsConfigDict(
        env_prefix="MEGA_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    # Storage roots: local folders by default, `gs://bucket/prefix` in the cloud.
    models_root: str = "models"

    # Google Cloud (needed only for cloud runs).
    gcp_project: str | None = None
    gcp_region: str = "us-central1"
    # Where cloud runs keep their data, job outputs and staged files: gs://bucket[/prefix].
    gcs_root: str | None = None
    # The service account (e-mail) Vertex AI jobs run as; unset: Vertex AI's default one.
    vertex_service_account: str | None = None
    # The Vertex AI API endpoint; unset: the region's own. Set it for a private endpoint
    # (tests point it at a loopback stub: an http:// endpoint is sent no credentials).
    vertex_endpoint: str | None = None
    # Seconds between two reads of a running Vertex AI job's state.
    vertex_poll_seconds: float = Field(default=15.0, ge=0)
    # The Artifact Registry repository the images are pushed to and Vertex AI pulls from,
    # as `gcloud artifacts repositories describe` prints its registryUri.
    image_repository: str | None = None
    # The Secret Manager secret holding the W&B API key (its name in MEGA_GCP_PROJECT, or
    # a full `projects/…/secrets/…` name): cloud jobs read the key from it at start.
    wandb_secret: str | None = None
    # The Secret Manager API endpoint; unset: the global one. Set it for a private
    # endpoint (tests point it at a loopback stub: an http:// endpoint is sent no credentials).
    secret_manager_endpoint: str | None = None

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

    # Where `python -m api_service` listens; also read by `mega serve` and its summary
    # line, so kept here. Every other serving setting: `api_service.settings`.
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(default=8000, ge=1, le=65535)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
