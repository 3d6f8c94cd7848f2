"""Cloud Storage plumbing for `common.storage`: the client, the request budget, errors.

Every request is bounded by the settings' `ServiceBudget` (connect and read timeouts, a
retry deadline); a bucket that cannot be reached or that refuses the credentials raises
`common.services.ServiceError` with the way out. Use `common.storage` for files; its
names for these (`storage.gcs_errors`, ...) are the same objects.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.services import ServiceBudget, ServiceError, unreachable_reason

if TYPE_CHECKING:
    import google.cloud.storage as gcs

GCS_SCHEME = "gs://"
# google-cloud-storage's switch for its background bucket-metadata fetches (see gcs_client).
BUCKET_METADATA_SWITCH = "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA"


def is_gcs(uri: str | Path) -> bool:
    """True for a `gs://` URI."""
    return str(uri).startswith(GCS_SCHEME)


def split_gcs(uri: str) -> tuple[str, str]:
    """`gs://bucket/a/b` → (`bucket`, `a/b`)."""
    if not is_gcs(uri):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, key = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri!r}")
    return bucket, key


@lru_cache
def gcs_client() -> gcs.Client:
    """A Cloud Storage client; honours STORAGE_EMULATOR_HOST for tests.

    Raises ServiceError when no Google credentials can be found.
    """
    import google.cloud.storage as gcs_lib

    from common.settings import get_settings

    # Unless switched off, the client (3.17, as locked) fetches each bucket's metadata on
    # a thread of its own, for OpenTelemetry span attributes this project does not export.
    # That request is outside our budget: it retries for up to 120 s when the bucket
    # cannot be reached, drawing its backoff from Python's global `random`, which seeded
    # Keras code draws its initializers' seeds from. The switch does not cover the
    # existence check a 404 starts for a bucket already in that cache, which only
    # get_bucket, lookup_bucket, create_bucket and Bucket.reload fill: do not call them.
    os.environ.setdefault(BUCKET_METADATA_SWITCH, "true")
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return gcs_lib.Client(project="emulator", credentials=AnonymousCredentials())
    with gcs_errors(GCS_SCHEME):
        return gcs_lib.Client(project=get_settings().gcp_project)


def gcs_call_options() -> dict[str, Any]:
    """`timeout` and `retry` for one google-cloud-storage call, from the settings' budget."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    from common.settings import get_settings

    budget = ServiceBudget.from_settings(get_settings())
    return {"timeout": budget.timeout, "retry": DEFAULT_RETRY.with_timeout(budget.retry_seconds)}


def _gcs_service(uri: str) -> str:
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    where = f"{GCS_SCHEME}{uri[len(GCS_SCHEME) :].split('/', 1)[0]}" if is_gcs(uri) else uri
    if emulator:
        return f"Cloud Storage emulator at {emulator} ({where})"
    return f"Cloud Storage ({where})"


_GCS_UNREACHABLE_FIX = (
    "check the network (or STORAGE_EMULATOR_HOST), or keep the data and models on local "
    "paths (the default); MEGA_SERVICE_RETRY_SECONDS sets how long to keep trying"
)
_GCS_DENIED_FIX = (
    "check the Google credentials (`gcloud auth application-default login` or "
    "GOOGLE_APPLICATION_CREDENTIALS) and that the account may use this bucket"
)


@contextlib.contextmanager
def gcs_errors(uri: str) -> Iterator[None]:
    """Turn the client's 'cannot reach' and 'not allowed' failures into a ServiceError.

    NotFound passes through (callers treat a missing object as a missing file).
    """
    import requests
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    service = _gcs_service(uri)
    try:
        yield
    except (api.Unauthorized, api.Forbidden) as exc:
        raise ServiceError(
            service, f"access denied ({exc.code})", _GCS_DENIED_FIX, denied=True
        ) from exc
    except (auth.DefaultCredentialsError, auth.RefreshError) as exc:
        raise ServiceError(
            service, f"no usable credentials: {exc}", _GCS_DENIED_FIX, denied=True
        ) from exc
    except (api.RetryError, auth.TransportError, requests.RequestException, OSError) as exc:
        if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
            raise  # a local file, not the service
        raise ServiceError(
            service, f"unreachable ({unreachable_reason(exc)})", _GCS_UNREACHABLE_FIX
        ) from exc
    except api.NotFound:
        raise
    except api.GoogleAPICallError as exc:
        raise ServiceError(
            service, f"request refused ({exc.code} {exc.message})", _GCS_DENIED_FIX, denied=True
        ) from exc


def blob(uri: str) -> Any:
    """The google-cloud-storage Blob of a `gs://` URI (no request is made)."""
    bucket, key = split_gcs(uri)
    return gcs_client().bucket(bucket).blob(key)


def probe(uri: str) -> None:
    """Check that a `gs://` prefix answers (one listing of at most one object).

    Raises ServiceError within the budget when it cannot be reached or refuses us.
    """
    bucket, key = split_gcs(uri)
    with gcs_errors(uri):
        list(gcs_client().list_blobs(bucket, prefix=key, max_results=1, **gcs_call_options()))


def gcs_blobs(prefix: str) -> list[Any]:
    """Every object under a `gs://` prefix (google-cloud-storage Blobs, with sizes)."""
    bucket, key = split_gcs(prefix)
    with gcs_errors(prefix):
        return list(gcs_client().list_blobs(bucket, prefix=key, **gcs_call_options()))
