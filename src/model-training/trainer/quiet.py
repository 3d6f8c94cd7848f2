"""Keep the native runtimes' start-up noise off stderr: TensorFlow's and LiteRT's.

TensorFlow's native libraries log through absl before any Python code can
configure them: each of its shared libraries prints "All log messages before
absl::InitializeLog() ..." and INFO lines (oneDNN, missing CUDA drivers) whatever
`TF_CPP_MIN_LOG_LEVEL` says, and the CUDA probe logs `failed call to cuInit` as
an ERROR on every machine without a GPU. LiteRT prints "INFO: Created TensorFlow
Lite XNNPACK delegate for CPU." for each interpreter. None of it is actionable,
and it fills the CLI's output and the `.mega/logs` of `mega` runs.
`TF_CPP_MIN_LOG_LEVEL=0` turns the filtering off, for debugging.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# glog-style INFO/WARNING lines ("I0000 00:00:1796037457.505225    6393 port.cc:153] ..."),
# absl's pre-initialisation notice and LiteRT's delegate notice. ERROR and FATAL lines,
# and anything else, are always kept.
NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IW]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w./-]+:\d+\] "
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$)"
)


def _verbose() -> bool:
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"


@contextlib.contextmanager
def filtered_native_stderr() -> Iterator[None]:
    """Capture file descriptor 2 (native code writes there, not to `sys.stderr`) for
    the block, then write back every line that is not `NOISE`."""
    if _verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not NOISE.match(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def quiet_tensorflow_import() -> None:
    """Import `tensorflow` and `keras` without their start-up noise.

    Sets `TF_CPP_MIN_LOG_LEVEL=3` first unless the environment already sets it; at
    3 the later CUDA probe's `cuInit` error is silent too.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    with filtered_native_stderr():
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
