"""Two CPU processes under torchrun (gloo) train and evaluate exactly like one process with the same global batch.

One torchrun launch runs `train` and then `eval` (tests/engine/ddp_driver.py) to save a second start-up.
"""
from __future__ import annotations

import csv
import json

import pytest
import torch
from engine_helpers import run_cli, tiny_recipe, tiny_uniformer, write_recipe

from uniformer.engine import evaluate_checkpoint
from uniformer.tasks import build_task, load_recipe, task_from_checkpoint, train

TIMING = ("samples_per_second",)


def _rows(path):
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if k not in TIMING and v != ""} for row in csv.DictReader(f)]


def test_two_gloo_processes_match_one(tmp_path):
    # 7 validation samples: not divisible by 2, so padding or duplicates would change the metrics.
    recipe = tiny_recipe(data={"noise": 0.0, "fail_every": 5}, ema={"enabled": True, "decay": 0.7},
                         train={"epochs": 2, "amp": "none"})  # float32: the runs must agree to 1e-6
    two = write_recipe(tmp_path / "two.yaml", {**recipe, "train": {**recipe["train"], "batch_size": 2}})
    out = tmp_path / "eval_ddp.json"
    # and a UniFormer (BatchNorm) run, whose processes see different batch statistics
    bn = write_recipe(tmp_path / "bn.yaml", {**recipe, "model": tiny_uniformer(),
                                             "train": {**recipe["train"], "batch_size": 2}})
    proc = run_cli(["train", str(two), "--out", str(tmp_path / "ddp"), "--no-progress", "--device", "cpu", "--then",
                    "eval", str(two), "--checkpoint", str(tmp_path / "ddp" / "best.pt"), "--split", "test",
                    "--output", str(out), "--device", "cpu", "--then",
                    "train", str(bn), "--out", str(tmp_path / "bn"), "--no-progress", "--device", "cpu"],
                   cwd=tmp_path, torchrun=2, module="ddp_driver", timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    single = train(load_recipe(recipe), tmp_path / "one", show_progress=False)

    ddp_rows, one_rows = _rows(tmp_path / "ddp" / "metrics.csv"), _rows(tmp_path / "one" / "metrics.csv")
    assert len(ddp_rows) == len(one_rows) == 6
    for a, b in zip(ddp_rows, one_rows):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    ddp_summary = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp_summary["failures_total"] == single["failures_total"] == 6  # both ranks' corrupt samples count
    a = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    assert a["world_size"] == 2 and len(a["rng"]) == 2
    for key in b["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-6), key
        assert torch.allclose(a["ema"]["module"][key], b["ema"]["module"][key], atol=1e-6), key
    assert ddp_summary["val_top1"] == pytest.approx(single["val_top1"])
    # only rank 0 writes: one log, no rank-1 lines in it
    assert "[rank 1]" not in (tmp_path / "ddp" / "train.log").read_text()

    # multi-view evaluation of the same checkpoint, sharded over two processes, equals one process
    ddp_eval = json.loads(out.read_text())
    one_eval = evaluate_checkpoint(build_task(load_recipe(two)), tmp_path / "ddp" / "best.pt", split="test",
                                   output=tmp_path / "eval_one.json")
    assert ddp_eval["num_samples"] == one_eval["num_samples"] == 5 and ddp_eval["num_views"] == 2
    for key in ("top1", "top5", "mean_class_acc", "loss", "per_view_top1"):
        assert ddp_eval[key] == pytest.approx(one_eval[key], abs=1e-6), key

    # BatchNorm statistics: the validation the two processes ran together equals a single-process
    # evaluation of the checkpoint rank 0 saved (every process evaluates rank 0's statistics)
    bn_rows = _rows(tmp_path / "bn" / "metrics.csv")
    for weights, prefix in ((False, "val"), (True, "val_ema")):
        ckpt = tmp_path / "bn" / "last.pt"
        alone = evaluate_checkpoint(task_from_checkpoint(ckpt), ckpt, split="val", use_ema=weights,
                                    output=tmp_path / f"bn_{prefix}.json")
        assert bn_rows[-1][f"{prefix}_loss"] == pytest.approx(alone["loss"], abs=1e-5), prefix
        assert bn_rows[-1][f"{prefix}_top1"] == pytest.approx(alone["top1"]), prefix


def test_a_batch_too_small_on_one_process_is_skipped_by_all(tmp_path):
    # Two training items cannot be used: with one sample per process, the process that draws one has an empty
    # batch while the other has a full one. Both must skip it (or the gradient all-reduce waits forever), and
    # gradients must still be synchronised when the skipped micro-batch is the last of an accumulated step.
    from uniformer.engine.loaders import EpochSampler

    recipe = tiny_recipe(train={"epochs": 1, "batch_size": 1})
    order = EpochSampler(12, recipe["seed"], 0, 0, 1).indices  # the epoch's permutation; process r takes r::2
    last_micro_rank0, first_micro_rank1 = order[2 * 1 + 0], order[2 * 2 + 1]  # process sample k = step*accum+micro
    recipe["data"] = {**recipe["data"], "builder": "engine_helpers:build_clips_with_unusable",
                      "unusable": [last_micro_rank0, first_micro_rank1]}
    args = []
    for accum in (1, 2):
        path = write_recipe(tmp_path / f"accum{accum}.yaml", {**recipe, "train": {**recipe["train"],
                                                                                    "accum_steps": accum}})
        args += ["--then"] * bool(args) + ["train", str(path), "--out", str(tmp_path / f"accum{accum}"),
                                           "--no-progress", "--device", "cpu"]
    proc = run_cli(args, cwd=tmp_path, torchrun=2, module="ddp_driver", timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for accum in (1, 2):
        out = tmp_path / f"accum{accum}"
        summary = json.loads((out / "metrics.json").read_text())
        assert summary["skipped_batches"] == 4, accum  # two micro-batches, skipped by both processes
        assert summary["steps"] == 6 // accum
        # the processes evaluated their halves of the split with their own weights: equal to rank 0's alone
        # only if every step's gradients were synchronised
        alone = evaluate_checkpoint(build_task(load_recipe(out / "config.yaml")), out / "last.pt", split="val",
                                    output=tmp_path / f"alone{accum}.json")
        assert summary["val_loss"] == pytest.approx(alone["loss"], abs=1e-6), accum


def test_a_non_finite_loss_on_one_process_stops_every_process_with_the_reason(tmp_path):
    from uniformer.engine.loaders import EpochSampler

    recipe = tiny_recipe(train={"epochs": 1, "batch_size": 1})
    order = EpochSampler(12, recipe["seed"], 0, 0, 1).indices  # process r's sample of step k: order[2 * k + r]
    recipe["data"] = {**recipe["data"], "nan_items": [order[2 * 1 + 0]]}  # process 0, second step
    path = write_recipe(tmp_path / "nan.yaml", recipe)
    proc = run_cli(["train", str(path), "--out", str(tmp_path / "nan"), "--no-progress", "--device", "cpu"],
                   cwd=tmp_path, torchrun=2, timeout=180)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "the loss is not finite (nan;" in output and "at step 2" in output  # process 0: its own loss
    assert "the loss is not finite (on another process) at step 2" in output  # process 1 stops too, saying why


def test_ddp_gradients_keep_their_parameters_layout():
    # UniFormer's depthwise convolutions (C x 1 x k x k weights) are fed channels-last maps, and their weight gradients
    # come with the channels-last stride of the size-1 axis; DDP compares strides literally, warned "Grad strides do
    # not match bucket view strides" and copied through a strided view on every step. The runner aligns them.
    import warnings

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from uniformer.engine.distributed import align_grad_strides
    from uniformer.models.uniformer import uniformer_small

    def mismatched(align: bool) -> tuple[list[str], list[str]]:
        torch.manual_seed(0)
        model = uniformer_small(num_classes=3, **tiny_uniformer("uniformer_small")["kwargs"])
        if align:
            align_grad_strides(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            DistributedDataParallel(model)(torch.randn(2, 3, 64, 64)).square().mean().backward()
        return ([n for n, p in model.named_parameters() if p.grad.stride() != p.stride()],
                [str(w.message) for w in caught if "Grad strides do not match" in str(w.message)])

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert mismatched(align=False)[0]  # the case exists: some gradients differ from their parameters
        assert mismatched(align=True) == ([], [])
    finally:
        dist.destroy_process_group()


def test_a_new_process_group_never_takes_a_dead_groups_generation():
    # torchrun keeps one store across worker groups: what a killed group wrote (its generation, its offers) is
    # still there when the restarted group starts, and its non-zero ranks may read it before the new rank 0 runs.
    import threading
    import time
    from datetime import timedelta

    import torch.distributed as dist

    from uniformer.engine.distributed import agree_generation

    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30))

    def group(world: int, first_rank_0_delay: float) -> list[int]:
        results: dict[int, int] = {}

        def member(rank: int) -> None:
            store = dist.TCPStore("127.0.0.1", server.port, is_master=False, timeout=timedelta(seconds=30))
            if rank == 0:
                time.sleep(first_rank_0_delay)  # the others read the previous group's number first
            results[rank] = agree_generation(store, rank, world, timedelta(seconds=30), poll=0.1)

        threads = [threading.Thread(target=member, args=(rank,)) for rank in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        return [results[rank] for rank in range(world)]

    assert group(2, 0.0) == [1, 1]
    server.add("uniformer/generation", 1)  # a group whose rank 0 died right after drawing its number
    server.set("uniformer/2/offer/1", "stale")
    assert group(3, 0.5) == [3, 3, 3]
    assert group(2, 0.3) == [4, 4]


def test_sync_bn_converts_the_named_parts_only_and_names_unknown_ones():
    from torch import nn

    from uniformer.engine.config import ConfigError
    from uniformer.engine.distributed import sync_batchnorm

    def model():
        net = nn.Module()
        net.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        net.decode_head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        return net

    def kinds(net):
        return {name: type(child[1]).__name__ for name, child in net.named_children()}

    assert kinds(sync_batchnorm(model(), ["decode_head"], convert=True)) == {
        "backbone": "BatchNorm2d", "decode_head": "SyncBatchNorm"}  # the original: SyncBN heads, plain backbone
    assert set(kinds(sync_batchnorm(model(), True, convert=True)).values()) == {"SyncBatchNorm"}
    assert set(kinds(sync_batchnorm(model(), ["decode_head"], convert=False)).values()) == {"BatchNorm2d"}
    with pytest.raises(ConfigError, match=r"train.sync_bn names \['head'\].*its parts: backbone, decode_head"):
        sync_batchnorm(model(), ["head"], convert=False)  # checked even where nothing is converted


@pytest.mark.parametrize("recipe,parts", [
    ("segmentation/upernet_uniformer_small_global_ade20k_160k.yaml", ["decode_head", "auxiliary_head"]),
    ("segmentation/fpn_uniformer_base_global_ade20k_80k.yaml", ["decode_head"]),
    ("pose/topdown_uniformer_base_384x288_coco.yaml", ["keypoint_head"]),
    ("detection/cascade_mask_rcnn_uniformer_base_h14_3x_ms_coco.yaml", ["roi_heads"]),
])
def test_dense_recipes_synchronise_the_heads_the_original_built_with_syncbn(recipe, parts):
    from uniformer.tasks import CONFIGS

    assert load_recipe(CONFIGS / recipe)["train"]["sync_bn"] == parts
    assert load_recipe(CONFIGS / "detection/mask_rcnn_uniformer_small_h14_1x_coco.yaml")["train"]["sync_bn"] is None
    hybrid = load_recipe(CONFIGS / "segmentation/fpn_uniformer_small_hybrid_ade20k_80k.yaml")["model"]["backbone"]
    assert (hybrid["stage3"], hybrid["window_size"]) == ("hybrid", 14)  # fpn_seg/exp/fpn_hybrid_small: window 14
