"""`uniformer serve`: the Gradio app on a free localhost port, called through gradio_client with an image
and a video; its answers must equal `uniformer predict --json` on the same files."""
from __future__ import annotations

import json
import multiprocessing
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import uniformer
from uniformer.cli import main

gradio = pytest.importorskip("gradio", reason="the web page needs the optional extra: pip install -e '.[web]'")
gradio_client = pytest.importorskip("gradio_client", reason="pip install -e '.[web]'")

TINY_KWARGS = {"depths": [1, 1, 1, 1], "embed_dims": [16, 32, 64, 128], "head_dim": 16}
TINY = [arg for k, v in TINY_KWARGS.items() for arg in ("-o", f"{k}={json.dumps(v)}")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _original_file(tmp_path, name: str, classes: int) -> str:
    torch.manual_seed(0)
    model = uniformer.create_model(name, num_classes=classes, **TINY_KWARGS)
    path = tmp_path / f"{name}.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def _serve_forever(port: int, app_kwargs: dict) -> None:
    from uniformer.serve import DEFAULT_MAX_FILE_MB, build_app, launch

    launch(build_app(**app_kwargs), "127.0.0.1", port, app_kwargs.get("max_file_mb", DEFAULT_MAX_FILE_MB))


@contextmanager
def _served(**app_kwargs):
    """A client of `build_app(**app_kwargs)` served from a child process on a free localhost port (in this
    process, a Gradio server and a later `torch.compile` together break pytest's output capture)."""
    port = _free_port()
    server = multiprocessing.get_context("spawn").Process(target=_serve_forever, args=(port, app_kwargs),
                                                          daemon=True)
    server.start()
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # not up yet
                if not server.is_alive() or time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield client
    finally:
        server.terminate()
        server.join(10)


def _predict_json(capsys, args) -> dict:
    capsys.readouterr()  # what the server printed
    assert main(["predict", *args, "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    return result


def _same_predictions(served: dict, cli: dict) -> None:
    assert [p["label"] for p in served["predictions"]] == [p["label"] for p in cli["predictions"]]
    assert [p["index"] for p in served["predictions"]] == [p["index"] for p in cli["predictions"]]
    np.testing.assert_allclose([p["prob"] for p in served["predictions"]], [p["prob"] for p in cli["predictions"]],
                               rtol=1e-5, atol=1e-7)


def test_video_page_answers_like_predict(tmp_path, capsys):
    from uniformer.data.video_io import write_video

    ckpt = _original_file(tmp_path, "uniformer_video_small", 400)
    video = tmp_path / "clip.mp4"
    write_video(video, np.random.default_rng(0).integers(0, 255, (24, 48, 64, 3), dtype=np.uint8), fps=10)
    # float32 on both sides: in bfloat16 (auto on CPUs with bfloat16 units) the served process and this one
    # split the products over different thread counts and round differently (2e-3 relative, AMD EPYC AVX512-BF16)
    with _served(model="uniformer_video_small.k400_16x8", checkpoint=ckpt, model_options=TINY_KWARGS,
                 examples_dir=tmp_path / "examples", dtype="float32") as client:
        label, figure, record = client.predict(gradio_client.handle_file(str(video)), api_name="/predict")
    cli = _predict_json(capsys, ["--model", "uniformer_video_small.k400_16x8", "--checkpoint", ckpt, *TINY,
                                 "--dtype", "float32", str(video)])
    _same_predictions(record, cli)
    assert record["views"] == cli["views"] == 4
    assert label["label"] == cli["predictions"][0]["label"]  # a Kinetics-400 name
    assert [c["label"] for c in label["confidences"]] == [p["label"] for p in cli["predictions"]]
    assert Image.open(figure).size[0] > 300
    # the examples come from the built-in demo data: one clip per class
    assert sorted(p.name for p in (tmp_path / "examples" / "video").iterdir()) == [
        "move_left_to_right.mp4", "move_right_to_left.mp4", "rotate_clockwise.mp4", "rotate_counterclockwise.mp4"]


def test_image_page_answers_like_predict_and_refuses_big_files(tmp_path, capsys, monkeypatch):
    stored = tmp_path / "uploads"  # where the served page (a child process) keeps uploads
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(stored))
    ckpt = _original_file(tmp_path, "uniformer_small", 1000)
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(image)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(big)
    limit_mb = 0.2  # photo.png is ~15 kB, big.png ~270 kB
    with _served(model="uniformer_small.in1k", checkpoint=ckpt, model_options=TINY_KWARGS, max_file_mb=limit_mb,
                 examples=False, dtype="float32") as client:
        label, _, record = client.predict(gradio_client.handle_file(str(image)), api_name="/predict")
        # over the limit: refused before it is stored, saying the limit
        with pytest.raises(Exception, match=r"big\.png exceeds the maximum file size of 209715 bytes"):
            client.predict(gradio_client.handle_file(str(big)), api_name="/predict")
        huge = tmp_path / "huge.bin.png"  # over twice the limit: refused by Gradio before it is stored
        huge.write_bytes(b"\0" * int(0.5 * 2**20))
        with pytest.raises(Exception, match="(?i)size"):
            client.predict(gradio_client.handle_file(str(huge)), api_name="/predict")
        notes = tmp_path / "notes.png"  # not an image: a clear answer, not Gradio's internal error
        notes.write_text("these are my notes, not a picture")
        with pytest.raises(Exception, match=r"notes\.png is not an image this page can read"):
            client.predict(gradio_client.handle_file(str(notes)), api_name="/predict")
    kept = {p.name for p in stored.rglob("*") if p.is_file()}
    assert {"photo.png", "notes.png"} <= kept  # uploads are stored there ...
    assert not kept & {"big.png", "huge.bin.png"}  # ... none over the limit
    cli = _predict_json(capsys, ["--model", "uniformer_small.in1k", "--checkpoint", ckpt, *TINY, "--dtype", "float32",
                                 str(image)])
    _same_predictions(record, cli)
    assert label["label"] == cli["predictions"][0]["label"]
    assert not label["label"].startswith("class_")  # ImageNet names


def test_serve_binds_to_localhost_by_default():
    from uniformer.cli import build_parser

    args = build_parser().parse_args(["serve", "--checkpoint", "x.pt"])
    assert (args.host, args.port, args.task) == ("127.0.0.1", 7860, None)  # the task: from the checkpoint


@pytest.mark.parametrize("flags, expected", [(["--dtype", "bfloat16"], "bfloat16"), ([], None)])
def test_serve_dtype_reaches_the_model_it_opens(monkeypatch, flags, expected):
    """`uniformer serve --dtype` is what the page's classifier is opened with (`predict --dtype`'s precision);
    without it, None: `open` resolves that as auto and accepts it for every task."""
    import uniformer.tasks

    opened_with = []

    def opening(*args, dtype, **kwargs):
        opened_with.append(dtype)
        raise RuntimeError("opened")  # the test ends here: no weights, no server

    monkeypatch.setattr(uniformer.tasks, "open", opening)
    with pytest.raises(RuntimeError, match="opened"):
        main(["serve", "--checkpoint", "clf.pth", "--task", "classification", *flags])
    assert opened_with == [expected]


def test_segmentation_page_draws_the_label_map_like_predict(tmp_path, capsys):
    import yaml

    from uniformer.tasks import build_task, load_recipe
    from uniformer.tasks.dense.synthetic import write_shapes_segmentation

    root = write_shapes_segmentation(tmp_path / "shapes", n_train=1, n_val=2, size=(64, 64))
    recipe = {"model": {"backbone": {"name": "uniformer_small", "drop_path_rate": 0.0,
                                     "kwargs": {"depths": [1, 1, 2, 1], "embed_dims": [16, 32, 64, 128],
                                                "head_dim": 16}},
                        "head": "fpn", "channels": 16, "neck_channels": 16, "dropout": 0.0},
              "data": {"format": "folder", "root": str(root), "classes": "classes.txt",
                       "num_classes": None, "img_scale": [64, 64], "crop_size": [64, 64]}}
    config = tmp_path / "seg.yaml"
    config.write_text(yaml.safe_dump({"task": "segmentation", **recipe}))
    torch.manual_seed(0)
    model = build_task(load_recipe(config)).build_model()
    ckpt = tmp_path / "seg.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    image = sorted((root / "images" / "val").iterdir())[0]
    with _served(checkpoint=str(ckpt), task="segmentation", config=str(config),
                 examples_dir=tmp_path / "examples") as client:
        picture, record = client.predict(gradio_client.handle_file(str(image)), api_name="/predict")
    capsys.readouterr()
    assert main(["predict", "--task", "segmentation", "--config", str(config), "--checkpoint", str(ckpt), "--json",
                 "--out", str(tmp_path / "cli"), str(image)]) == 0
    (cli,) = json.loads(capsys.readouterr().out)
    assert record["classes"] == cli["classes"]  # names, pixel counts
    assert np.array_equal(np.asarray(Image.open(picture)), np.asarray(Image.open(cli["picture"])))


def test_options_of_another_task_are_refused():
    from uniformer.serve import build_app

    with pytest.raises(ValueError, match="--labels.*classification options"):
        build_app(checkpoint="seg.pth", task="segmentation", labels="names.txt")
    with pytest.raises(ValueError, match="--config is the recipe of a dense task"):
        build_app(checkpoint="clf.pth", task="classification", config="recipe.yaml")
    with pytest.raises(ValueError, match="--dtype: classification options; a segmentation checkpoint"):
        build_app(checkpoint="seg.pth", task="segmentation", dtype="float32")


def test_serve_without_arguments_serves_the_latest_demo_checkpoint(tmp_path, monkeypatch, capsys):
    from uniformer.serve import demo_checkpoint

    monkeypatch.chdir(tmp_path)
    assert demo_checkpoint() is None
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "best.pt" in err and "last.pt" in err and "final.pt" not in err
    (tmp_path / "runs" / "demo_pose").mkdir(parents=True)
    (tmp_path / "runs" / "demo_pose" / "last.pt").write_bytes(b"")
    assert demo_checkpoint() == Path("runs/demo_pose/last.pt")
    time.sleep(0.01)
    (tmp_path / "runs" / "demo").mkdir()
    (tmp_path / "runs" / "demo" / "best.pt").write_bytes(b"")
    (tmp_path / "runs" / "demo" / "last.pt").write_bytes(b"")
    assert demo_checkpoint() == Path("runs/demo/best.pt")  # the newest demo run, its best checkpoint
