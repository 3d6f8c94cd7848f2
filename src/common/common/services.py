"""External services (W&B, Cloud Storage, later Vertex AI): bounded waits, one-line failures.

Every client the pipeline builds for a service takes its timeouts and retry budget from
`ServiceBudget.from_settings`, so an unreachable or silent service costs seconds, not
minutes. A service that cannot be reached, or that refuses the credentials, surfaces as
a `ServiceError` naming the service, what went wrong and the way out; every CLI prints
it as one line and exits with `EXIT_UNAVAILABLE` (`common.cli.App`).
"""

from __future__ import annotations

import contextlib
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from common.settings import Settings

# sysexits.h EX_UNAVAILABLE: "a service is unavailable"; scripts can tell it from bad input.
EXIT_UNAVAILABLE = 69


class ServiceError(RuntimeError):
    """An external service is unreachable, silent, or refused our credentials.

    `str()` is one line: `<service>: <problem>; <fix>`. `denied` tells a refusal of the
    credentials (401, 403, none found) from a service that could not be reached.
    """

    def __init__(self, service: str, problem: str, fix: str, *, denied: bool = False) -> None:
        self.service = service
        self.denied = denied
        self.problem = _one_line(problem)
        self.fix = fix
        super().__init__(f"{service}: {self.problem}; {fix}")


@dataclass(frozen=True)
class ServiceBudget:
    """How long one call to a service may take.

    `connect_timeout` and `read_timeout` bound each HTTP request (seconds to open the
    connection, seconds to wait for the answer); `retry_seconds` bounds one operation
    with all its retries, after which the last error is reported.
    """

    connect_timeout: float
    read_timeout: float
    retry_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceBudget:
        return cls(
            connect_timeout=settings.service_connect_timeout,
            read_timeout=settings.service_read_timeout,
            retry_seconds=settings.service_retry_seconds,
        )

    @property
    def timeout(self) -> tuple[float, float]:
        """(connect, read) as `requests` and google-cloud-storage take it."""
        return (self.connect_timeout, self.read_timeout)


def google_call_options(budget: ServiceBudget, *, retry: bool = True) -> dict[str, Any]:
    """`timeout` and `retry` for one call of a generated Google API client.

    The timeout bounds each request (the budget's read timeout); transient errors are
    retried with backoff until `retry_seconds` have passed. `retry=False` for a call that
    must not be sent twice (creating a job: the first may have been accepted).
    """
    from google.api_core.retry import Retry, if_transient_error

    return {
        "timeout": budget.read_timeout,
        "retry": (
            Retry(
                predicate=if_transient_error,
                initial=0.25,
                maximum=2.0,
                timeout=budget.retry_seconds,
            )
            if retry
            else None
        ),
    }


def endpoint_credentials(endpoint: str | None) -> Any:
    """AnonymousCredentials for a plain `http://` API endpoint (a local stub), so that no
    token ever travels unencrypted; None otherwise (the client finds the Application
    Default Credentials)."""
    if endpoint and endpoint.startswith("http://"):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    return None


GOOGLE_CREDENTIALS_FIX = (
    "run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS "
    "to a service account key file outside the repository)"
)


# A Vertex AI model ID: a lowercase letter or `_` first, then at most 62 of a-z, 0-9, - and _.
VERTEX_MODEL_ID = re.compile(r"[a-z_][a-z0-9_-]{0,62}")
# Google Cloud label values: lowercase letters, digits, `_` and `-`, at most 63 characters.
_LABEL_VALUE_BAD = re.compile(r"[^a-z0-9_-]")
Client = TypeVar("Client")


def label_value(value: object) -> str:
    """`value` as a Google Cloud label value (`0.9813` → `0-9813`, `Feature/X` →
    `feature-x`), cut to 63 characters."""
    return _LABEL_VALUE_BAD.sub("-", str(value).lower())[:63]


def vertex_client(client_class: type[Client], settings: Settings) -> Client:
    """A Vertex AI API client (`aiplatform_v1.JobServiceClient`, `PipelineServiceClient`,
    `ModelServiceClient`) for MEGA_GCP_REGION, or MEGA_VERTEX_ENDPOINT, over REST.

    Raises:
        ServiceError: no credentials are set up on this machine.
    """
    endpoint = settings.vertex_endpoint or f"{settings.gcp_region}-aiplatform.googleapis.com"
    return client_class(  # type: ignore[call-arg]
        client_options={"api_endpoint": endpoint},
        transport="rest",
        credentials=vertex_credentials(settings),
    )


def vertex_service(settings: Settings) -> str:
    """`Vertex AI (<region>)`, or the endpoint when MEGA_VERTEX_ENDPOINT is set: the
    service a Vertex AI `ServiceError` names."""
    return f"Vertex AI ({settings.vertex_endpoint or settings.gcp_region})"


def vertex_credentials(settings: Settings) -> Any:
    """Application Default Credentials for Vertex AI; AnonymousCredentials for a
    plain-http MEGA_VERTEX_ENDPOINT (a local stub).

    Raises:
        ServiceError: no credentials are set up on this machine.
    """
    from google.auth import default
    from google.auth.exceptions import DefaultCredentialsError

    anonymous = endpoint_credentials(settings.vertex_endpoint)
    if anonymous is not None:
        return anonymous
    try:
        found, _ = default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except DefaultCredentialsError as exc:
        raise ServiceError(
            vertex_service(settings),
            "no Google credentials found",
            GOOGLE_CREDENTIALS_FIX,
            denied=True,
        ) from exc
    return found


@contextlib.contextmanager
def vertex_errors(
    settings: Settings, *, denied_fix: str, refused: str, refused_fix: str
) -> Iterator[None]:
    """Vertex AI's refusals and silences as one-line `ServiceError`s.

    `denied_fix` follows a permission refusal (the roles the call needs); `refused`
    ("the job was refused") and `refused_fix` describe a request Vertex AI found invalid.
    """
    import requests
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    service = vertex_service(settings)
    project = settings.gcp_project
    try:
        yield
    except (api.PermissionDenied, api.Forbidden) as exc:
        if getattr(exc, "reason", None) == "SERVICE_DISABLED" or "has not been used" in str(
            exc.message
        ):
            raise ServiceError(
                service,
                f"the Vertex AI API is not enabled in project {project}",
                f"enable it: gcloud services enable aiplatform.googleapis.com --project {project}",
                denied=True,
            ) from exc
        raise ServiceError(
            service,
            f"permission denied in project {project} ({exc.message})",
            denied_fix,
            denied=True,
        ) from exc
    except (api.Unauthenticated, api.Unauthorized, auth.GoogleAuthError) as exc:
        raise ServiceError(
            service, f"the credentials were refused ({exc})", GOOGLE_CREDENTIALS_FIX, denied=True
        ) from exc
    except api.NotFound as exc:
        raise ServiceError(
            service,
            f"not found: {exc.message}",
            "check MEGA_GCP_PROJECT and MEGA_GCP_REGION (a region where Vertex AI runs)",
        ) from exc
    except (api.InvalidArgument, api.BadRequest) as exc:
        raise ServiceError(service, f"{refused}: {exc.message}", refused_fix) from exc
    except api.AlreadyExists as exc:
        raise ServiceError(
            service, f"already exists: {exc.message}", "wait a second and submit again"
        ) from exc
    except api.ResourceExhausted as exc:
        raise ServiceError(
            service,
            f"quota exhausted in project {project} ({exc.message})",
            "ask for more in the console (IAM & Admin → Quotas, by the machine or GPU "
            "named), or ask for fewer or smaller machines",
        ) from exc
    except api.FailedPrecondition as exc:
        raise ServiceError(service, f"{refused}: {exc.message}", refused_fix) from exc
    except (api.RetryError, api.ServerError, requests.RequestException, OSError) as exc:
        raise ServiceError(
            service,
            f"unreachable ({unreachable_reason(exc)})",
            "check the network or MEGA_VERTEX_ENDPOINT; MEGA_SERVICE_RETRY_SECONDS sets "
            "how long to keep trying",
        ) from exc
    except api.GoogleAPICallError as exc:
        raise ServiceError(
            service, f"request refused ({exc.code} {exc.message})", GOOGLE_CREDENTIALS_FIX
        ) from exc


def check_answers(service: str, url: str, budget: ServiceBudget, fix: str) -> None:
    """Fail fast, as a `ServiceError`, when nothing answers HTTP at `url`.

    Any HTTP answer counts, an error status included: whether the credentials are
    accepted is the client's question. A refused connection, an unknown host or
    silence past the budget's read timeout (urllib bounds the connect and each read by
    it) is not an answer. Meant for clients whose own retries are slow or start late
    (after a heavy import).
    """
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=budget.read_timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServiceError(service, f"unreachable ({reason or type(exc).__name__})", fix) from exc


def unreachable_reason(exc: BaseException) -> str:
    """A short why for a failed connection (refused, no answer in time, host name not
    found); the Google clients nest the cause several levels deep."""
    from google.api_core.exceptions import RetryError

    cause: BaseException = exc.cause if isinstance(exc, RetryError) and exc.cause else exc
    text = str(cause).lower()
    if "refused" in text:
        return "connection refused"
    if "timed out" in text or "timeout" in type(cause).__name__.lower():
        return "no answer in time"
    if "name or service not known" in text or "name resolution" in text:
        return "host name not found"
    return f"{type(cause).__name__}: {cause}"


def _one_line(text: str) -> str:
    """The first non-empty line of a client's message, which may span many."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return "no details"
