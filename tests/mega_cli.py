"""Running `mega` in tests as a user does: in its own process, or in this one.

Also the settings of a cloud run against the loopback Vertex AI stub and the storage
emulator, shared by the tests of `mega train --on vertex` and `mega run --on vertex`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from service_stubs import QUICK_BUDGET
from vertex_stub import VertexStub

MEGA = str(Path(sys.executable).parent / "mega")
SECRET = "wandb-key-must-never-travel-0123456789"
REPOSITORY = "images.test/my-project/mega"
SETTINGS = {
    "MEGA_GCP_PROJECT": "my-project",
    "MEGA_GCP_REGION": "europe-west4",
    "MEGA_GCS_ROOT": "gs://test-bucket/mega",
    "MEGA_IMAGE_REPOSITORY": REPOSITORY,
    "MEGA_VERTEX_SERVICE_ACCOUNT": "trainer@my-project.iam.gserviceaccount.com",
    "MEGA_WANDB_SECRET": "wandb-api-key",
    "MEGA_VERTEX_POLL_SECONDS": "0",
    # In the user's environment: it must stay there.
    "WANDB_API_KEY": SECRET,
}


def mega(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`mega args` as a user runs it, in its own process (importing the Vertex AI client
    takes seconds: most tests call `run_mega`, in this process, instead)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MEGA_", "WANDB_"))}
    return subprocess.run(
        [MEGA, *args],
        cwd=cwd,
        env={**clean, **QUICK_BUDGET, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


Mega = Callable[[list[str], Path, dict[str, str]], subprocess.CompletedProcess[str]]


@pytest.fixture
def run_mega(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mega]:
    """Like `mega`, in this process: the environment, the folder and the settings swapped."""
    from typer.testing import CliRunner

    from common.settings import get_settings
    from workflow.cli import app

    def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        for name in [n for n in os.environ if n.startswith(("MEGA_", "WANDB_"))]:
            monkeypatch.delenv(name)
        for name, value in {**QUICK_BUDGET, **env}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(cwd)
        get_settings.cache_clear()
        result = CliRunner().invoke(app, args)
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)

    yield run
    get_settings.cache_clear()


def on_stub(stub: VertexStub, **extra: str) -> dict[str, str]:
    """The settings of a cloud run on the stub and the storage emulator (its fixture set it)."""
    emulator = os.environ["STORAGE_EMULATOR_HOST"]
    return {
        **SETTINGS,
        "MEGA_VERTEX_ENDPOINT": stub.url,
        "STORAGE_EMULATOR_HOST": emulator,
        **extra,
    }
