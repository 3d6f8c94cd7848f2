"""Import TensorFlow without its C++ start-up noise on stderr.

TensorFlow's native libraries log through absl before any Python code can
configure them: each of its shared libraries prints "All log messages before
absl::InitializeLog() ..." and INFO lines (oneDNN, missing CUDA drivers) whatever
`TF_CPP_MIN_LOG_LEVEL` says, and the CUDA probe logs `failed call to cuInit` as
an ERROR on every machine without a GPU. None of it is actionable, and it fills
the CLI's output and the `.mega/logs` of `mega` runs.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# glog-style INFO/WARNING lines ("I0000 00:00:1796037457.505225    6393 port.cc:153] ...")
# and absl's pre-initialisation notice. ERROR and FATAL lines are never dropped.
NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IW]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w./-]+:\d+\] )"
)


def quiet_tensorflow_import() -> None:
    """Import `tensorflow` and `keras` with stderr captured; replay what is not noise.

    Sets `TF_CPP_MIN_LOG_LEVEL=3` first unless the environment already sets it
    (`TF_CPP_MIN_LOG_LEVEL=0` brings every C++ log line back for debugging, and
    nothing is filtered then); at 3 the later CUDA probe's `cuInit` error is silent too.
    """
    if os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3") == "0" or "tensorflow" in sys.modules:
        import tensorflow  # every log line asked for, or already imported

        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        # The native libraries write to file descriptor 2 itself, not to sys.stderr.
        os.dup2(capture.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not NOISE.match(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
