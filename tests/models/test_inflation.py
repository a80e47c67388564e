"""2-D image weights inflated into 3-D video models."""
from __future__ import annotations

import pytest
import torch

import uniformer
from uniformer.models import LocalBlock, inflate_weight


def test_inflate_average_repeats_and_divides():
    w = torch.randn(4, 3, 5, 5)
    out = inflate_weight(w, 3, "average")
    assert out.shape == (4, 3, 3, 5, 5)
    for t in range(3):
        assert torch.allclose(out[:, :, t], w / 3)
    assert torch.allclose(out.sum(2), w, atol=1e-6)  # a temporally constant clip sees the 2-D kernel


def test_inflate_center_puts_the_kernel_on_the_middle_frame():
    w = torch.randn(4, 1, 3, 3)
    out = inflate_weight(w, 5, "center")
    assert out.shape == (4, 1, 5, 3, 3)
    assert torch.equal(out[:, :, 2], w)
    assert torch.count_nonzero(out[:, :, [0, 1, 3, 4]]) == 0
    even = inflate_weight(w, 4, "center")
    assert torch.equal(even[:, :, 2], w) and torch.count_nonzero(even) == torch.count_nonzero(w)


def test_inflate_time_one_is_identity_and_bad_mode_raises():
    w = torch.randn(8, 8, 1, 1)
    assert torch.equal(inflate_weight(w, 1, "average").squeeze(2), w)
    assert torch.equal(inflate_weight(w, 1, "center").squeeze(2), w)
    with pytest.raises(ValueError, match="inflate"):
        inflate_weight(w, 3, "sum")


@pytest.fixture
def image_checkpoint(make_tiny, tmp_path):
    image = make_tiny("uniformer_small", seed=3)
    path = tmp_path / "image_small.pth"
    torch.save({"model": image.state_dict()}, path)
    return image, path


def _video(tiny_kwargs, path, inflate):
    torch.manual_seed(123)
    return uniformer.create_model("uniformer_video_small", **tiny_kwargs, checkpoint_path=path,
                                  inflate=inflate).eval()


def test_average_inflation_kernels(image_checkpoint, tiny_kwargs):
    image, path = image_checkpoint
    video = _video(tiny_kwargs, path, "average")
    img, vid = image.state_dict(), video.state_dict()
    assert torch.allclose(vid["patch_embed1.proj.weight"],
                          img["patch_embed1.proj.weight"].unsqueeze(2).repeat(1, 1, 3, 1, 1) / 3)
    assert torch.allclose(vid["blocks1.0.attn.weight"], img["blocks1.0.attn.weight"].unsqueeze(2).repeat(
        1, 1, 5, 1, 1) / 5)
    assert torch.allclose(vid["blocks3.0.pos_embed.weight"], img["blocks3.0.pos_embed.weight"].unsqueeze(2)
                          .repeat(1, 1, 3, 1, 1) / 3)
    assert torch.equal(vid["blocks1.0.conv1.weight"].squeeze(2), img["blocks1.0.conv1.weight"])
    assert torch.equal(vid["patch_embed2.proj.weight"].squeeze(2), img["patch_embed2.proj.weight"])
    for k in ("norm.running_mean", "norm.running_var", "blocks1.0.norm1.weight", "head.weight",
              "blocks3.1.attn.qkv.weight", "blocks4.0.mlp.fc2.weight"):
        assert torch.equal(vid[k], img[k]), k


def test_center_inflation_kernels_differ(image_checkpoint, tiny_kwargs):
    image, path = image_checkpoint
    avg, center = _video(tiny_kwargs, path, "average"), _video(tiny_kwargs, path, "center")
    w = center.state_dict()["patch_embed1.proj.weight"]
    assert torch.equal(w[:, :, 1], image.state_dict()["patch_embed1.proj.weight"])
    assert torch.count_nonzero(w[:, :, [0, 2]]) == 0
    assert not torch.allclose(w, avg.state_dict()["patch_embed1.proj.weight"])


def test_constant_clip_with_average_inflation(image_checkpoint, tiny_kwargs):
    """Identical frames: interior embeddings equal the image's; the first output frame, whose window
    reaches into the zero temporal padding, sees only 2/3 of the kernel. So logits are not the image's."""
    image, path = image_checkpoint
    video = _video(tiny_kwargs, path, "average")
    frame = torch.randn(1, 3, 32, 48)
    clip = frame.unsqueeze(2).repeat(1, 1, 6, 1, 1)
    with torch.no_grad():
        v = video.patch_embed1.proj(clip)
        i = image.patch_embed1.proj(frame)
        bias = image.patch_embed1.proj.bias.view(1, -1, 1, 1)
        assert v.shape[2] == 3
        assert torch.allclose(v[:, :, 1], i, atol=1e-5)
        assert torch.allclose(v[:, :, 2], i, atol=1e-5)
        assert torch.allclose(v[:, :, 0], (i - bias) * 2 / 3 + bias, atol=1e-5)
        assert not torch.allclose(video(clip), image(frame), atol=1e-4)


def test_constant_clip_through_an_average_inflated_local_block(image_checkpoint, tiny_kwargs):
    """Away from the clip borders, a 3-D local block on a constant clip computes exactly the 2-D block.
    The DPE (3 frames) changes the border frames 0 and T−1; the 5-frame local MHRA at frame t reads
    t−2..t+2 of the DPE output, so t=3 of T=7 is the first frame that no zero padding reaches."""
    image, path = image_checkpoint
    video = _video(tiny_kwargs, path, "average")
    x = torch.randn(1, 16, 8, 8)
    clip = x.unsqueeze(2).repeat(1, 1, 7, 1, 1)
    with torch.no_grad():
        out = video.blocks1[0](clip)
        ref = image.blocks1[0](x)
    assert torch.allclose(out[:, :, 3], ref, atol=1e-5)
    for t in (0, 1, 2, 4, 5, 6):  # each of these reaches the temporal zero padding
        assert not torch.allclose(out[:, :, t], ref, atol=1e-4), t


def test_constant_clip_with_center_inflation_gives_the_image_logits(image_checkpoint, tiny_kwargs):
    """Center inflation makes every 3-D kernel act frame by frame; joint attention over T identical
    copies of each token equals attention over one copy. So a constant clip gives the image logits."""
    image, path = image_checkpoint
    video = _video(tiny_kwargs, path, "center")
    frame = torch.randn(2, 3, 64, 64)
    clip = frame.unsqueeze(2).repeat(1, 1, 4, 1, 1)
    with torch.no_grad():
        assert torch.allclose(video(clip), image(frame), atol=1e-4, rtol=1e-4)


def test_local_block_2d_vs_3d_reference():
    """The 3-D local block with center-inflated kernels is the 2-D block applied frame by frame."""
    torch.manual_seed(0)
    b2, b3 = LocalBlock(8, ndim=2).eval(), LocalBlock(8, ndim=3).eval()
    sd = {k: inflate_weight(v, 5 if "attn" in k else (3 if "pos_embed" in k else 1), "center")
          if v.ndim == 4 else v for k, v in b2.state_dict().items()}
    b3.load_state_dict(sd)
    clip = torch.randn(1, 8, 3, 6, 6)
    with torch.no_grad():
        out = b3(clip)
        for t in range(3):
            assert torch.allclose(out[:, :, t], b2(clip[:, :, t]), atol=1e-5)
