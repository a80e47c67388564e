"""`uniformer serve`: a local web page (Gradio) to drop an image or a video on a model and see what it says.

Classification shows the top five classes with their names and the frames the model saw; detection,
segmentation and pose show the picture their `predict` draws (boxes and masks, the label map, the
skeletons) beside its JSON record. Example inputs come from the built-in demo data, so the page works
offline with a checkpoint written by `uniformer demo`. Gradio is an optional dependency:
`pip install "uniformer[web]"`.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from uniformer.tasks import TASKS

__all__ = ["DEFAULT_MAX_FILE_MB", "build_app", "example_inputs", "launch", "require_gradio"]

DEFAULT_MAX_FILE_MB = 50
DENSE_TASKS = tuple(t for t in TASKS if t != "classification")
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
    folder = Path(os.path.expanduser(folder or EXAMPLES_CACHE)) / (task if task in DENSE_TASKS else
                                                                  "video" if is_video else "image")
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

    if task == "pose":
        root, images = write_pose_coco(folder, n_train=1, n_val=3), "val"
    elif task == "detection":
        root, images = write_shapes_coco(folder, n_train=1, n_val=3), "val"
    else:  # segmentation, and images for an image classifier
        root, images = write_shapes_segmentation(folder, n_train=1, n_val=3), "images/val"
    return [str(p) for p in sorted((Path(root) / images).iterdir())[:3]]


def _test_view(cfg: Mapping, is_video: bool) -> str:
    if not is_video:
        return f"{cfg['input_size']}² crop"
    sampling = f"stride {cfg['stride']}" if cfg["sampling"] == "dense" else "one per segment"
    return (f"{cfg['num_frames']} frames ({sampling}), short side {cfg['short_side']}, "
            f"{cfg.get('test_crops', 1)} crop(s) × {cfg.get('test_clips', 1)} clip(s)")


def _check_size(path: str, max_file_mb: float) -> None:
    import gradio as gr

    size = os.path.getsize(path) / 2**20
    if size > max_file_mb:
        raise gr.Error(f"{Path(path).name} is {size:.1f} MB; this server accepts files up to {max_file_mb:g} MB "
                       "(uniformer serve --max-file-mb)")


def _classification_page(gr, predictor, title: str, examples: list[str], out_dir: Path, max_file_mb: float):
    from uniformer.tasks.classification.predict import predict_files

    def classify(path: str | None):
        if not path:
            raise gr.Error("drop a file first")
        _check_size(path, max_file_mb)
        (result,) = predict_files(predictor, [path], topk=5, figures=out_dir)
        if result["error"]:
            raise gr.Error(f"{Path(path).name}: {result['error']}")
        return {p["label"]: p["prob"] for p in result["predictions"]}, result["figure"], result

    kind = "video" if predictor.is_video else "image"
    with gr.Blocks(title="UniFormer") as app:
        gr.Markdown(f"# UniFormer {kind} classification\n{title}")
        with gr.Row():
            with gr.Column():
                source = gr.Video(label="video", sources=["upload"]) if predictor.is_video else \
                    gr.Image(label="image", type="filepath", sources=["upload"])
                run = gr.Button("Classify", variant="primary")
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[source])
            with gr.Column():
                top5 = gr.Label(label="top-5 classes", num_top_classes=5)
                figure = gr.Image(label="what the model saw", type="filepath")
                with gr.Accordion("predict --json", open=False):
                    record = gr.JSON(label="predict --json")
        run.click(classify, inputs=[source], outputs=[top5, figure, record], api_name="predict")
    return app


def _dense_page(gr, task: str, recipe, checkpoint: str, title: str, examples: list[str], out_dir: Path,
                max_file_mb: float):
    import importlib

    module = importlib.import_module(f"uniformer.tasks.{task}")
    what = {"detection": "boxes and masks", "segmentation": "label map", "pose": "skeletons"}[task]

    def analyse(path: str | None):
        if not path:
            raise gr.Error("drop an image first")
        _check_size(path, max_file_mb)
        results = module.predict(recipe, checkpoint, [path], out_dir)
        if not results or results[0].get("error"):
            raise gr.Error(f"{Path(path).name}: {results[0]['error'] if results else 'not a readable image'}")
        return results[0]["picture"], results[0]

    with gr.Blocks(title="UniFormer") as app:
        gr.Markdown(f"# UniFormer {task}\n{title}")
        with gr.Row():
            with gr.Column():
                source = gr.Image(label="image", type="filepath", sources=["upload"])
                run = gr.Button("Run", variant="primary")
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[source])
            with gr.Column():
                picture = gr.Image(label=what, type="filepath")
                with gr.Accordion("predict --json", open=False):
                    record = gr.JSON(label="predict --json")
        run.click(analyse, inputs=[source], outputs=[picture, record], api_name="predict")
    return app


def build_app(model: str | None = None, checkpoint: str | os.PathLike | None = None, task: str | None = None,
              *, config: str | os.PathLike | Mapping | None = None, labels: str | None = None,
              device: str | None = None, data_overrides: Mapping | None = None, model_options: Mapping | None = None,
              max_file_mb: float = DEFAULT_MAX_FILE_MB, examples: bool = True,
              examples_dir: str | os.PathLike | None = None):
    """The Gradio app for `model` (released weights `NAME.TAG`) or `checkpoint`; `task` picks the page
    (default: the task a run checkpoint records, else classification).

    Classification accepts what `uniformer predict` accepts (`labels`, `data_overrides`, `model_options`);
    the dense tasks take their recipe from `config` or the checkpoint. Its API endpoint `/predict`
    returns what the page shows, the last output being the record `uniformer predict --json` prints.
    """
    gr = require_gradio()
    if task is None:
        from uniformer.engine.checkpoint import read_checkpoint

        recorded = read_checkpoint(checkpoint) if checkpoint else None
        task = recorded["task"] if recorded is not None else "classification"
    out_dir = Path(tempfile.mkdtemp(prefix="uniformer_serve_"))
    if task in DENSE_TASKS:
        if not checkpoint:
            raise ValueError(f"--task {task} needs --checkpoint (e.g. final.pt of `uniformer demo --task {task}`)")
        given = {"--model": model, "--labels": labels, "--device": device, "--data": data_overrides,
                 "-o": model_options}
        if any(given.values()):
            raise ValueError(f"{', '.join(k for k, v in given.items() if v)}: classification options; "
                             f"--task {task} takes its model and classes from --config or the checkpoint")
        module_config = None
        if config is not None:
            import importlib

            module_config = importlib.import_module(f"uniformer.tasks.{task}").load_config(config)
        title = f"checkpoint `{Path(checkpoint).name}`"
        files = example_inputs(task, False, examples_dir) if examples else []
        return _dense_page(gr, task, module_config, str(checkpoint), title, files, out_dir, max_file_mb)
    if task != "classification":
        raise ValueError(f"--task {task!r}: expected classification or one of {', '.join(DENSE_TASKS)}")
    if config is not None:
        raise ValueError("--config is the recipe of a dense task (--task detection|segmentation|pose); a "
                         "classifier's test view comes from its tag or checkpoint (adjust it with --data)")
    from uniformer.tasks.classification.predict import load_predictor

    predictor = load_predictor(checkpoint, model, labels, device, data_overrides, model_options=model_options)
    source = f"`{model}`" if model and not checkpoint else f"checkpoint `{Path(checkpoint).name}`"
    dataset = f", {predictor.dataset} classes" if predictor.dataset else f", {len(predictor.classes)} classes"
    recipe = _test_view(predictor.data_cfg, predictor.is_video)
    title = f"{source}{dataset}; test view: {recipe}."
    files = example_inputs("classification", predictor.is_video, examples_dir) if examples else []
    return _classification_page(gr, predictor, title, files, out_dir, max_file_mb)


def launch(app, host: str = "127.0.0.1", port: int = 7860, max_file_mb: float = DEFAULT_MAX_FILE_MB,
           block: bool = True) -> str:
    """Serve `app` on host:port (localhost by default); returns its URL (at once when not `block`).

    Uploads up to twice `max_file_mb` reach the page, which refuses those over `max_file_mb` with a message
    naming the file, its size and the limit; Gradio rejects larger ones before they are stored."""
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
                           max_file_size=int(2 * max_file_mb * 2**20), show_error=True)
    return url
