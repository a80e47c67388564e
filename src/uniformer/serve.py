"""`uniformer serve`: a local web page (Gradio, `pip install "uniformer[web]"`) to drop an image or a video on a
model and see what it says. Example inputs come from the built-in demo data, so the page works offline with a
checkpoint written by `uniformer demo`.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from uniformer.tasks import TASKS

__all__ = ["DEFAULT_MAX_FILE_MB", "build_app", "demo_checkpoint", "example_inputs", "launch", "require_gradio"]

DEFAULT_MAX_FILE_MB = 50
EXAMPLES_CACHE = Path("~/.cache/uniformer/serve_examples")


def require_gradio():
    """The gradio module, or an error that says how to install it."""
    try:
        import gradio
    except ImportError:
        raise ImportError("uniformer serve needs Gradio: pip install \"uniformer[web]\"") from None
    return gradio


def example_inputs(task: str, is_video: bool, folder: str | os.PathLike | None = None) -> list[str]:
    """A few files from the built-in demo data: one clip per class of the video demo (rendered as
    `uniformer demo` renders them), or images of the dense demos' synthetic datasets."""
    kind = task if task != "classification" else "video" if is_video else "image"
    folder = Path(os.path.expanduser(folder or EXAMPLES_CACHE)) / kind
    if task == "classification" and is_video:
        import numpy as np

        from uniformer.data.demo import CLASSES, render_clip
        from uniformer.data.video_io import write_video

        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for label, name in enumerate(CLASSES):
            path = folder / f"{name}.mp4"
            if not path.is_file():
                clip = render_clip(label, np.random.default_rng(label), num_frames=16, size=64)
                write_video(path, clip, fps=15)
            files.append(str(path))
        return files
    from uniformer.tasks.dense.synthetic import write_pose_coco, write_shapes_coco, write_shapes_segmentation

    # segmentation's images also serve an image classifier
    write, images = {"pose": (write_pose_coco, "val"), "detection": (write_shapes_coco, "val")}.get(
        task, (write_shapes_segmentation, "images/val"))
    root = write(folder, n_train=1, n_val=3)
    return [str(p) for p in sorted((Path(root) / images).iterdir())[:3]]


def _test_view(cfg: Mapping, is_video: bool) -> str:
    if not is_video:
        return f"{cfg['input_size']}² crop"
    sampling = f"stride {cfg['stride']}" if cfg["sampling"] == "dense" else "one per segment"
    return (f"{cfg['num_frames']} frames ({sampling}), short side {cfg['short_side']}, "
            f"{cfg.get('test_crops', 1)} crop(s) × {cfg.get('test_clips', 1)} clip(s)")


def _check_upload(path: str, max_file_mb: float, image: bool) -> None:
    """Refuse a file over the limit, or one that is not an image when the page takes images, with a message."""
    import gradio as gr

    size = os.path.getsize(path) / 2**20
    if size > max_file_mb:
        raise gr.Error(f"{Path(path).name} is {size:.1f} MB; this server accepts files up to {max_file_mb:g} MB "
                       "(uniformer serve --max-file-mb)")
    if image:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise gr.Error(f"{Path(path).name} is not an image this page can read ({type(e).__name__}); "
                           "drop a JPEG, PNG, BMP, WebP or TIFF file") from None


def _page(gr, opened, title: str, examples: list[str], out_dir: Path, max_file_mb: float, is_video: bool):
    """One page for every task: the upload, the picture `Task.predict` draws (classification: also the top five
    classes) and its record, as `uniformer predict --json` prints it."""
    task = opened.task.name

    def analyse(path: str | None):
        if not path:
            raise gr.Error("drop a file first")
        _check_upload(path, max_file_mb, image=not is_video)
        if task == "classification":
            (result,) = opened.predict([path], out_dir, topk=5)
            if result["error"]:
                raise gr.Error(f"{Path(path).name}: {result['error']}")
            return {p["label"]: p["prob"] for p in result["predictions"]}, result["figure"], result
        results = opened.predict([path], out_dir)
        if not results or results[0].get("error"):
            raise gr.Error(f"{Path(path).name}: {results[0]['error'] if results else 'not a readable image'}")
        return results[0]["picture"], results[0]

    what = {"classification": "what the model saw", "detection": "boxes and masks", "segmentation": "label map",
            "pose": "skeletons"}[task]
    heading = f"{'video' if is_video else 'image'} classification" if task == "classification" else task
    with gr.Blocks(title="UniFormer") as app:
        gr.Markdown(f"# UniFormer {heading}\n{title}")
        with gr.Row():
            with gr.Column():
                source = gr.Video(label="video", sources=["upload"]) if is_video else \
                    gr.File(label="image", file_types=["image"], type="filepath")
                run = gr.Button("Classify" if task == "classification" else "Run", variant="primary")
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[source])
            with gr.Column():
                outputs = [gr.Label(label="top-5 classes", num_top_classes=5)] if task == "classification" else []
                outputs.append(gr.Image(label=what, type="filepath"))
                with gr.Accordion("predict --json", open=False):
                    outputs.append(gr.JSON(label="predict --json"))
        run.click(analyse, inputs=[source], outputs=outputs, api_name="predict")
    return app


def demo_checkpoint() -> Path | None:
    """The newest `best.pt` (else `last.pt`) a `uniformer demo` run left in its recipe's out_dir, if any."""
    from uniformer.tasks import demo_recipe_path, load_recipe

    found = []
    for task in TASKS:
        folder = Path(load_recipe(demo_recipe_path(task))["out_dir"])
        found += [p for p in (folder / "best.pt", folder / "last.pt") if p.is_file()][:1]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def build_app(model: str | None = None, checkpoint: str | os.PathLike | None = None, task: str | None = None,
              *, config: str | os.PathLike | Mapping | None = None, labels: str | None = None,
              device: str | None = None, data_overrides: Mapping | None = None, model_options: Mapping | None = None,
              max_file_mb: float = DEFAULT_MAX_FILE_MB, examples: bool = True,
              examples_dir: str | os.PathLike | None = None, use_ema: bool = False, dtype: str | None = None):
    """The Gradio app for `model` (released weights `NAME.TAG`) or `checkpoint`, opened by `uniformer.tasks.open`
    with what `uniformer predict` takes (`dtype`: a classifier's precision, as `predict --dtype`; default auto).
    Its API endpoint `/predict` returns what the page shows."""
    from uniformer.tasks import open as open_checkpoint

    gr = require_gradio()
    if task is not None and task not in TASKS:
        raise ValueError(f"--task {task!r}: expected one of {', '.join(TASKS)}")
    if task == "classification" and config is not None:
        raise ValueError("--config is the recipe of a dense task (--task detection|segmentation|pose); a "
                         "classifier's test view comes from its tag or checkpoint (adjust it with --data)")
    opened = open_checkpoint(checkpoint, model=model, recipe=config, task=task, model_options=model_options,
                             labels=labels, data=data_overrides, use_ema=use_ema, device=device, dtype=dtype)
    out_dir = Path(tempfile.mkdtemp(prefix="uniformer_serve_"))
    name, is_video = opened.task.name, False
    if name == "classification":
        view = opened.task.data_view(opened.model)
        is_video = view["format"] == "video_list"
        dataset = opened.task.meta.get("dataset")
        classes = f", {dataset} classes" if dataset else f", {len(opened.task.classes)} classes"
        title = f"{opened.source}{classes}; test view: {_test_view(view, is_video)}."
    else:
        title = opened.source
    files = example_inputs(name, is_video, examples_dir) if examples else []
    return _page(gr, opened, title, files, out_dir, max_file_mb, is_video)


def launch(app, host: str = "127.0.0.1", port: int = 7860, max_file_mb: float = DEFAULT_MAX_FILE_MB,
           block: bool = True) -> str:
    """Serve `app` on host:port (localhost by default); returns its URL (at once when not `block`). Gradio refuses
    an upload over `max_file_mb` before it is stored; `_check_upload` any other file (an example)."""
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
                           max_file_size=int(max_file_mb * 2**20), show_error=True)
    return url
