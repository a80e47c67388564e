"""Classification test inputs equal the ORIGINAL UniFormer evaluation's, case by case.

The cases are the folder named by ``UNIFORMER_CLS_CASES`` (relative paths from the repository
root; default ``../shared/conformance/classification`` next to the checkout); its README states
the original's steps and the tolerances used here.  One test per case of its ``index.json``
(parametrised at collection), plus, for every Something-Something case, the same check from a
frame folder holding the decoded frames losslessly (BMP).  Configs are built from each case's
``settings`` (the original's config values) and otherwise rely on the package's defaults, so a
wrong default (short side, mean/std, channel order, sampling rule) fails here.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uniformer.data import build_dataset, parse_data_config
from uniformer.data.video_io import VideoReader
from uniformer.tasks.classification.metrics import combine_views

REPO = Path(__file__).resolve().parents[2]
INPUT_ATOL = 1e-5  # README: inputs and inputs_full_t0, max abs difference
STATS_TOL = 1e-6  # README: |stats_sum difference| / (224 * 224)


def _cases_dir() -> Path:
    value = os.environ.get("UNIFORMER_CLS_CASES")
    if not value:
        return REPO.parent / "shared" / "conformance" / "classification"
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO / path


CASES = _cases_dir()


def _index() -> list[dict]:
    index = CASES / "index.json"
    if not index.is_file():
        return []
    return json.loads(index.read_text(encoding="utf-8"))


ENTRIES = _index()
_ABSENT = [pytest.param(None, marks=pytest.mark.skip(reason=f"no classification cases: {CASES / 'index.json'} is "
                                                            "absent (set UNIFORMER_CLS_CASES to their folder)"))]


def _params(kind: str, pipeline: str | None = None) -> list:
    chosen = [e for e in ENTRIES if e["kind"] == kind and (pipeline is None or e.get("pipeline") == pipeline)]
    if not ENTRIES:
        return _ABSENT
    return [pytest.param(e, id=e["case"].removesuffix(".pt")) for e in chosen]


def test_index_lists_only_known_kinds():
    """Every case in the index is checked by one of the tests below (none silently ignored)."""
    if not ENTRIES:
        pytest.skip(f"no classification cases: {CASES / 'index.json'} is absent")
    known = {("aggregation", None), ("image", None), ("video", "k400"), ("video", "sthv2")}
    assert {(e["kind"], e.get("pipeline")) for e in ENTRIES} <= known


@pytest.fixture(scope="module")
def load_case():
    cache: dict[str, dict] = {}

    def load(entry: dict) -> dict:
        name = entry["case"]
        if name not in cache:
            path = CASES / name
            if not path.is_file():
                pytest.fail(f"{path}: listed in index.json but missing")
            cache[name] = torch.load(path, weights_only=True)
        return cache[name]

    return load


@pytest.fixture(scope="module")
def decoded():
    """``decoded(file) -> (frames (N, H, W, 3) RGB uint8, fps, reader.num_frames)``, once per video per module."""
    cache: dict[str, tuple[np.ndarray, float, int]] = {}

    def get(name: str) -> tuple[np.ndarray, float, int]:
        if name not in cache:
            with VideoReader(CASES / name) as reader:
                n = reader.num_frames
                cache[name] = (reader.get_frames(range(n)), reader.fps, n)
        return cache[name]

    return get


def _video_cfg(case: dict, **extra) -> dict:
    """The package's data keys for the original config values of a case (defaults for everything else)."""
    s = case["settings"]
    size = s["DATA.TEST_CROP_SIZE"]
    # the original asserts min_scale == max_scale == crop_size at test: the short side is the crop size
    assert s["TEST.NUM_SPATIAL_CROPS"] == 3 or s["DATA.TRAIN_JITTER_SCALES"] == [size, size]
    cfg = {"num_frames": s["DATA.NUM_FRAMES"], "input_size": size, "test_clips": s["TEST.NUM_ENSEMBLE_VIEWS"],
           "test_crops": s["TEST.NUM_SPATIAL_CROPS"], **extra}
    if case["pipeline"] == "k400":
        cfg["stride"] = s["DATA.SAMPLING_RATE"]
    return cfg


def _check_defaults(cfg, case: dict) -> None:
    s = case["settings"]
    assert cfg.mean == pytest.approx(tuple(s["DATA.MEAN"])) and cfg.std == pytest.approx(tuple(s["DATA.STD"]))
    assert cfg.channel_order == case["channel_order"]
    assert cfg.short_side == s["DATA.TEST_CROP_SIZE"]
    assert cfg.view_aggregation == "sum_logits"


def _check_inputs(x: torch.Tensor, case: dict) -> None:
    assert list(x.shape) == list(case["inputs_shape"])
    si = torch.tensor(case["spatial_index"])
    err = (x.index_select(-2, si).index_select(-1, si) - case["inputs"]).abs().max().item()
    assert err <= INPUT_ATOL, f"sampled grid differs by {err}"
    err = (x[case["full_t0_views"], :, 0] - case["inputs_full_t0"]).abs().max().item()
    assert err <= INPUT_ATOL, f"full first frame differs by {err}"
    stats = x.double().sum((-1, -2)).permute(0, 2, 1)
    err = ((stats - case["stats_sum"]).abs() / (x.shape[-1] * x.shape[-2])).max().item()
    assert err <= STATS_TOL, f"per-frame sums differ by {err} per pixel"


def _sha1(frames: np.ndarray) -> list[str]:
    return [hashlib.sha1(np.ascontiguousarray(f).tobytes()).hexdigest() for f in frames]


def _views(clip_rows: np.ndarray, crops: int) -> list[list[int]]:
    """Per-clip rows -> per-view rows (clip-major)."""
    return np.repeat(clip_rows, crops, axis=0).tolist()


@pytest.mark.parametrize("entry", _params("video"))
def test_video_case_from_the_video_file(entry, load_case, decoded, tmp_path):
    case = load_case(entry)
    frames, fps, n = decoded(case["file"])
    assert n == case["video_info"]["decoded_frames"], "frame count of the video differs from the original's"
    s = case["settings"]
    crops = s["TEST.NUM_SPATIAL_CROPS"]
    if case["pipeline"] == "k400":
        (tmp_path / "list.txt").write_text(f"{case['file']} 0\n")
        cfg = _video_cfg(case, format="video_list", root=str(CASES), test_list=str(tmp_path / "list.txt"))
    else:
        # sthv2 reads the video directly: 30 fps numbering as `ffmpeg -r 30` (the default) or, for the
        # cases made from every native frame, the native numbering
        stem, ext = case["file"].rsplit(".", 1)
        (tmp_path / "labels.json").write_text(json.dumps({"Approaching something with your camera": "0"}))
        (tmp_path / "val.json").write_text(json.dumps([{"id": stem, "template": "Approaching [something] with "
                                                                                "your camera"}]))
        extra = {"target_fps": None} if case["frames_source"] == "native" else {}
        labels, annotations = str(tmp_path / "labels.json"), str(tmp_path / "val.json")
        cfg = _video_cfg(case, format="sthv2", root=str(CASES), video_ext=ext, labels_file=labels,
                         val_annotations=annotations, **extra)
        if case["frames_source"] != "native":
            assert parse_data_config(cfg).target_fps == s.get("DATA.TARGET_FPS", 30)
    ds = build_dataset(cfg, "test")
    _check_defaults(ds.cfg, case)
    assert ds.num_views == len(case["frame_indices"])
    indices = ds.frame_indices(n, fps, None)
    assert _views(indices, crops) == case["frame_indices"]
    assert [_sha1(frames[row]) for row in _views(indices, crops)] == case["decoded_sha1"]
    x = ds.transform.clips(frames[indices.reshape(-1)], len(indices))  # what ds.load does after decoding
    _check_inputs(x, case)


@pytest.fixture(scope="module")
def frame_folder(decoded, tmp_path_factory):
    """``frame_folder(case) -> (folder, image count)``: the case's frame images, BMP (lossless, fast to write)."""
    cache: dict[tuple[str, tuple[int, ...]], tuple[Path, int]] = {}

    def make(case: dict) -> tuple[Path, int]:
        frames, _, n = decoded(case["file"])
        shown = tuple(int(i) for i in case.get("source_map", range(n)))
        key = (case["file"], shown)
        if key not in cache:
            folder = tmp_path_factory.mktemp("frames")
            for j, i in enumerate(shown, 1):
                Image.fromarray(frames[i]).save(folder / f"img_{j:05d}.bmp")
            cache[key] = (folder, len(shown))
        return cache[key]

    return make


@pytest.mark.parametrize("entry", _params("video", "sthv2"))
def test_sthv2_case_from_a_frame_folder(entry, load_case, frame_folder, tmp_path):
    case = load_case(entry)
    folder, count = frame_folder(case)
    (tmp_path / "split.txt").write_text(f"{folder.name} {count} 0\n")
    cfg = _video_cfg(case, format="frame_folder", root=str(folder.parent), test_list=str(tmp_path / "split.txt"),
                     frame_template="img_{:05d}.bmp", num_classes=1)
    ds = build_dataset(cfg, "test")
    _check_defaults(ds.cfg, case)
    crops = case["settings"]["TEST.NUM_SPATIAL_CROPS"]
    images = ds.clip_indices(count, None)  # 0-based image numbers
    assert _views(images + 1, crops) == case["original_indices"]
    item = ds[0]
    assert item["failures"] == []
    _check_inputs(item["input"], case)


@pytest.mark.parametrize("entry", _params("image"))
def test_image_case(entry, load_case, tmp_path):
    case = load_case(entry)
    (tmp_path / "list.txt").write_text(f"{case['file']} 0\n")
    size = case["settings"]["input_size"]
    cfg = {"format": "image_list", "root": str(CASES), "test_list": str(tmp_path / "list.txt"), "input_size": size}
    ds = build_dataset(cfg, "test")
    assert ds.cfg.short_side == case["settings"]["resize"]  # int(256 / 224 * size): crop_pct 0.875
    assert ds.cfg.mean == pytest.approx(tuple(case["settings"]["mean"]))
    assert ds.cfg.std == pytest.approx(tuple(case["settings"]["std"]))
    x = ds[0]["input"]
    assert x.shape == case["inputs"].shape
    err = (x - case["inputs"]).abs().max().item()
    assert err <= INPUT_ATOL, f"image input differs by {err}"


@pytest.mark.parametrize("entry", _params("aggregation"))
def test_view_aggregation_case(entry, load_case):
    case = load_case(entry)
    assert case["examples"]
    for ex in case["examples"]:
        scores = combine_views(ex["per_view_logits"], parse_data_config({"format": "video_list"}).view_aggregation)
        assert (scores - ex["final_scores"]).abs().max().item() <= 1e-5, ex["name"]
        assert torch.equal(scores.argmax(-1), ex["final_top1"].long()), ex["name"]
        contrast = combine_views(ex["per_view_logits"], "mean_softmax").argmax(-1)
        assert torch.equal(contrast, ex["softmax_mean_top1_for_contrast"].long()), ex["name"]


def _released_cases(tag: str) -> list:
    """The cases whose original settings are the released tag's test protocol (read from a file)."""
    from uniformer.models.released import released_weights

    w = released_weights(tag)
    out = []
    for e in ENTRIES:
        if e["kind"] == "video" and e["T"] == w.frames and e["views"] == w.crops * w.clips:
            direct = e.get("frames_source") in ("decord", "ffmpeg_r30")  # what reading the file gives
            if direct and e["pipeline"] == ("k400" if w.stride else "sthv2"):
                out.append(e)
        elif e["kind"] == "image" and not w.is_video and e["input_size"] == w.input_size:
            out.append(e)
    return out


RELEASED_TAGS = ("uniformer_video_small.k400_16x4", "uniformer_video_small.sthv2_16", "uniformer_xxs.in1k_160")


@pytest.mark.parametrize("tag", RELEASED_TAGS)
def test_released_tag_reads_files_as_the_original(tag, load_case, tmp_path):
    """`predict --model TAG` / eval read a file with `data_config()` through `build_dataset(cfg, "test")`:
    the full path (decoding with seeks included) gives the original's inputs."""
    from uniformer.models.released import released_weights

    entries = _released_cases(tag)
    if not ENTRIES:
        pytest.skip(f"no classification cases: {CASES / 'index.json'} is absent")
    assert entries, f"no case in {CASES} has the test settings of {tag}"
    weights = released_weights(tag)
    for entry in entries:
        case = load_case(entry)
        if entry["kind"] == "video":
            s = case["settings"]
            assert s.get("DATA.SAMPLING_RATE") == weights.stride or weights.stride is None
            assert (s["TEST.NUM_SPATIAL_CROPS"], s["TEST.NUM_ENSEMBLE_VIEWS"]) == (weights.crops, weights.clips)
        (tmp_path / "list.txt").write_text(f"{case['file']} 0\n")
        cfg = {**weights.data_config(), "root": str(CASES), "test_list": str(tmp_path / "list.txt")}
        item = build_dataset(cfg, "test")[0]
        assert item["failures"] == []
        if entry["kind"] == "video":
            _check_inputs(item["input"], case)
        else:
            err = (item["input"] - case["inputs"]).abs().max().item()
            assert err <= INPUT_ATOL, f"{entry['case']}: image input differs by {err}"
