"""A picture of a classification: the frames the model saw above a bar chart of its top classes."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def sampled_frames(x: torch.Tensor, is_video: bool, mean: Sequence[float], std: Sequence[float],
                   max_frames: int = 8) -> np.ndarray:
    """The first view of a pipeline input (C×H×W or C×T×H×W, optionally behind a view axis) as N×H×W×3
    uint8 frames with the normalisation undone; at most `max_frames`, evenly spread over the clip."""
    x = x.detach().float().cpu()
    if x.ndim == (5 if is_video else 4):  # several views: the first one
        x = x[0]
    if not is_video:
        x = x.unsqueeze(1)  # C×1×H×W
    m = torch.tensor(mean, dtype=x.dtype).view(3, 1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(3, 1, 1, 1)
    x = (x * s + m).clamp(0, 1)
    keep = np.unique(np.linspace(0, x.shape[1] - 1, min(max_frames, x.shape[1])).round().astype(int))
    return (x[:, keep].permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)


def save_prediction_figure(path, frames: np.ndarray, predictions: Sequence[dict], title: str = "") -> None:
    """Frames in a row, the top classes (`label`, `prob`) as horizontal bars below; a PNG at `path` (a file
    name or a binary stream)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gap = max(2, frames.shape[2] // 40)  # a white line between frames
    strip = np.concatenate([np.pad(f, ((0, 0), (0, gap), (0, 0)), constant_values=255) for f in frames],
                           axis=1)[:, :-gap]
    rows = max(len(predictions), 1)
    width = 10.0
    strip_height = width * strip.shape[0] / strip.shape[1]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(width, strip_height + 0.45 * rows + 0.9),
                                      gridspec_kw={"height_ratios": [strip_height, 0.45 * rows + 0.4]})
    top.imshow(strip)
    top.set_axis_off()
    if title:
        top.set_title(title, fontsize=10)
    labels = [p["label"] for p in predictions][::-1]
    probs = [p["prob"] for p in predictions][::-1]
    bars = bottom.barh(range(len(labels)), probs, color="#4c72b0")
    bottom.set_yticks(range(len(labels)), labels)
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("probability")
    for bar, prob in zip(bars, probs):
        bottom.text(min(prob + 0.01, 0.9), bar.get_y() + bar.get_height() / 2, f"{prob:.3f}", va="center", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
