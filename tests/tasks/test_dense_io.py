"""Dense tasks read images as mmcv did, EXIF orientation included; classification as the original PIL loader."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from uniformer.tasks.dense.io import read_image


def _rotated_jpeg(path, orientation: int) -> np.ndarray:
    """A 48x24 (W x H) JPEG with an EXIF orientation tag; returns the stored (unrotated) pixels as decoded."""
    rng = np.random.default_rng(0)
    pixels = np.zeros((24, 48, 3), np.uint8)
    pixels[:12, :24] = (250, 10, 10)  # top-left red: shows where the corner goes
    pixels[12:, 24:] = rng.integers(0, 255, (12, 24, 3))
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("orientation,turn", [(6, -1), (8, 1), (3, 2)])  # 90° clockwise, counter-clockwise, 180°
def test_dense_reader_applies_exif_orientation(tmp_path, orientation, turn):
    stored = _rotated_jpeg(tmp_path / "phone.jpg", orientation)
    image = read_image(tmp_path / "phone.jpg")
    np.testing.assert_array_equal(image, np.rot90(stored, k=turn))
    cv2 = pytest.importorskip("cv2")  # mmcv's reader: cv2.imread(IMREAD_COLOR), BGR
    reference = cv2.imread(str(tmp_path / "phone.jpg"), cv2.IMREAD_COLOR)[..., ::-1]
    assert reference.shape == image.shape
    assert np.abs(reference.astype(int) - image.astype(int)).max() <= 2  # two JPEG decoders


def test_dense_reader_keeps_untagged_images(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 255, (10, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    np.testing.assert_array_equal(read_image(tmp_path / "plain.png"), pixels)


def test_classification_reads_images_as_the_original_pil_loader(tmp_path):
    """The original image_classification loader is PIL `convert('RGB')`: no EXIF rotation."""
    from uniformer.data import build_dataset

    stored = _rotated_jpeg(tmp_path / "phone.jpg", 6)
    (tmp_path / "list.txt").write_text("phone.jpg 0\n")
    cfg = {"format": "image_list", "root": str(tmp_path), "test_list": "list.txt", "input_size": 24,
           "short_side": 24, "mean": [0, 0, 0], "std": [1, 1, 1]}
    x = build_dataset(cfg, "test")[0]["input"]  # V x C x H x W
    expected = stored[:, 12:36].astype(np.float32) / 255  # landscape 48x24: centre crop of the stored pixels
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)
