"""Image / video classification as a task: which model a recipe builds, its loss, and its class scores.

The engine is generic about loops, checkpoints and processes; this package holds what is specific
to classifying clips: building the network from `model:` (a UniFormer variant via
`uniformer.create_model`, or any `package.module:factory`), the loss (soft-target cross-entropy
after Mixup/CutMix, label-smoothed cross-entropy otherwise, averaged over the outputs of models
that return several logit sets in training), and scores for evaluation, including several views
of the same sample. `Task` (in `task.py`) is the engine's view of it.
"""
from .model import (
    build_model,
    classification_loss,
    load_weights,
    merge_outputs,
    model_input_ndim,
    model_spec,
    read_class_names,
    recipe_complexity,
    view_logits,
)
from .task import Task

__all__ = ["Task", "build_model", "load_weights", "classification_loss", "merge_outputs",
           "model_input_ndim", "view_logits", "read_class_names", "model_spec", "recipe_complexity"]
