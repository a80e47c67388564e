"""Top-down pose network: UniFormer's last map → SimpleBaseline deconvolution head → K heatmaps at stride 4, named
as mmpose's TopdownHeatmapSimpleHead so that an original pose checkpoint loads key for key."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["HeatmapHead", "TopDownPose", "joints_mse_loss"]


class HeatmapHead(nn.Module):
    """`num_deconv` × (4×4 stride-2 transposed conv without bias → BN → ReLU), then a 1×1 conv to K maps."""

    def __init__(self, in_channels: int, num_joints: int, num_deconv: int = 3, channels: int = 256,
                 final_kernel: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for _ in range(num_deconv):
            layers += [nn.ConvTranspose2d(cin, channels, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels),
                       nn.ReLU(inplace=True)]
            cin = channels
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(cin, num_joints, final_kernel, padding=(final_kernel - 1) // 2)
        for m in self.modules():  # mmpose's initialisation (BatchNorm's is PyTorch's: ones and zeros)
            if isinstance(m, nn.ConvTranspose2d | nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(x))


class TopDownPose(nn.Module):
    """`forward(img)` → N×K×(H/4)×(W/4) heatmaps (the backbone returns its maps; the head reads the last)."""

    def __init__(self, backbone: nn.Module, keypoint_head: HeatmapHead):
        super().__init__()
        self.backbone = backbone
        self.keypoint_head = keypoint_head

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.keypoint_head(self.backbone(img)[-1])


def joints_mse_loss(heatmaps: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """mmpose's JointsMSELoss with target weights: mean squared error of weighted heatmaps, averaged over joints."""
    w = weight[:, :, None, None]
    return ((heatmaps - target) * w).pow(2).mean()
