"""Shifted-taps 3-D depthwise convolutions: the same function as the convolutions they replace."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from uniformer.models.depthwise import ShiftedTapsDepthwise3d, depthwise_conv3d_taps, use_shifted_taps


@pytest.mark.parametrize("unrolled", [True, False])
@pytest.mark.parametrize("kernel", [(3, 3, 3), (5, 5, 5), (3, 5, 1)])
def test_taps_equal_the_depthwise_convolution(kernel, unrolled):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 4, 7, 9, generator=g)
    w, b = torch.randn(6, 1, *kernel, generator=g), torch.randn(6, generator=g)
    expected = F.conv3d(x, w, b, padding=tuple(k // 2 for k in kernel), groups=6)
    torch.testing.assert_close(depthwise_conv3d_taps(x, w, b, unrolled), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(depthwise_conv3d_taps(x, w, None, unrolled), expected - b.view(1, -1, 1, 1, 1),
                               rtol=1e-5, atol=1e-5)


def test_even_kernels_and_grouped_weights_are_refused():
    x = torch.randn(1, 4, 3, 5, 5)
    with pytest.raises(ValueError, match="odd kernels"):
        depthwise_conv3d_taps(x, torch.randn(4, 1, 2, 3, 3), None)
    with pytest.raises(ValueError, match="odd kernels"):
        depthwise_conv3d_taps(x, torch.randn(4, 2, 3, 3, 3), None)


@pytest.mark.parametrize("unrolled", [True, False])
def test_video_model_keeps_its_outputs_and_state_dict(make_tiny, unrolled):
    model = make_tiny("uniformer_video_small")
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        expected = model(x)
    keys = list(model.state_dict())
    # tiny model: stages 1-2 have 1 local block each (DPE + 5x5x5 attn), stage 3 two and stage 4 one DPE
    assert use_shifted_taps(model, unrolled) == 2 * 2 + 2 + 1
    assert list(model.state_dict()) == keys
    assert [m.unrolled for m in model.modules() if isinstance(m, ShiftedTapsDepthwise3d)] == [unrolled] * 7
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_image_model_has_nothing_to_replace(make_tiny):
    assert use_shifted_taps(make_tiny("uniformer_small")) == 0


def test_compiled_reduction_form_equals_the_convolution_in_bfloat16():
    """The form meant for inductor, compiled as `benchmark_model` compiles it (bfloat16 autocast): the float32
    accumulation keeps it within bfloat16 rounding of the float32 convolution."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 4, 10, 10, generator=g)
    conv = ShiftedTapsDepthwise3d(torch.nn.Parameter(torch.randn(8, 1, 5, 5, 5, generator=g) / 10),
                                  torch.nn.Parameter(torch.randn(8, generator=g)), residual=True, unrolled=False)
    expected = x + F.conv3d(x, conv.weight, conv.bias, padding=2, groups=8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.compile(conv)(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
