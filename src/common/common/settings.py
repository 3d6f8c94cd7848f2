"""Runtime settings: where things live and how to reach services.

Defaults are local and offline. Anything cloud-specific is optional until a
command needs it, and then `Settings.require` fails with the setting's name.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class MissingSettingError(RuntimeError):
    """A setting that the requested operation needs is not configured."""


class Settings(BaseSettings):
    """Settings read from `MEGA_*` environment variables and an optional `.env`."""

    model_config = SettingsConfigDict(env_prefix="MEGA_", env_file=".env", extra="ignore")

    # Storage roots: local folders by default, `gs://bucket/prefix` in the cloud.
    data_root: str = "data"
    models_root: str = "models"
    reports_root: str = "reports"

    # Google Cloud (needed only for cloud runs).
    gcp_project: str | None = None
    gcp_region: str = "us-central1"

    # Experiment tracking. The API key is read by wandb itself from WANDB_API_KEY.
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "mega-pipeline"
    wandb_dir: str = ".wandb"

    # Serving.
    model_name: str = "digits-cnn"
    model_alias: str = "production"
    model_cache_dir: str = ".cache/models"
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    serve_threads: int = 1
    static_dir: str | None = None
    max_upload_bytes: int = 10 * 1024 * 1024

    def require(self, *names: str) -> None:
        """Fail with a message naming every listed setting that is unset."""
        missing = [name for name in names if getattr(self, name) in (None, "")]
        if missing:
            env_names = ", ".join(f"MEGA_{name.upper()}" for name in missing)
            raise MissingSettingError(
                f"missing setting(s): {env_names}. Set them in the environment or in .env "
                "(see .env.example)."
            )


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
