"""The same weights through onnxruntime / OpenVINO: `predict --runtime`, `benchmark --runtime` and
`--compare-runtimes`, `uniformer export` (CLI). Skipped only without the `deploy` extra."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import uniformer
from uniformer.cli import main
from uniformer.tasks import open as open_checkpoint

for _module in ("onnx", "onnxscript", "onnxruntime", "openvino"):
    pytest.importorskip(_module, reason="the deploy extra is not installed: pip install 'uniformer[deploy]'")

TINY_ARGS = ["-o", "depths=[1,1,1,1]", "-o", "embed_dims=[16,32,64,128]", "-o", "head_dim=16", "-o", "num_classes=5"]


# Two OpenVINO models freed in the order they were made, then a signal caught by a Python handler: OpenVINO's CPU
# plugins leave the thread an unmapped signal stack unless `keep_signal_stack` gives the thread its own back
FREED_IN_ORDER = textwrap.dedent("""
    import gc, signal, sys
    import torch, uniformer
    from uniformer.deploy.runtimes import export_for_runtime
    model = uniformer.create_model("uniformer_small", depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128),
                                   head_dim=16, num_classes=5).eval()
    models = {p: export_for_runtime(model, "openvino", (3, 32, 32), f"{sys.argv[1]}/{p}", precision=p)
              for p in ("f32", "default")}
    for m in models.values():
        m(torch.randn(1, 3, 32, 32))
    del models, m
    gc.collect()
    caught = []
    signal.signal(signal.SIGUSR1, lambda *args: caught.append(args[0]))
    signal.raise_signal(signal.SIGUSR1)
    print("caught", caught)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signal stacks as Linux has them")
def test_openvino_models_freed_in_any_order_leave_signals_deliverable(tmp_path):
    run = subprocess.run([sys.executable, "-c", FREED_IN_ORDER, str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    assert f"caught [{int(signal.SIGUSR1)}]" in run.stdout


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_predict_with_a_runtime_matches_torch(tmp_path, runtime):
    torch.manual_seed(0)
    model = uniformer.create_model("uniformer_small", depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128),
                                   head_dim=16, num_classes=5)
    ckpt = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(image)
    common = dict(source=ckpt, model="uniformer_small", device="cpu", data={"input_size": 64, "short_side": 72},
                  model_options={"depths": [1, 1, 1, 1], "embed_dims": [16, 32, 64, 128], "head_dim": 16})
    eager = open_checkpoint(**common, dtype="float32").predict([str(image)])[0]["predictions"]
    predictor = open_checkpoint(**common, runtime=runtime)
    assert predictor.model.runtime == runtime
    exported = predictor.predict([str(image)])[0]["predictions"]
    assert [p["index"] for p in exported] == [p["index"] for p in eager]
    assert [p["prob"] for p in exported] == pytest.approx([p["prob"] for p in eager], abs=1e-5)


F32_ROWS = ["eager (reference)", "eager (SDPA)", "fuse", "optimize (inductor)", "optimize", "onnxruntime", "openvino"]
BF16_ROWS = ["optimize (inductor) bf16", "optimize bf16", "openvino default"]


def test_benchmark_compare_runtimes(tmp_path, capsys, monkeypatch):
    """On a CPU with bfloat16 units (simulated: emulated bf16 here) the bf16 rows join the float32 ones; every row
    says what it computed in, and all ran the same static batch."""
    monkeypatch.setenv("UNIFORMER_CPU_BF16", "1")
    results = tmp_path / "bench.jsonl"
    assert main(["benchmark", "uniformer_small", "--compare-runtimes", "--input", "3x64x64", "--batch-size", "2",
                 "--rounds", "2", "--iters", "1", "--warmup", "1", "--threads", "1", "--results", str(results),
                 *TINY_ARGS]) == 0
    rows = {r["runtime"]: r for r in map(json.loads, results.read_text().splitlines())}
    assert list(rows) == [*F32_ROWS, *BF16_ROWS]
    assert rows["optimize (inductor)"]["backend"] == rows["optimize (inductor) bf16"]["backend"] == "inductor"
    assert rows["optimize"]["backend"] in ("inductor", "openvino")
    assert rows["eager (reference)"]["speedup"] == 1
    assert all(r["throughput"] > 0 and r["prepare_s"] >= 0 and r["batch_size"] == 2 for r in rows.values())
    assert all(rows[label]["precision"] == "f32" and rows[label]["relative_error"] < 1e-4 for label in F32_ROWS)
    assert rows["optimize bf16"]["precision"] == rows["optimize (inductor) bf16"]["precision"] == "bf16"
    assert rows["openvino default"]["precision"] in ("f32", "bf16")  # OpenVINO's own choice on this CPU
    assert all(rows[label]["relative_error"] < 2e-2 for label in BF16_ROWS)
    assert "vs eager (reference)" in capsys.readouterr().out


def test_bfloat16_rows_on_request_and_one_static_shape(tmp_path):
    from uniformer.deploy.optimize import inference_variants

    model = uniformer.create_model("uniformer_small", depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128),
                                   head_dim=16, num_classes=5)
    assert list(inference_variants(model, (3, 32, 32), tmp_path)) == F32_ROWS
    variants = inference_variants(model, (3, 32, 32), tmp_path, batch_size=3, bfloat16=True)
    assert list(variants)[len(F32_ROWS):] == BF16_ROWS
    ov_model, precision = variants["openvino"]()
    assert precision == ov_model.precision == "f32"
    assert [tuple(p.get_shape()) for p in ov_model._compiled.inputs] == [(3, 3, 32, 32)]  # static: no dynamic batch
    with pytest.raises(SystemExit, match="without .*--dtype float16"):
        main(["benchmark", "uniformer_small", "--compare-runtimes", "--dtype", "float16", *TINY_ARGS])


def test_openvino_streams_split_the_batch_and_join_the_outputs(tmp_path):
    """streams=2: the graph is compiled for half the batch; each half runs on its own stream; the outputs are the
    one-stream graph's, in order."""
    from uniformer.deploy.export import relative_error
    from uniformer.deploy.runtimes import export_for_runtime

    model = uniformer.create_model("uniformer_small", depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128),
                                   head_dim=16, num_classes=5).eval()
    x = torch.randn(4, 3, 64, 64)  # (at 32x32 stage 3 has as many tokens as heads: see test_export's xfail)
    one = export_for_runtime(model, "openvino", (3, 64, 64), tmp_path / "one", dynamic_batch=False, batch_size=4)
    two = export_for_runtime(model, "openvino", (3, 64, 64), tmp_path / "two", dynamic_batch=False, batch_size=4,
                             threads=2, streams=2)
    assert [tuple(p.get_shape()) for p in two._compiled.inputs] == [(2, 3, 64, 64)]
    assert two._compiled.get_property("NUM_STREAMS") == 2 and "streams=2" in repr(two)
    torch.testing.assert_close(two(x), one(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert relative_error([two(x)], [model(x)]) < 1e-4  # as `export_model` checks an export
    with pytest.raises(ValueError, match="a batch of 3 does not split into 2 streams"):
        two(x[:3])
    with pytest.raises(ValueError, match="streams=2 splits a static batch .* not 3"):
        export_for_runtime(model, "openvino", (3, 64, 64), tmp_path / "odd", dynamic_batch=False, batch_size=3,
                           streams=2)
    with pytest.raises(ValueError, match="not a dynamic one"):
        export_for_runtime(model, "openvino", (3, 64, 64), tmp_path / "dynamic", batch_size=4, streams=2)
    with pytest.raises(ValueError, match="onnxruntime runs one stream"):
        export_for_runtime(model, "onnxruntime", (3, 64, 64), tmp_path / "ort", dynamic_batch=False,
                           batch_size=4, streams=2)


def test_compare_runtimes_has_stream_rows_where_the_batch_splits_over_the_threads(tmp_path):
    from uniformer.deploy.optimize import inference_variants

    model = uniformer.create_model("uniformer_small", depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128),
                                   head_dim=16, num_classes=5)
    torch.set_num_threads(2)  # (the fixture puts the tests' count back)
    assert list(inference_variants(model, (3, 32, 32), tmp_path, batch_size=3, bfloat16=True)) == \
        [*F32_ROWS, *BF16_ROWS]
    variants = inference_variants(model, (3, 32, 32), tmp_path, batch_size=4, bfloat16=True)
    assert list(variants) == [*F32_ROWS, "openvino, 2 streams", *BF16_ROWS, "openvino default, 2 streams"]
    ov_model, precision = variants["openvino, 2 streams"]()
    assert precision == "f32" and ov_model.streams == 2


def test_benchmark_one_runtime_and_its_limits(tmp_path, capsys):
    results = tmp_path / "bench.jsonl"
    args = ["benchmark", "uniformer_small", "--runtime", "openvino", "--fused", "--input", "3x64x64",
            "--batch-size", "2", "--iters", "1", "--warmup", "1", "--results", str(results), *TINY_ARGS]
    assert main(args) == 0
    record = json.loads(results.read_text().splitlines()[-1])
    assert record["runtime"] == "openvino" and record["fused"] and record["throughput"] > 0
    with pytest.raises(SystemExit, match="drop --channels-last, --dtype bfloat16"):
        main(args + ["--channels-last", "--dtype", "bfloat16"])


def test_export_command(tmp_path, capsys):
    out = tmp_path / "video.onnx"
    assert main(["export", "uniformer_video_small", str(out), "--input", "3x8x64x64", "--fused", "--dynamic-batch",
                 "--json", *TINY_ARGS]) == 0
    result = json.loads(capsys.readouterr().out)
    assert out.is_file() and result["relative_error"] <= 1e-4 and result["input"] == [3, 3, 8, 64, 64]
    with pytest.raises(SystemExit, match="video model takes CxTxHxW"):
        main(["export", "uniformer_video_small", str(out), "--input", "3x64x64", *TINY_ARGS])
