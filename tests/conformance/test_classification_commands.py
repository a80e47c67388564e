"""`uniformer predict --model TAG` and `uniformer eval RECIPE` feed the network exactly the original's inputs.

The reference cases (``test_classification_reference.py``) check the data pipeline; here the commands
themselves run on a case's video, and the tensor that reaches the network (captured at `view_logits`,
where prediction and evaluation hand each batch of views to the model) is compared with the original's.
"""
from __future__ import annotations

import pytest
import torch
from test_classification_reference import CASES, ENTRIES, _check_inputs, _released_cases

import uniformer
from uniformer.cli import main
from uniformer.tasks import CONFIGS
from uniformer.tasks.classification import model as classification_model

TINY_KWARGS = {"depths": [1, 1, 1, 1], "embed_dims": [16, 32, 64, 128], "head_dim": 16}
TINY = [x for k, v in TINY_KWARGS.items() for x in ("-o", f"{k}={v}".replace(" ", ""))]


@pytest.fixture
def network_inputs(monkeypatch):
    """Every view batch the commands give the network (B x V x C x T x H x W)."""
    seen = []
    original = classification_model.view_logits

    def recording(model, x, *args, **kwargs):
        seen.append(x.detach().cpu().clone())
        return original(model, x, *args, **kwargs)

    monkeypatch.setattr(classification_model, "view_logits", recording)
    import uniformer.tasks.classification.task as task_module

    monkeypatch.setattr(task_module, "view_logits", recording)
    return seen


def _original_file(path, num_classes: int):
    """A tiny video UniFormer saved the way the original video training script saves its checkpoints."""
    torch.manual_seed(0)
    model = uniformer.create_model("uniformer_video_small", num_classes=num_classes, **TINY_KWARGS)
    torch.save({"model_state": model.state_dict(), "epoch": 1}, path)
    return path


def _first_case(tag: str) -> dict:
    """The first reference case whose original settings are `tag`'s test protocol, read from its file."""
    if not ENTRIES:
        pytest.skip(f"no classification cases: {CASES / 'index.json'} is absent")
    entries = _released_cases(tag)
    assert entries, f"no case in {CASES} has the test settings of {tag}"
    return torch.load(CASES / entries[0]["case"], weights_only=True)


@pytest.mark.parametrize("tag,num_classes", [("uniformer_video_small.k400_16x4", 400),
                                             ("uniformer_video_small.sthv2_16", 174)])
def test_predict_with_a_released_tag_feeds_the_original_inputs(tag, num_classes, network_inputs, tmp_path):
    case = _first_case(tag)
    checkpoint = _original_file(tmp_path / "original.pth", num_classes)
    assert main(["predict", "--model", tag, "--checkpoint", str(checkpoint), *TINY, "--dtype", "float32",
                 str(CASES / case["file"])]) == 0
    (x,) = network_inputs
    _check_inputs(x[0], case)


def test_eval_of_a_kinetics_recipe_feeds_the_original_inputs(network_inputs, tmp_path):
    case = _first_case("uniformer_video_small.k400_16x4")
    checkpoint = _original_file(tmp_path / "original.pth", 400)
    (tmp_path / "val.txt").write_text(f"{case['file']} 3\n")
    recipe = CONFIGS / "classification" / "uniformer_s16x4_k400.yaml"
    sets = [f"data.root={CASES}", f"data.val_list={tmp_path / 'val.txt'}", f"data.test_list={tmp_path / 'val.txt'}",
            "model.checkpoint=null", "model.kwargs={" + ", ".join(f"{k}: {v}" for k, v in TINY_KWARGS.items()) + "}"]
    assert main(["eval", str(recipe), "--checkpoint", str(checkpoint), "--dtype", "float32", "--device", "cpu",
                 "--num-workers", "0", "--output", str(tmp_path / "eval.json"),
                 *[x for s in sets for x in ("--set", s)]]) == 0
    (x,) = network_inputs
    _check_inputs(x[0], case)
