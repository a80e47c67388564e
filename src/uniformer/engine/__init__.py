"""Training and evaluation engine: recipes, the training loop, checkpoints, metrics, many-process runs.

    from uniformer.engine import load_config, train, evaluate_checkpoint
    cfg = load_config("configs/demo.yaml", ["train.epochs=2"])
    metrics = train(cfg, "runs/demo")
    result = evaluate_checkpoint(cfg, "runs/demo/best.pt", split="val")
"""
from uniformer.engine.checkpoint import CheckpointManager, atomic_save, load_training_checkpoint
from uniformer.engine.config import ConfigError, apply_overrides, default_config, load_config, resolve_out_dir
from uniformer.engine.ema import ModelEma
from uniformer.engine.evaluation import evaluate_checkpoint, predict_loader, score_predictions
from uniformer.engine.metrics import average_views, classification_metrics
from uniformer.engine.optim import WarmupCosineSchedule, build_optimizer, param_groups
from uniformer.engine.trainer import Trainer, train

__all__ = [
    "CheckpointManager", "ConfigError", "ModelEma", "Trainer", "WarmupCosineSchedule", "apply_overrides",
    "atomic_save", "average_views", "build_optimizer", "classification_metrics", "default_config",
    "evaluate_checkpoint", "load_config", "load_training_checkpoint", "param_groups", "predict_loader",
    "resolve_out_dir", "score_predictions", "train",
]
