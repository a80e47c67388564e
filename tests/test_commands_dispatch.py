"""`uniformer train/eval/predict/demo` hand dense-task recipes to their task module."""
from pathlib import Path

import pytest

from uniformer.cli import demo, main, predict, train
from uniformer.cli import eval as eval_command
from uniformer.cli.common import DENSE_TASKS
from uniformer.engine.config import recipe_task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_recipe_task_follows_base_files():
    assert recipe_task(CONFIGS / "segmentation" / "fpn_uniformer_base_global_ade20k_80k.yaml") \
        == "segmentation"
    assert recipe_task(CONFIGS / "demo.yaml") == "classification"
    for task in DENSE_TASKS:
        recipes = sorted((CONFIGS / task).glob("*.yaml"))
        assert recipes and all(recipe_task(r) == task for r in recipes)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        recipe_task(CONFIGS / "nope.yaml")


class FakeTask:
    def __init__(self):
        self.calls = []

    def load_config(self, source, overrides=()):
        return {"source": str(source), "overrides": list(overrides)}

    def train(self, cfg, out_dir, resume=None):
        self.calls.append(("train", cfg, Path(out_dir), resume))
        return {"ok": True}

    def evaluate(self, cfg, checkpoint, split="val", out_dir=None):
        self.calls.append(("evaluate", cfg, checkpoint, split))
        return {"mIoU": 0.5}

    def predict(self, cfg, checkpoint, inputs, out_dir):
        self.calls.append(("predict", cfg, checkpoint, list(inputs), out_dir))
        return [{"file": inputs[0]}]

    def demo(self, out_dir, data_dir=None, overrides=()):
        self.calls.append(("demo", Path(out_dir)))
        return {"mIoU": 0.9}


def test_dense_commands_dispatch(monkeypatch, tmp_path, capsys):
    fake = FakeTask()
    for module in (train, eval_command, predict, demo):
        monkeypatch.setattr(module, "task_module", lambda name: fake)
    recipe = str(CONFIGS / "segmentation" / "fpn_uniformer_small_global_ade20k_80k.yaml")
    assert main(["train", recipe, "--out", str(tmp_path / "run"), "--set", "train.iters=3"]) == 0
    assert main(["eval", recipe, "--checkpoint", "ck.pt", "--split", "val"]) == 0
    assert main(["predict", "--task", "segmentation", "--checkpoint", "ck.pt", "a.png", "--out", "pics"]) == 0
    assert main(["demo", "--task", "segmentation"]) == 0
    kinds = [c[0] for c in fake.calls]
    assert kinds == ["train", "evaluate", "predict", "demo"]
    assert fake.calls[0][1]["overrides"] == ["train.iters=3"] and fake.calls[0][2] == tmp_path / "run"
    assert fake.calls[2][1] is None and fake.calls[2][3] == ["a.png"]
    assert fake.calls[3][1] == Path("demo_segmentation")
    assert '"mIoU": 0.5' in capsys.readouterr().out
