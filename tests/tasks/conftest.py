"""Task tests: make `src/` (when the package is not installed) and the engine test helpers importable."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HELPERS = Path(__file__).resolve().parents[1] / "engine"
if str(HELPERS) not in sys.path:
    sys.path.insert(0, str(HELPERS))
try:
    import uniformer.tasks  # noqa: F401
except ImportError:  # package not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the tiny task models run faster without spinning on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
