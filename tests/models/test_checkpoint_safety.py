"""Loading never executes pickled code; unreadable and missing files give clear errors."""
from __future__ import annotations

import argparse
import functools
import pathlib
import random

import numpy as np
import pytest
import torch

import uniformer
from uniformer import CheckpointError
from uniformer.models import read_checkpoint

TINY = dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 64, 128), head_dim=16, num_classes=10)


class Harmless:
    """An ordinary class instance: unpickling it means importing this module and building the object."""

    def __init__(self):
        self.value = 3


class CreatesMarker:
    """Unpickling this object creates (opens for writing) the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def state_dict(make_tiny):
    return make_tiny().state_dict()


def test_code_in_a_checkpoint_is_never_executed(state_dict, tmp_path):
    marker = tmp_path / "executed.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model": state_dict, "epoch": 3, "payload": CreatesMarker(marker)}, path)
    assert not marker.exists()

    with pytest.raises(CheckpointError) as info:
        uniformer.create_model("uniformer_small", **TINY, checkpoint_path=path)
    assert not marker.exists()
    msg = str(info.value)
    assert str(path) in msg
    assert "refusing to load" in msg and "never executes pickled code" in msg
    assert "io.open" in msg  # names what the file would need

    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    with pytest.raises(CheckpointError):
        uniformer.load_checkpoint(uniformer.create_model("uniformer_small", **TINY), path)
    assert not marker.exists()

    # Control: an unrestricted unpickler does run the payload, so the checks above mean something.
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("payload, name", [
    (functools.partial(print, "hi"), "functools.partial"),
    (Harmless(), "Harmless"),
    (pathlib.PurePosixPath("/etc/passwd"), "pathlib.PurePosixPath"),
])
def test_arbitrary_objects_are_refused(state_dict, tmp_path, payload, name):
    path = tmp_path / "other.pth"
    torch.save({"model": state_dict, "extra": payload}, path)
    with pytest.raises(CheckpointError, match="refusing to load") as info:
        uniformer.create_model("uniformer_small", **TINY, checkpoint_path=path)
    assert str(path) in str(info.value)
    assert name in str(info.value)


def test_training_metadata_types_are_allowed(make_tiny, state_dict, tmp_path):
    """What the original training scripts store beside the weights: Namespace args, numpy scalars."""
    path = tmp_path / "ckpt.pth"
    torch.save({"model": state_dict, "args": argparse.Namespace(model="uniformer_small", lr=1e-3),
                "max_accuracy": np.float64(82.9), "epoch": np.int64(299), "scaler": {"scale": 65536.0}}, path)
    model = uniformer.create_model("uniformer_small", **TINY, checkpoint_path=path)
    for k, v in state_dict.items():
        assert torch.equal(model.state_dict()[k], v)


def _garbage(kind: str, tmp_path, valid: bytes) -> bytes:
    rng = random.Random(0)
    return {
        "truncated": valid[: len(valid) // 2],
        "text": b"this is not a checkpoint\n" * 20,
        "random": bytes(rng.randrange(256) for _ in range(2048)),
        "json": b'{"model": {"weight": [1, 2, 3]}}',
        "empty": b"",
    }[kind]


@pytest.mark.parametrize("kind", ["truncated", "text", "random", "json", "empty"])
def test_corrupt_file_is_a_checkpoint_error_naming_it(state_dict, tmp_path, kind):
    good = tmp_path / "good.pth"
    torch.save({"model": state_dict}, good)
    path = tmp_path / f"{kind}.pth"
    path.write_bytes(_garbage(kind, tmp_path, good.read_bytes()))
    with pytest.raises(CheckpointError) as info:
        uniformer.create_model("uniformer_small", **TINY, checkpoint_path=path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["truncated", "text", "random", "json"])
def test_corrupt_file_is_not_reported_as_a_refused_object(state_dict, tmp_path, kind):
    """A damaged file holds no forbidden object; telling the user to re-save it "in a trusted session"
    would send them the wrong way."""
    good = tmp_path / "good.pth"
    torch.save({"model": state_dict}, good)
    path = tmp_path / f"{kind}.pth"
    path.write_bytes(_garbage(kind, tmp_path, good.read_bytes()))
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert "Python object" not in str(info.value)


def test_corrupt_safetensors_is_a_checkpoint_error_naming_it(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file" * 10)
    with pytest.raises(CheckpointError) as info:
        uniformer.create_model("uniformer_small", **TINY, checkpoint_path=path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "uniformer_small_in1k.pth"
    with pytest.raises(FileNotFoundError) as info:
        uniformer.create_model("uniformer_small", **TINY, checkpoint_path=path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="uniformer_small_in1k.pth"):
        read_checkpoint(str(path))
