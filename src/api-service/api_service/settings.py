"""The API service's settings: the shared ones (`common.settings`) plus serving's own.

Each is a `MEGA_*` environment variable or a line of `.env` (`.env.example` lists
them with their defaults; docs/serving.md explains them).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from common.params import RegistryParams
from common.settings import Settings


class ServingSettings(Settings):
    """`common.settings.Settings` and what only the API service reads."""

    # The registered model to serve: by default the one `params.yaml` registers.
    model_name: str = RegistryParams.model_fields["model_name"].default
    model_alias: str = "production"
    # Where a gs:// registry version is downloaded to before it is loaded.
    model_cache_dir: str = ".cache/models"
    # Threads of the inference process (LiteRT's own).
    serve_threads: int = 1
    # A folder with the page's index.html to serve at / (`mega serve` passes its own).
    static_dir: str | None = None
    # Size limits of one uploaded image (413 beyond them). Unset, the API takes the
    # served model's (collect.max_bytes / max_pixels, recorded in its preprocess.json):
    # serving accepts what training took. Set, a hard ceiling below the model's; a
    # lower one is logged as a warning at model load.
    max_upload_bytes: int | None = Field(default=None, ge=1)
    max_image_pixels: int | None = Field(default=None, ge=1)
    max_files_per_request: int = 16
    # Micro-batching. A batch takes what is queued, up to max_batch images, and waits up
    # to max_wait_ms after its first image for more; max_queue bounds waiting images
    # (503 `overloaded` beyond it). No wait by default: images that arrive while the
    # inference process works form the next batch anyway, and on CPU a wait only idles
    # that process (docs/serving.md: a 2 ms wait cut one client's rate to a third, 32
    # clients' by 7 %).
    max_batch: int = 32
    max_wait_ms: float = 0.0
    max_queue: int = 1024
    # Hot swap. The alias is re-read this often in seconds (0 turns watching off).
    model_poll_seconds: float = 5.0
    # The drift gauge compares this many latest predictions with training.
    drift_window: int = 1000
    # Browser origins allowed by CORS, comma-separated; empty = same origin only.
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    access_log: bool = True

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """Accept `https://a.example,https://b.example` from the environment."""
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value


@lru_cache
def get_settings() -> ServingSettings:
    """The service's settings, read once per process."""
    return ServingSettings()
