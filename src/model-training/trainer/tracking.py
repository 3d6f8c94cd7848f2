"""Experiment tracking with W&B: offline by default, so no key is needed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras

from common.settings import Settings


class Tracker:
    """A W&B run, or nothing when tracking is off; the trainer treats both alike."""

    def __init__(self, enabled: bool, settings: Settings) -> None:
        self.enabled = enabled and settings.wandb_mode != "disabled"
        self.settings = settings
        self.run: Any = None

    def start(self, config: dict[str, Any], job_type: str) -> None:
        if not self.enabled:
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        Path(self.settings.wandb_dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.settings.wandb_project,
            mode=self.settings.wandb_mode,
            dir=self.settings.wandb_dir,
            config=config,
            job_type=job_type,
        )

    @property
    def run_id(self) -> str | None:
        return None if self.run is None else str(self.run.id)

    @property
    def run_dir(self) -> str | None:
        return None if self.run is None else str(Path(self.run.dir).parent)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        if self.run is None:
            return []
        from wandb.integration.keras import WandbMetricsLogger

        return [WandbMetricsLogger(log_freq="epoch")]

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
