"""Task tests: the engine test helpers (drivers for killed and multi-process runs) are importable."""
from __future__ import annotations

import sys
from pathlib import Path

HELPERS = Path(__file__).resolve().parents[1] / "engine"
if str(HELPERS) not in sys.path:
    sys.path.insert(0, str(HELPERS))
