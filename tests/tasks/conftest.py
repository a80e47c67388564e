"""Task tests: make `src/` (when the package is not installed) and the engine test helpers importable."""
from __future__ import annotations

import sys
from pathlib import Path

HELPERS = Path(__file__).resolve().parents[1] / "engine"
if str(HELPERS) not in sys.path:
    sys.path.insert(0, str(HELPERS))
try:
    import uniformer.tasks  # noqa: F401
except ImportError:  # package not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
