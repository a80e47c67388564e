"""Classification metrics of whole-split class probabilities: top-k, mean per-class accuracy, confusion matrix.

Test views (clips and/or crops) are combined first (`combine_views`): by the sum of raw logits, as the original's
SlowFast `TestMeter` ("sum_logits"), or the mean per-view softmax ("mean_softmax").
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

VIEW_AGGREGATIONS = ("sum_logits", "mean_softmax")


def _check_views(logits: torch.Tensor, method: str) -> None:
    if logits.ndim != 3:
        raise ValueError(f"expected B×V×K logits, got shape {tuple(logits.shape)}")
    if method not in VIEW_AGGREGATIONS:
        raise ValueError(f"view aggregation {method!r}: expected one of {list(VIEW_AGGREGATIONS)}")


def combine_views(logits: torch.Tensor, method: str = "sum_logits") -> torch.Tensor:
    """B×V×K logits (V views of each sample) -> B×K scores: the sum of the raw logits (the original's
    `TestMeter` with ENSEMBLE_METHOD "sum"), or the mean of the per-view softmax."""
    _check_views(logits, method)
    if method == "sum_logits":
        return logits.float().sum(1)
    return logits.float().softmax(-1).mean(1)


def view_probabilities(logits: torch.Tensor, method: str = "sum_logits") -> torch.Tensor:
    """B×V×K logits -> B×K class probabilities ranked exactly as `combine_views` ranks them: for
    "sum_logits" the softmax of the mean logit (same order as the sum), else the mean softmax."""
    _check_views(logits, method)
    if method == "sum_logits":
        return logits.float().mean(1).softmax(-1)
    return logits.float().softmax(-1).mean(1)


def topk_accuracy(probs: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of samples whose label is among the k most probable classes (k capped at the class count)."""
    n, num_classes = probs.shape
    if n == 0:
        return {k: float("nan") for k in ks}
    kmax = min(max(ks), num_classes)
    top = probs.topk(kmax, dim=1).indices
    hit = top.eq(labels.view(-1, 1))
    return {k: hit[:, :min(k, num_classes)].any(1).double().mean().item() for k in ks}


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """K×K counts; row = true class, column = predicted class."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor,
                           class_names: Sequence[str] | None = None) -> dict:
    """top1, top5, mean_class_acc (classes absent from `labels`: None, not in the mean), loss (mean negative
    log-probability of the label) and per-class accuracy as plain values, and `confusion` (a K×K tensor)."""
    probs = probs.float()
    labels = labels.long()
    n, num_classes = probs.shape
    acc = topk_accuracy(probs, labels, (1, 5))
    preds = probs.argmax(1) if n else labels
    cm = confusion_matrix(preds, labels, num_classes)
    support = cm.sum(1)
    per_class = [cm[i, i].item() / support[i].item() if support[i] > 0 else None for i in range(num_classes)]
    present = [a for a in per_class if a is not None]
    nll = -probs.gather(1, labels.view(-1, 1)).clamp_min(1e-12).log().mean().item() if n else float("nan")
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    return {
        "top1": acc[1],
        "top5": acc[5],
        "mean_class_acc": sum(present) / len(present) if present else float("nan"),
        "loss": nll,
        "num_samples": n,
        "per_class_acc": {names[i]: per_class[i] for i in range(num_classes)},
        "confusion": cm,
    }


def plot_confusion_matrix(cm: torch.Tensor, class_names: Sequence[str] | None, path: str | os.PathLike,
                          title: str = "confusion matrix (rows: true class, normalised)") -> Path:
    """Row-normalised confusion matrix as a PNG; class names on the axes when there are few classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = cm.double()
    k = cm.shape[0]
    norm = cm / cm.sum(1, keepdim=True).clamp_min(1)
    size = min(4 + 0.4 * k, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    if k <= 40:
        names = list(class_names) if class_names else [str(i) for i in range(k)]
        ax.set_xticks(range(k), names, rotation=90)
        ax.set_yticks(range(k), names)
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                            color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
