"""Suite-wide set-up: the source tree when the package is not installed, and one intra-op thread per test."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

try:
    import uniformer  # noqa: F401
except ImportError:  # package not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tests run tiny networks, which gain nothing from intra-op threads; on a shared machine (or beside a
    second pytest-xdist worker) the threads' waiting costs far more than the work (measured: 30x slower
    forward passes with 2 threads under load). A test that needs more threads sets them itself."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
