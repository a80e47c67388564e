"""Engine tests: make `src/` (when the package is not installed) and the helpers importable."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
try:
    import uniformer.engine  # noqa: F401
except ImportError:  # package not installed: use the source tree
    sys.path.insert(0, str(HERE.parents[1] / "src"))
