"""The command line: models, info (against SPEC.md's measured numbers), benchmark, convert."""
import argparse
import json

import pytest
import torch

import uniformer
from uniformer.cli import main

TINY = ["-o", "depths=[1,1,1,1]", "-o", "embed_dims=[16,32,64,128]", "-o", "head_dim=16", "-o", "num_classes=7"]


# Parameters and GFLOPs measured from the original code (SPEC.md); `info` must be within 1%.
SPEC_ROWS = [
    ("uniformer_small", "3x224x224", 21_545_256, 3.63),
    ("uniformer_small_plus", "3x224x224", 24_032_552, 4.20),
    ("uniformer_small_plus_dim64", "3x224x224", 24_032_552, 4.20),
    ("uniformer_base", "3x224x224", 49_776_552, 8.25),
    ("uniformer_base_ls", "3x224x224", 49_796_520, 8.25),
    ("uniformer_video_small", "3x8x224x224", 21_400_400, 17.6),
    ("uniformer_video_small", "3x16x224x224", 21_400_400, 41.7),
    ("uniformer_video_base", "3x16x224x224", 49_813_200, 96.6),
]


@pytest.mark.parametrize("name,shape,params,gflops", SPEC_ROWS)
def test_info_reproduces_spec(name, shape, params, gflops, capsys):
    assert main(["info", name, "--input", shape, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == params
    assert abs(out["gflops"] - gflops) / gflops < 0.01, out


def test_models_lists_every_variant(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(uniformer.list_models())
    assert rows["uniformer_small"]["params"] == 21_545_256
    assert "in1k" in rows["uniformer_small"]["weights"]
    assert rows["uniformer_video_base"]["kind"] == "video"


def test_info_recognises_a_checkpoint(tmp_path, capsys):
    sd = uniformer.create_model("uniformer_small_plus").state_dict()
    path = tmp_path / "splus.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    assert main(["info", "--checkpoint", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["checkpoint"]
    assert info["wrapper"] == "model"
    assert set(info["candidates"]) == {"uniformer_small_plus", "uniformer_small_plus_dim64"}
    assert "head_dim" in info["looks_like"]


def test_benchmark_appends_results(tmp_path, capsys):
    results = tmp_path / "bench.jsonl"
    args = ["benchmark", "uniformer_small", "--input", "3x64x64", "--batch-size", "2", "--iters", "2",
            "--warmup", "1", "--fused", "--compare", "--results", str(results), *TINY]
    assert main(args) == 0
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["run"] for r in lines] == ["reference", "requested", "comparison"]
    assert lines[0]["reference_attention"] and not lines[1]["reference_attention"] and lines[1]["fused"]
    assert all(r["throughput"] > 0 and r["latency_ms"] > 0 for r in lines[:2])
    assert lines[2]["logits_relative_error"] < 1e-4
    assert "speed-up" in capsys.readouterr().out


def test_benchmark_training_step(tmp_path):
    results = tmp_path / "bench.jsonl"
    args = ["benchmark", "uniformer_video_small", "--input", "3x4x64x64", "--batch-size", "2", "--iters", "1",
            "--warmup", "1", "--train", "--results", str(results), *TINY]
    assert main(args) == 0
    record = json.loads(results.read_text().splitlines()[-1])
    assert record["mode"] == "train" and record["throughput"] > 0


def test_convert_to_own_safetensors(tmp_path, capsys):
    torch.manual_seed(0)
    model = uniformer.create_model("uniformer_small", num_classes=5, depths=(1, 1, 1, 1)).eval()
    src = tmp_path / "orig.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(model="uniformer_small", lr=1e-3)}, src)
    dst = tmp_path / "converted.safetensors"
    assert main(["convert", str(src), str(dst), "-o", "num_classes=5", "-o", "depths=[1,1,1,1]"]) == 0
    from safetensors import safe_open

    with safe_open(str(dst), "pt") as f:
        meta = f.metadata()
    assert meta["model"] == "uniformer_small" and json.loads(meta["config"])["num_classes"] == 5
    again = uniformer.create_model("uniformer_small", num_classes=5, depths=(1, 1, 1, 1), checkpoint_path=dst).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_bad_input_shape_is_a_clear_error(capsys):
    assert main(["info", "uniformer_small", "--input", "224x224x"]) == 2
    assert "--input" in capsys.readouterr().err


def test_models_pretrained_lists_every_tag_with_its_recipe(capsys):
    assert main(["models", "--pretrained"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("uniformer_video_base.sthv2_32 "))
    assert "something-something-v2" in line and "32x3x1" in line and "71.2" in line
    assert line.split()[5:8] == ["224", "BGR", "0.45/0.225"]  # short side, channel order, mean/std
    assert line.endswith("Sense-X/uniformer_video/uniformer_base_sthv2_32_prek600.pth")  # confirmed: no mark
    line = next(ln for ln in out.splitlines() if ln.startswith("uniformer_video_small.k400_16x8 "))
    assert "16 x 8" in line and "16x1x4" in line and "80.8" in line and "unconfirmed" not in line
    assert line.split()[6:9] == ["224", "RGB", "0.45/0.225"]
    line = next(ln for ln in out.splitlines() if ln.startswith("uniformer_xxs.in1k_160 "))
    assert line.split()[4:7] == ["182", "RGB", "imagenet"]  # light models: crop_pct 0.875 too
    assert "unconfirmed" in next(ln for ln in out.splitlines() if ln.startswith("uniformer_video_small.k400_8x8 "))
    assert main(["models", "--pretrained", "--json"]) == 0
    rows = {r["tag"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(uniformer.list_models(pretrained=True))
    assert rows["uniformer_video_small.k600_16x8"]["confirmed"] and rows["uniformer_small.in1k"]["confirmed"]
    assert not rows["uniformer_base_ls.in1k"]["confirmed"]
    sth = rows["uniformer_video_small.sthv2_16"]
    assert (sth["sampling"], sth["short_side"], sth["channel_order"]) == ("uniform", 224, "BGR")
    assert sth["mean"] == [0.45] * 3 and sth["std"] == [0.225] * 3
