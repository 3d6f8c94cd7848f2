"""The processor's tests build their raw stores with raw_builder (no collector needed)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # raw_builder, shared by the test modules
