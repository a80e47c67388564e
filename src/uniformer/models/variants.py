"""The architecture of every registered variant (constructor arguments by name), apart from the network code so
that the checkpoint readers can identify variants without importing the networks (which import them)."""
from __future__ import annotations

__all__ = ["MODEL_ARGS", "LIGHT_MODEL_ARGS"]

# UniFormer (uniformer.py)
MODEL_ARGS = {
    "uniformer_small": dict(depths=(3, 4, 8, 3)),  # 21.5M parameters, 3.6 GFLOPs at 224²
    # S+ (S† in the paper): convolutional stem and downsampling
    "uniformer_small_plus": dict(depths=(3, 5, 9, 3), head_dim=32, stem="conv", downsample="conv"),
    "uniformer_small_plus_dim64": dict(depths=(3, 5, 9, 3), head_dim=64, stem="conv", downsample="conv"),
    "uniformer_base": dict(depths=(5, 8, 20, 7)),  # 49.8M parameters, 8.3 GFLOPs at 224²
    "uniformer_base_ls": dict(depths=(5, 8, 20, 7), layer_scale=1e-6),  # layer scale on the global blocks
    # UniFormer-L, released with token-labeling weights only
    "uniformer_large_ls": dict(depths=(5, 10, 24, 7), embed_dims=(128, 192, 448, 640), layer_scale=1e-6,
                               local_layer_scale=1e-6),
    # token-labeling weights: an auxiliary head on every token, and head_dim 32 for S, S+ and B
    "uniformer_small_tl": dict(depths=(3, 4, 8, 3), head_dim=32, aux_head=True),
    "uniformer_small_plus_tl": dict(depths=(3, 5, 9, 3), head_dim=32, stem="conv", downsample="conv", aux_head=True),
    "uniformer_base_tl": dict(depths=(5, 8, 20, 7), head_dim=32, aux_head=True),
    "uniformer_large_ls_tl": dict(depths=(5, 10, 24, 7), embed_dims=(128, 192, 448, 640), layer_scale=1e-6,
                                  local_layer_scale=1e-6, aux_head=True),
    # 3-D local blocks, joint spatio-temporal attention; input B×3×T×H×W
    "uniformer_video_small": dict(depths=(3, 4, 8, 3), video=True),
    "uniformer_video_base": dict(depths=(5, 8, 20, 7), video=True),
}

# the light, token-evolving models (uniformer_light.py); the 4- and 8-frame video XXS weights need layer_scale=True
LIGHT_MODEL_ARGS = {
    "uniformer_xxs": dict(depths=(2, 5, 8, 2), embed_dims=(56, 112, 224, 448), head_dim=28),
    "uniformer_xs": dict(depths=(3, 5, 9, 3), embed_dims=(64, 128, 256, 512), head_dim=32),
    "uniformer_video_xxs": dict(depths=(2, 5, 8, 2), embed_dims=(56, 112, 224, 448), head_dim=28, video=True),
    "uniformer_video_xs": dict(depths=(3, 5, 9, 3), embed_dims=(64, 128, 256, 512), head_dim=32, video=True),
}
