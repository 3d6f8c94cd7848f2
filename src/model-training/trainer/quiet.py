"""Keep the native runtimes' harmless start-up noise off stderr, and nothing else.

TensorFlow's native libraries log through absl before any Python code can
configure them: each of its shared libraries prints "All log messages before
absl::InitializeLog() ..." and INFO lines (oneDNN, missing CUDA drivers) whatever
`TF_CPP_MIN_LOG_LEVEL` says, and the first use of a device logs `failed call to
cuInit` as an ERROR on every machine without a GPU. LiteRT prints "INFO: Created
TensorFlow Lite XNNPACK delegate for CPU." for each interpreter. None of it is
actionable, and it fills the CLI's output and the `.mega/logs` of `mega` runs.

`TF_CPP_MIN_LOG_LEVEL` stays at `TF_LOG_LEVEL` (2: TensorFlow drops its own INFO
and WARNING lines, and still prints ERROR and FATAL ones, such as an allocator
running out of memory); the trainer's container and `mega`'s stage runner set
the same level. The known harmless lines are then dropped by pattern (`NOISE`);
every other line, ERROR and FATAL ones included, is passed on as it arrives.
`TF_CPP_MIN_LOG_LEVEL=0` turns the filtering off, for debugging.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator

TF_LOG_LEVEL = "2"

# absl/glog line prefix: "E0000 00:00:1796037457.505225    6393 cuda_platform.cc:52] ".
_GLOG = r"\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w./-]+:\d+\] "
# ERROR lines TensorFlow prints on healthy machines: the CUDA probe without a GPU, and
# the duplicate registration of CUDA plugins and the XLA placer when TF loads twice.
_HARMLESS_ERRORS = (
    r"failed call to cuInit",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
)
NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    rf"|[IW]{_GLOG}"
    rf"|E{_GLOG}({'|'.join(_HARMLESS_ERRORS)})"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"
    # the full-integer quantizer's settings, printed by every int8 conversion
    r"|fully_quantize: \d+, inference_type: \d+, input_inference_type: )"
)

# The filter runs in its own small process, reading the pipe that fd 2 becomes: if the
# trainer dies at once (absl FATAL abort, illegal instruction, the OOM killer) the
# filter still reads what was written up to that moment, to the end of the pipe, and
# passes it on. It has its own session, so Ctrl-C in the terminal does not stop it.
_FILTER = """\
import re, sys
noise = re.compile(sys.argv[1].encode())
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if not noise.match(line):
        out.write(line)
        out.flush()
"""

_active = 0  # filters in force in this process; an inner one has nothing to add
_process_wide = contextlib.ExitStack()
atexit.register(_process_wide.close)


def _verbose() -> bool:
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"


@contextlib.contextmanager
def filtered_native_stderr() -> Iterator[None]:
    """Route file descriptor 2 (native code writes there, not to `sys.stderr`) through
    a filter process for the block: each line that is not `NOISE` reaches the real
    stderr as soon as it is complete, and no line is lost if this process dies."""
    global _active
    if _verbose() or _active:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read, write = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _FILTER, NOISE.pattern],
            stdin=read,
            stdout=saved,
            stderr=saved,
            start_new_session=True,
        )
    finally:
        os.close(read)
    os.dup2(write, 2)
    os.close(write)
    _active += 1
    try:
        yield
    finally:
        _active -= 1
        sys.stderr.flush()
        os.dup2(saved, 2)  # the filter sees the end of its input once no one else holds it
        os.close(saved)
        with contextlib.suppress(subprocess.TimeoutExpired):
            # A child process that inherited fd 2 may keep the pipe open; then the
            # filter ends with it, and this process does not wait.
            child.wait(timeout=5)


def quiet_tensorflow_import() -> None:
    """Import `tensorflow` and `keras`, filtering native stderr for the rest of the process.

    Sets `TF_CPP_MIN_LOG_LEVEL` to `TF_LOG_LEVEL` unless the environment already
    sets it. The filter stays on after the import because the CUDA probe logs
    `failed call to cuInit` at the first use of a device, not at import.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    if not _active:
        _process_wide.enter_context(filtered_native_stderr())
    import keras  # noqa: F401
    import tensorflow  # noqa: F401
