"""What the dense-prediction tasks (detection, segmentation, pose) share: the `DenseTask` base, weight loading
of the original toolboxes' files, image reading, drawing, COCO helpers, synthetic demo data."""


def complexity_report(tasks=("detection", "segmentation", "pose")) -> dict[str, list[dict]]:
    """Parameters and GFLOPs (multiply-adds) of the composed task models at the paper's input sizes:
    Mask R-CNN at 800×1280, Semantic FPN / UperNet at 512×2048, top-down pose at 256×192 / 384×288 / 448×320.
    Each task's `complexity()` takes other variants and sizes."""
    import importlib

    return {task: importlib.import_module(f"uniformer.tasks.{task}").complexity() for task in tasks}
