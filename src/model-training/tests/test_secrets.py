"""The W&B key from Secret Manager (`trainer.secrets`, `trainer.tracking.load_key`).

Against `SecretManagerStub`, a loopback Secret Manager REST API, and the failing services
of `service_fault`, reached by the real client through `MEGA_SECRET_MANAGER_ENDPOINT`.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_stubs import QUICK_BUDGET, SecretManagerStub, service_fault

from common.services import ServiceError
from common.settings import Settings
from trainer.secrets import secret_version, wandb_key
from trainer.tracking import KEY_VARIABLE, load_key, wandb_mode

__all__ = ["service_fault"]  # the fixture, imported for pytest

SECRET = "projects/proj/secrets/wandb-api-key"
KEY = "5ec2e7" + "0123456789abcdef" * 2 + "be"  # 40 characters, as W&B keys are
ACCESS_PATH = f"/v1/{SECRET}/versions/latest:access"


@pytest.fixture
def stub() -> Iterator[SecretManagerStub]:
    """Holds the key (with echo's newline, as `gcloud secrets create --data-file=-` keeps
    it), an empty secret, and a secret the caller may not read."""
    server = SecretManagerStub(
        {SECRET: f"{KEY}\n".encode(), "projects/proj/secrets/empty": b" \n"},
        denied=frozenset({"projects/proj/secrets/locked"}),
    )
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No key, no MEGA_* setting or .env in play; a key load_key sets is removed after."""
    monkeypatch.chdir(tmp_path)  # no .env here
    for name in [n for n in os.environ if n.startswith("MEGA_")]:
        monkeypatch.delenv(name)
    for name, value in QUICK_BUDGET.items():
        monkeypatch.setenv(name, value)
    had = os.environ.pop(KEY_VARIABLE, None)
    yield
    os.environ.pop(KEY_VARIABLE, None)
    if had is not None:
        os.environ[KEY_VARIABLE] = had


def settings(endpoint: str, secret: str = "wandb-api-key", **extra: object) -> Settings:
    return Settings(
        wandb_secret=secret, gcp_project="proj", secret_manager_endpoint=endpoint, **extra
    )


@pytest.mark.parametrize(
    ("given", "project", "version"),
    [
        ("wandb-api-key", "proj", "projects/proj/secrets/wandb-api-key/versions/latest"),
        ("wandb_key-2", "p-1", "projects/p-1/secrets/wandb_key-2/versions/latest"),
        ("projects/other/secrets/k", None, "projects/other/secrets/k/versions/latest"),
        ("projects/other/secrets/k/versions/3", "proj", "projects/other/secrets/k/versions/3"),
    ],
)
def test_secret_names(given: str, project: str | None, version: str) -> None:
    assert secret_version(given, project) == version


@pytest.mark.parametrize(
    ("given", "project", "says"),
    [
        ("wandb-api-key", None, "MEGA_GCP_PROJECT is unset; set MEGA_GCP_PROJECT"),
        ("my key", "proj", "not a secret name"),
        ("projects/proj/secrets/", "proj", "not a secret name"),
        ("projects/proj/wandb-api-key", "proj", "not a secret name"),
        ("projects/p/secrets/k/versions/", "proj", "not a secret name"),
    ],
)
def test_bad_secret_names_say_what_to_set(given: str, project: str | None, says: str) -> None:
    with pytest.raises(ServiceError) as raised:
        secret_version(given, project)
    assert str(raised.value).startswith(f"Secret Manager ({given}): ")
    assert says in str(raised.value) and "\n" not in str(raised.value)


def test_reads_the_latest_version_anonymously_from_an_http_endpoint(
    stub: SecretManagerStub, clean_env: None
) -> None:
    assert wandb_key(settings(stub.url)) == KEY  # without the newline
    [(path, headers)] = stub.requests
    assert path == ACCESS_PATH
    assert "authorization" not in {name.lower() for name in headers}  # a stub gets no token


def test_a_full_name_with_a_version_reads_that_version(
    stub: SecretManagerStub, clean_env: None
) -> None:
    assert wandb_key(settings(stub.url, secret=f"{SECRET}/versions/7")) == KEY
    assert stub.paths == [f"/v1/{SECRET}/versions/7:access"]


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        ("missing", ("no such secret or version", "create it", "MEGA_WANDB_SECRET")),
        ("locked", ("permission denied", "roles/secretmanager.secretAccessor")),
        ("empty", ("the version holds no text key", "add a version")),
    ],
)
def test_a_secret_that_cannot_be_used_is_one_line(
    secret: str, says: tuple[str, ...], stub: SecretManagerStub, clean_env: None
) -> None:
    with pytest.raises(ServiceError) as raised:
        wandb_key(settings(stub.url, secret=secret))
    message = str(raised.value)
    assert message.startswith(f"Secret Manager (projects/proj/secrets/{secret}/versions/latest): ")
    assert all(part in message for part in says), message
    assert "\n" not in message
    assert stub.paths == [f"/v1/projects/proj/secrets/{secret}/versions/latest:access"]


def test_a_failing_service_is_one_line(
    service_fault: str, request: pytest.FixtureRequest, clean_env: None
) -> None:
    fault = request.node.callspec.params["service_fault"]
    with pytest.raises(ServiceError) as raised:
        wandb_key(settings(service_fault))
    message = str(raised.value)
    assert message.startswith(f"Secret Manager ({SECRET}/versions/latest): "), message
    assert "\n" not in message
    expected = {
        "refused": "unreachable (connection refused); check the network",
        "hang": "unreachable (no answer in time); check the network",
        "401": "the credentials were refused",
        "403": "permission denied",
    }[fault]
    assert expected in message, message
    assert raised.value.denied == (fault in ("401", "403"))


def test_no_credentials_is_one_line(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real endpoint, and no credentials to find: said before any request."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    with pytest.raises(ServiceError) as raised:
        wandb_key(Settings(wandb_secret="wandb-api-key", gcp_project="proj"))
    assert "no Google credentials found" in str(raised.value)
    assert "gcloud auth application-default login" in str(raised.value)


# --- when the key is read -------------------------------------------------------------


def test_the_key_goes_to_the_environment_and_makes_the_run_online(
    stub: SecretManagerStub, clean_env: None
) -> None:
    chosen = settings(stub.url)
    assert wandb_mode(chosen) == "offline"
    assert load_key(True, chosen)
    assert os.environ[KEY_VARIABLE] == KEY
    assert wandb_mode(chosen) == "online"
    assert stub.paths == [ACCESS_PATH]


@pytest.mark.parametrize(
    ("case", "extra"),
    [
        ("tracking off", {}),
        ("a key already given", {}),
        ("forced offline", {"wandb_mode": "offline"}),
        ("disabled", {"wandb_mode": "disabled"}),
    ],
)
def test_the_secret_is_left_alone_when_no_online_run_needs_it(
    case: str, extra: dict[str, str], stub: SecretManagerStub, clean_env: None
) -> None:
    if case == "a key already given":
        os.environ[KEY_VARIABLE] = "given-directly"
    assert not load_key(case != "tracking off", settings(stub.url, **extra))
    assert stub.requests == []
    assert os.environ.get(KEY_VARIABLE) == (
        "given-directly" if case == "a key already given" else None
    )


def test_forced_online_reads_the_key(stub: SecretManagerStub, clean_env: None) -> None:
    assert load_key(True, settings(stub.url, wandb_mode="online"))
    assert os.environ[KEY_VARIABLE] == KEY


def test_the_key_is_not_in_the_error_of_a_refused_version(clean_env: None) -> None:
    """A stub answering the key with a non-UTF-8 tail: refused, and the bytes not shown."""
    raw = KEY.encode() + b"\xff"
    server = SecretManagerStub({SECRET: raw})
    try:
        with pytest.raises(ServiceError) as raised:
            wandb_key(settings(server.url))
    finally:
        server.close()
    assert "holds no text key" in str(raised.value)
    assert KEY not in str(raised.value) and base64.b64encode(raw).decode() not in str(raised.value)
