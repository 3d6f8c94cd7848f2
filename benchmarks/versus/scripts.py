"""The project's own benchmark scripts (benchmarks/*.py) as modules, for their helpers.

The peer comparisons reuse the scripts' load generator, servers and workloads rather
than keeping copies. Loaded from their files: `benchmarks/` is not a package, and
its `serve.py` and `process.py` share their names with modules of this folder.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parent.parent


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py as the module `bench_NAME`, loaded once per process.

    Raises FileNotFoundError when there is no such script.
    """
    key = f"bench_{name}"
    if key not in sys.modules:
        path = BENCHMARKS / f"{name}.py"
        if not path.is_file():
            raise FileNotFoundError(path)
        spec = importlib.util.spec_from_file_location(key, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # before running it: dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[key]
