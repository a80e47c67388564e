"""Image / video classification as a task (`Task`, in `task.py`): the network of `model:`, its loss (soft-target
cross-entropy after Mixup/CutMix, label-smoothed otherwise) and its class scores over test views."""
from .model import (
    build_model,
    classification_loss,
    load_weights,
    merge_outputs,
    model_input_ndim,
    recipe_complexity,
    view_logits,
)
from .task import Task

__all__ = ["Task", "build_model", "load_weights", "classification_loss", "merge_outputs", "model_input_ndim",
           "view_logits", "recipe_complexity"]
