"""Experiment tracking with W&B: offline by default, so no key is needed.

The mode: `MEGA_WANDB_MODE` when it is set; otherwise online when `WANDB_API_KEY`
is in the environment (wandb reads the key itself; it is never an argument),
offline when not. `train.tracking: none` turns tracking off. With `MEGA_WANDB_SECRET`
(Vertex AI jobs) the key is read from Secret Manager at start (`load_key`).

Online, a W&B server that cannot be reached, stays silent or refuses the key fails the
run at start, before any training, with one line (`ServiceError`): the user asked for
online tracking, and a run that quietly went offline in a container that is thrown
away afterwards (Vertex AI, CI) would lose its record. wandb's own settings bound the
wait (`init_timeout`, the GraphQL request timeout) from `MEGA_SERVICE_*`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.services import ServiceBudget, ServiceError, check_answers
from common.settings import Settings

if TYPE_CHECKING:  # the CLI checks the server before TensorFlow is imported
    import keras
    import numpy as np

# Where wandb reads its API key.
KEY_VARIABLE = "WANDB_API_KEY"
WANDB_FIX = (
    "run offline with MEGA_WANDB_MODE=offline (upload later with `wandb sync`) "
    "or turn tracking off with train.tracking: none"
)


def wandb_mode(settings: Settings) -> str:
    """The W&B mode to use: an explicit setting wins, then the presence of a key."""
    if "wandb_mode" in settings.model_fields_set:
        return settings.wandb_mode
    return "online" if os.environ.get(KEY_VARIABLE) else settings.wandb_mode


def load_key(enabled: bool, settings: Settings) -> bool:
    """Put the W&B key from Secret Manager into this process's `WANDB_API_KEY`, where
    wandb reads it; True when it did.

    Only when a run will track and may go online: tracking `enabled`, `MEGA_WANDB_SECRET`
    set, no `WANDB_API_KEY` yet (a key given directly wins), and `MEGA_WANDB_MODE` not
    forced to offline or disabled (an offline run needs no key, nor the network). The
    key then makes the mode online, as a key in the environment does.

    Raises:
        ServiceError: the secret cannot be read (`trainer.secrets.wandb_key`).
    """
    forced_off = "wandb_mode" in settings.model_fields_set and settings.wandb_mode != "online"
    if not enabled or not settings.wandb_secret or os.environ.get(KEY_VARIABLE) or forced_off:
        return False
    from trainer.secrets import wandb_key

    os.environ[KEY_VARIABLE] = wandb_key(settings)  # this process and its children only
    return True


def check_server(enabled: bool, settings: Settings) -> None:
    """Before anything heavy: the key from Secret Manager when one is named (`load_key`),
    then an online run's W&B server must answer, else `ServiceError`.

    wandb itself notices only after its own start-up and retries; this takes at most
    the service budget's read timeout for the connect and again for the answer. The
    key is checked later, by wandb.
    """
    load_key(enabled, settings)
    if not enabled or wandb_mode(settings) != "online":
        return
    server = Tracker.server()
    check_answers(
        f"W&B ({server})",
        server,
        ServiceBudget.from_settings(settings),
        f"check the network or WANDB_BASE_URL, or {WANDB_FIX}",
    )


class Tracker:
    """A W&B run, or nothing when tracking is off; the trainer treats both alike."""

    def __init__(self, enabled: bool, settings: Settings) -> None:
        self.mode = wandb_mode(settings)
        self.enabled = enabled and self.mode != "disabled"
        self.settings = settings
        self.run: Any = None
        self.degraded = False  # a W&B call failed mid-run: no more calls, one warning

    def start(self, config: dict[str, Any], job_type: str, run_id: str | None = None) -> None:
        """Start (or, with the `run_id` of an interrupted run, resume) a run."""
        if not self.enabled:
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        # wandb's usage telemetry logs its own failed uploads at exit; they would bury
        # the one-line error when the server is down. Our runs' data is unaffected.
        logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
        Path(self.settings.wandb_dir).mkdir(parents=True, exist_ok=True)
        budget = ServiceBudget.from_settings(self.settings)
        try:
            self.run = wandb.init(
                project=self.settings.wandb_project,
                mode=self.mode,  # type: ignore[arg-type]
                dir=self.settings.wandb_dir,
                config=config,
                job_type=job_type,
                id=run_id,
                resume="allow" if run_id else None,
                settings=wandb.Settings(
                    init_timeout=budget.retry_seconds,
                    x_graphql_timeout_seconds=budget.read_timeout,
                    # Without it, finish() waits for ever for uploads to a server
                    # that went away mid-run, after the model was exported.
                    finish_timeout=self.settings.wandb_finish_timeout,
                    finish_timeout_raises=True,
                ),
            )
        except wandb.errors.Error as exc:
            raise wandb_service_error(exc, self.server()) from exc

    @staticmethod
    def server() -> str:
        """The server wandb talked to: WANDB_BASE_URL, else its default."""
        import wandb

        return os.environ.get("WANDB_BASE_URL") or str(wandb.Settings().base_url)

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

    def log_confusion_matrix(
        self, key: str, true: np.ndarray, pred: np.ndarray, labels: list[str]
    ) -> None:
        if self.run is None or self.degraded:
            return
        import wandb

        with self._best_effort("logging the confusion matrix"):
            self.run.log(
                {
                    key: wandb.plot.confusion_matrix(
                        y_true=true.tolist(), preds=pred.tolist(), class_names=labels
                    )
                }
            )

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A W&B table (the optimization variants) under `key`."""
        if self.run is None or self.degraded:
            return
        import wandb

        with self._best_effort(f"logging the {key} table"):
            self.run.log({key: wandb.Table(columns=list[str | int](columns), data=rows)})

    def log_model(self, folder: Path, name: str, aliases: list[str]) -> None:
        """The exported model folder as a W&B `model` artifact with `aliases`."""
        if self.run is None or self.degraded:
            return
        import wandb

        artifact = wandb.Artifact(
            name, type="model", metadata={"format": "keras+savedmodel+tflite"}
        )
        artifact.add_dir(str(folder))
        with self._best_effort("logging the model artifact"):
            self.run.log_artifact(artifact, aliases=aliases)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None and not self.degraded:
            with self._best_effort("updating the run summary"):
                self.run.summary.update(values)

    @contextlib.contextmanager
    def _best_effort(self, what: str) -> Iterator[None]:
        """W&B calls once the run is going: a server that went away mid-run costs one
        warning and the rest of the tracking, not the model being trained."""
        import wandb

        try:
            yield
        except (wandb.errors.Error, TimeoutError, ConnectionError) as exc:
            self.degraded = True
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self._warn(
                f"{what} failed ({first}); training goes on without W&B, and the run's "
                f"files stay in {self.run_dir}: upload them later with `wandb sync {self.run_dir}`"
            )

    def _warn(self, message: str) -> None:
        print(f"train: warning: W&B ({self.server()}): {message}", file=sys.stderr, flush=True)

    def finish(self) -> None:
        """End the run. Uploads that do not finish in time leave a warning, not a failure:
        the model is exported by then, and the run's files stay on disk for `wandb sync`.
        """
        if self.run is None:
            return
        run_dir = self.run_dir
        try:
            self.run.finish()
        except TimeoutError:
            if not self.degraded:  # already said
                self._warn(
                    "the run's last data was not uploaded within MEGA_WANDB_FINISH_TIMEOUT "
                    f"({self.settings.wandb_finish_timeout:g} s); it is kept in {run_dir}: "
                    f"upload it later with `wandb sync {run_dir}`"
                )


def wandb_service_error(exc: Exception, server: str) -> ServiceError:
    """wandb's failure to start an online run, as one line naming the server and the fix."""
    import wandb

    message = getattr(exc, "message", None) or str(exc)
    service = f"W&B ({server})"
    if isinstance(exc, wandb.errors.AuthenticationError):
        return ServiceError(service, f"the API key was refused: {message}", WANDB_FIX, denied=True)
    unreachable = ("timed out", "connection refused", "deadline", "no such host", "dial tcp")
    if isinstance(exc, wandb.errors.CommError) and any(
        word in message.lower() for word in unreachable
    ):
        return ServiceError(
            service,
            f"unreachable: {message}",
            "check the network or WANDB_BASE_URL (MEGA_SERVICE_RETRY_SECONDS sets how long "
            f"to keep trying), or {WANDB_FIX}",
        )
    return ServiceError(
        service,
        f"refused to start the run ({message}); check WANDB_API_KEY and the project's access",
        WANDB_FIX,
        denied=True,
    )
