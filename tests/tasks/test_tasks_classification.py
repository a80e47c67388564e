"""The classification task: model building from a recipe, losses (tuple outputs, soft targets), weight loading."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from engine_helpers import tiny_uniformer

from uniformer.tasks.classification import (
    build_model,
    classification_loss,
    load_weights,
    merge_outputs,
    model_input_ndim,
    view_logits,
)


def test_loss_averages_over_tuple_outputs_and_accepts_soft_targets():
    torch.manual_seed(0)
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    y = torch.tensor([0, 1, 2, 3])
    expected = (F.cross_entropy(a, y, label_smoothing=0.1) + F.cross_entropy(b, y, label_smoothing=0.1)) / 2
    assert classification_loss((a, b), y, 0.1) == pytest.approx(expected.item(), rel=1e-6)
    soft = torch.softmax(torch.randn(4, 5), -1)
    manual = -(soft * F.log_softmax(a, -1)).sum(-1).mean()
    assert classification_loss(a, soft) == pytest.approx(manual.item(), rel=1e-6)
    assert torch.allclose(merge_outputs((a, b)), (a + b) / 2)


def test_build_model_from_a_recipe():
    model = build_model({**tiny_uniformer(), "drop_path_rate": 0.2, "grad_checkpointing": True}, 7)
    assert model.head.out_features == 7 and model.grad_checkpointing and model_input_ndim(model) == 5
    assert max(m.drop_prob for m in model.modules() if hasattr(m, "drop_prob")) == pytest.approx(0.2)
    frozen = build_model({**tiny_uniformer(), "drop_path_rate": 0.2, "grad_checkpointing": True}, 7,
                         for_training=False)
    assert not frozen.grad_checkpointing
    toy = build_model({"name": "engine_helpers:toy_video_net", "kwargs": {"width": 5}}, 3)
    assert toy.conv.out_channels == 5 and toy.head.out_features == 3
    with pytest.raises(ValueError, match="unknown model"):
        build_model({"name": "uniformer_tiny_nonexistent"}, 3)
    with pytest.raises(ValueError, match="model.name = 'nowhere:thing'"):
        build_model({"name": "nowhere:thing"}, 3)
    with pytest.raises(FileNotFoundError, match="model.checkpoint"):
        build_model({**tiny_uniformer(), "checkpoint": "/no/such/file.pth"}, 3)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = build_model(tiny_uniformer(), 3)
    ckpt = build_model({**tiny_uniformer(), "grad_checkpointing": True}, 3)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 4, 32, 32)
    for m in (plain, ckpt):
        m.eval()
        m(x).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_image_checkpoint_initialises_a_video_model_by_inflation(tmp_path):
    image = build_model(tiny_uniformer("uniformer_small"), 1000)
    path = tmp_path / "uniformer_small_in1k.pth"
    torch.save({"model": image.state_dict()}, path)
    video = build_model({**tiny_uniformer(), "checkpoint": str(path)}, 4)  # new 4-class head
    w2d, w3d = image.state_dict()["blocks1.0.conv1.weight"], video.state_dict()["blocks1.0.conv1.weight"]
    assert w3d.ndim == w2d.ndim + 1
    assert torch.allclose(w3d.sum(2), w2d, atol=1e-6)
    assert video.head.out_features == 4
    # for evaluation / prediction a checkpoint must bring its own classifier
    with pytest.raises(ValueError, match="classifies 1000 classes, but the model/dataset has 4"):
        load_weights(build_model(tiny_uniformer("uniformer_small"), 4), path)
    same = build_model(tiny_uniformer("uniformer_small"), 1000, for_training=False)
    assert load_weights(same, path) == {}
    assert torch.equal(same.head.weight, image.head.weight)


def test_light_model_returns_two_logit_sets_in_training_and_one_in_eval():
    kw = {"depths": [1, 1, 2, 1], "embed_dims": [16, 32, 64, 128], "head_dim": 16}
    model = build_model({"name": "uniformer_video_xxs", "kwargs": kw}, 3).train()
    x, y = torch.randn(2, 3, 4, 64, 64), torch.tensor([0, 2])
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2
    loss = classification_loss(out, y)
    assert loss.item() == pytest.approx(((F.cross_entropy(out[0], y) + F.cross_entropy(out[1], y)) / 2).item(),
                                       rel=1e-5)
    loss.backward()
    model.eval()
    with torch.no_grad():
        assert view_logits(model, x.unsqueeze(1).repeat(1, 3, 1, 1, 1, 1), 5).shape == (2, 3, 3)


def test_load_weights_refuses_a_mismatched_training_checkpoint(tmp_path):
    from uniformer.engine import atomic_save
    from uniformer.engine.checkpoint import CHECKPOINT_FORMAT

    model = build_model(tiny_uniformer(), 3)
    path = atomic_save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "ema": None}, tmp_path / "a.pt")
    other = build_model({**tiny_uniformer(), "kwargs": {**tiny_uniformer()["kwargs"], "depths": [1, 1, 2, 1]}}, 3)
    with pytest.raises(ValueError, match="does not fit the model"):
        load_weights(other, path)
    with pytest.raises(ValueError, match="no EMA"):
        load_weights(model, path, use_ema=True)


def test_data_seed_drives_the_augmentation_for_any_number_of_workers(tmp_path):
    # the runner's first training batch of real videos: the order comes from the recipe's seed, the
    # augmentation (frame positions, scale jitter, crop) from data.seed and each sample's place in the epoch
    from engine_helpers import write_moving_videos

    from uniformer.engine.distributed import DistInfo
    from uniformer.engine.runner import Runner
    from uniformer.tasks import build_task, load_recipe

    data = write_moving_videos(tmp_path / "videos", 4, 2)

    def first_batch(data_seed: int, workers: int) -> dict:
        cfg = load_recipe({"task": "classification", "model": tiny_uniformer(), "data": {**data, "seed": data_seed},
                           "train": {"batch_size": 4, "num_workers": workers, "epochs": 1}})
        runner = Runner(build_task(cfg), tmp_path / "run", show_progress=False)
        runner.setup(DistInfo())
        return next(runner.train_batches(0))

    a = first_batch(0, 0)
    assert torch.equal(a["input"], first_batch(0, 0)["input"])
    assert torch.equal(a["input"], first_batch(0, 1)["input"])
    b = first_batch(1, 0)
    assert torch.equal(a["index"], b["index"]) and not torch.equal(a["input"], b["input"])
    assert torch.equal(b["input"], first_batch(1, 1)["input"])
