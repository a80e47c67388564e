"""Conformance tests against the original OpenMMLab pipelines' reference outputs.

The reference files live outside the repository, in `../shared/conformance/dense` next to the
checkout (the environment variable UNIFORMER_DENSE_REFERENCE names another folder); without them
these tests are skipped, saying where they looked.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _reference_dir() -> Path:
    return Path(os.environ.get("UNIFORMER_DENSE_REFERENCE") or REPO.parent / "shared" / "conformance" / "dense")


@pytest.fixture(scope="session")
def dense_reference() -> Path:
    folder = _reference_dir()
    if not folder.is_dir():
        pytest.skip(f"dense reference outputs not found: {folder} is absent (set UNIFORMER_DENSE_REFERENCE to their "
                    "folder)")
    return folder


@pytest.fixture(scope="session")
def load_case(dense_reference):
    """`load_case(name)` → the reference case `<name>.pt` (tensors only, read without executing code)."""

    def load(name: str) -> dict:
        path = dense_reference / f"{name}.pt"
        if not path.is_file():
            pytest.fail(f"{path}: reference case missing from {dense_reference}")
        return torch.load(path, weights_only=True)

    return load
