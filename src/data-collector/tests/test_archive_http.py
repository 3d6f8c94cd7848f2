"""An archive over HTTP follows the fetcher's status and retry policy.

Both HTTP paths of the collector (one request per item, one stream per archive)
retry the same answers, wait what `Retry-After` asks, and end a spent retry
budget with one line that names the URL and what happened.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from fault_server import FaultServer, Route, png
from support import free_port, write_params

from collector.base import SourceError
from collector.collect import CollectOptions, collect_source
from collector.fetch import FetchOptions
from collector.sources import ArchiveSource

pytestmark = pytest.mark.integration

FAST = CollectOptions(fetch=FetchOptions(concurrency=2, timeout=5, retries=1, backoff=0.01))
MEMBERS = {"set/a/1.png": png(41), "set/b/2.png": png(42)}


def archive_bytes(suffix: str) -> bytes:
    buffer = io.BytesIO()
    if suffix == ".zip":
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in MEMBERS.items():
                archive.writestr(name, data)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name, data in MEMBERS.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])  # streamed, and spooled first
def test_archive_download_honours_retry_after(
    http_server: FaultServer, tmp_path: Path, suffix: str
) -> None:
    # Regression: the archive path waited its own short backoff and ignored Retry-After.
    route = Route(body=archive_bytes(suffix), fail_times=1, fail_status=429, retry_after="1")
    url = http_server.add(f"/busy{suffix}", route)
    result = collect_source(ArchiveSource(name="archive", uri=url), str(tmp_path / "raw"), FAST)
    assert result.written == 2
    first, second = http_server.hit_times[f"/busy{suffix}"]
    assert second - first >= 0.95, "Retry-After: 1 was not honoured"


def test_archive_retries_a_server_error_like_the_fetcher(
    http_server: FaultServer, tmp_path: Path
) -> None:
    url = http_server.add("/flaky.tar.gz", Route(body=archive_bytes(".tar.gz"), fail_times=1))
    result = collect_source(ArchiveSource(name="archive", uri=url), str(tmp_path / "raw"), FAST)
    assert result.written == 2 and http_server.hits["/flaky.tar.gz"] == 2


def test_archive_download_that_never_succeeds_names_the_url_and_the_cause(
    http_server: FaultServer, tmp_path: Path
) -> None:
    # Regression: a spent retry budget escaped as a raw httpx or HTTP-status exception.
    down = http_server.add("/down.tar.gz", Route(fail_times=99, fail_status=503))
    closed = f"http://127.0.0.1:{free_port()}/gone.zip"
    missing = http_server.url + "/missing.tar.gz"
    expected = {
        down: r"HTTP 503 Service Unavailable \(after 2 attempts\)",
        closed: r"connection error: .* \(after 2 attempts\)",
        missing: r"HTTP 404 Not Found \(a client error; not retried\)",
    }
    for url, cause in expected.items():
        message = rf"^collect\.uri: cannot download archive {re.escape(url)}: {cause}; "
        with pytest.raises(SourceError, match=message):
            collect_source(ArchiveSource(name="archive", uri=url), str(tmp_path / "raw"), FAST)
    assert http_server.hits["/down.tar.gz"] == 2  # retried once
    assert http_server.hits["/missing.tar.gz"] == 1  # a client error is final


def test_cli_reports_an_unreachable_archive_in_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/data.tar.gz"
    collect = {"source": "archive", "uri": url, "retries": 1, "backoff": 0}
    write_params(tmp_path, {"collect": collect})
    result = subprocess.run(
        [sys.executable, "-m", "collector", "--no-progress", "--out", "raw"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("collect: error: collect.uri: cannot download")
