"""The classification recipes are the original's runs: every value that moves accuracy equals what the original
scripts ran (Sense-X/UniFormer at commit 52a0415), each expected value written here with the file it comes from.

Video (SlowFast): `TRAIN.BATCH_SIZE` is the videos of one step over all GPUs of a node, each giving `AUG.NUM_SAMPLE`
clips, times `NUM_SHARDS` nodes; `SOLVER.BASE_LR` is the lr of that step (times NUM_SHARDS when
`SOLVER.BASE_LR_SCALE_NUM_SHARDS`). Images (DeiT): `--batch-size` per process x 8 processes, lr = `--lr` x batch / 512.
The recipes count clips per process and scale `optim.lr` by the global batch over `optim.lr_base_batch`, so both are
checked at the original's 8 processes per node.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from uniformer.engine.optim import scaled_lr
from uniformer.tasks import load_recipe

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "uniformer" / "configs" / "classification"
ORIG = "Sense-X/UniFormer video_classification"
DEFAULTS = f"{ORIG}/slowfast/config/defaults.py"

# folder: (videos per step = TRAIN.BATCH_SIZE x NUM_SHARDS, SOLVER.BASE_LR as applied, SOLVER.MAX_EPOCH,
#          SOLVER.WARMUP_EPOCHS, UNIFORMER.DROP_DEPTH_RATE, DATA.NUM_FRAMES, DATA.SAMPLING_RATE,
#          UNIFORMER.PRETRAIN_NAME, test clips x crops), all from exp/<folder>/run.sh over exp/<folder>/config.yaml;
# the test views from exp/<folder>/test.sh where there is one, else the README's "Testing" (Kinetics 1 crop x 4
# clips, Something-Something 3 crops x 1 clip) and, for UCF101 / HMDB51, run.sh's TEST.NUM_ENSEMBLE_VIEWS 5 x
# TEST.NUM_SPATIAL_CROPS 3.
VIDEO = {
    "uniformer_s8x8_k400": (128, 4e-4, 100, 10, 0.1, 8, 8, "uniformer_small_in1k", (4, 1)),  # + test.sh: 4 x 1
    "uniformer_s16x4_k400": (32, 1e-4, 110, 10, 0.1, 16, 4, "uniformer_small_in1k", (4, 1)),
    "uniformer_s16x8_k400": (32, 1e-4, 110, 10, 0.1, 16, 8, "uniformer_small_in1k", (4, 1)),
    "uniformer_s32x4_k400": (32, 1e-4, 110, 10, 0.1, 32, 4, "uniformer_small_in1k", (4, 1)),
    "uniformer_b8x8_k400": (64, 2e-4, 100, 10, 0.3, 8, 8, "uniformer_base_in1k", (4, 1)),
    "uniformer_b16x4_k400": (40, 1.25e-4, 110, 10, 0.3, 16, 4, "uniformer_base_in1k", (4, 1)),
    "uniformer_b16x8_k400": (40, 1.25e-4, 110, 10, 0.3, 16, 8, "uniformer_base_in1k", (4, 1)),
    "uniformer_b32x4_k400": (32, 1e-4, 110, 10, 0.3, 32, 4, "uniformer_base_in1k", (4, 1)),
    "uniformer_s16x4_k600": (96, 3e-4, 110, 10, 0.1, 16, 4, "uniformer_small_in1k", (4, 1)),
    "uniformer_s16x8_k600": (32, 1e-4, 110, 10, 0.1, 16, 8, "uniformer_small_in1k", (4, 1)),
    "uniformer_b16x4_k600": (40, 1.25e-4, 110, 10, 0.3, 16, 4, "uniformer_base_in1k", (4, 1)),
    "uniformer_b16x8_k600": (32, 1.25e-4, 110, 10, 0.3, 16, 8, "uniformer_base_in1k", (4, 1)),
    # run.sh: NUM_SHARDS=4 (32 GPUs), config.yaml SOLVER.BASE_LR_SCALE_NUM_SHARDS True: 1e-4 x 4
    "uniformer_b32x4_k600": (128, 4e-4, 110, 10, 0.3, 32, 4, "uniformer_base_in1k", (4, 1)),
    "uniformer_s16_sthv1_prek400": (32, 2e-4, 60, 5, 0.2, 16, None, "uniformer_small_k400_16x4", (1, 3)),  # test.sh
    "uniformer_s16_sthv1_prek600": (32, 2e-4, 60, 5, 0.2, 16, None, "uniformer_small_k600_16x4", (1, 3)),
    "uniformer_s32_sthv1_prek400": (32, 2e-4, 60, 5, 0.2, 32, None, "uniformer_small_k400_16x4", (1, 3)),
    "uniformer_s32_sthv1_prek600": (32, 2e-4, 60, 5, 0.3, 32, None, "uniformer_small_k600_16x4", (1, 3)),
    "uniformer_b16_sthv1_prek400": (40, 2.5e-4, 60, 5, 0.6, 16, None, "uniformer_base_k400_16x4", (1, 3)),
    "uniformer_b16_sthv1_prek600": (40, 2.5e-4, 60, 5, 0.5, 16, None, "uniformer_base_k600_16x4", (1, 3)),
    "uniformer_b32_sthv1_prek400": (32, 2e-4, 60, 5, 0.6, 32, None, "uniformer_base_k400_16x4", (1, 3)),
    "uniformer_b32_sthv1_prek600": (32, 2e-4, 60, 5, 0.6, 32, None, "uniformer_base_k600_16x4", (1, 3)),
    "uniformer_s16_sthv2_prek400": (32, 2e-4, 50, 5, 0.3, 16, None, "uniformer_small_k400_16x4", (1, 3)),
    "uniformer_s16_sthv2_prek600": (32, 2e-4, 50, 5, 0.3, 16, None, "uniformer_small_k600_16x4", (1, 3)),
    "uniformer_s32_sthv2_prek400": (32, 2e-4, 50, 5, 0.3, 32, None, "uniformer_small_k400_16x4", (1, 3)),
    "uniformer_s32_sthv2_prek600": (32, 2e-4, 50, 5, 0.3, 32, None, "uniformer_small_k600_16x4", (1, 3)),
    "uniformer_b16_sthv2_prek400": (40, 2.5e-4, 50, 5, 0.4, 16, None, "uniformer_base_k400_16x4", (1, 3)),
    "uniformer_b16_sthv2_prek600": (40, 2.5e-4, 50, 5, 0.5, 16, None, "uniformer_base_k600_16x4", (1, 3)),
    "uniformer_b32_sthv2_prek400": (32, 2e-4, 50, 5, 0.5, 32, None, "uniformer_base_k400_16x4", (1, 3)),
    "uniformer_b32_sthv2_prek600": (32, 2e-4, 50, 5, 0.5, 32, None, "uniformer_base_k600_16x4", (1, 3)),
    # DROP_DEPTH_RATE 0.2 and AA_TYPE rand-m5-n2-mstd0.25 from config.yaml; BASE_LR_SCALE_NUM_SHARDS False (run.sh)
    "uniformer_s16x4_ucf101_prek400": (128, 5e-5, 25, 5, 0.2, 16, 4, "uniformer_small_k400_16x4", (5, 3)),
    "uniformer_s16x4_hmdb51_prek400": (128, 5e-5, 25, 5, 0.2, 16, 4, "uniformer_small_k400_16x4", (5, 3)),
}

# folder: (script, --model, --input-size, --drop-path, lr after main.py's rule, --weight-decay, --aa,
#          repeated augmentation copies, --model-ema-decay, --epochs, --warmup-epochs, per-process --batch-size)
# from image_classification/<exp|exp_light>/<folder>/run.sh over the argparse defaults of main.py / main_light.py
# (lr 5e-4, weight decay 0.05, aa rand-m9-mstd0.5-inc1, --repeated-aug on: RASampler 3 copies, EMA 0.99996,
# warm-up 5); lr = --lr x batch x 8 / 512.
IMAGE = {
    "in1k_uniformer_small": ("exp", "uniformer_small", 224, 0.1, 5e-4 * 1024 / 512, 0.05, "rand-m9-mstd0.5-inc1", 3,
                             0.99996, 300, 5, 128),
    "in1k_uniformer_small_plus": ("exp", "uniformer_small_plus", 224, 0.1, 1e-3, 0.05, "rand-m9-mstd0.5-inc1", 3,
                                  0.99996, 300, 5, 128),
    "in1k_uniformer_small_plus_dim64": ("exp", "uniformer_small_plus_dim64", 224, 0.1, 1e-3, 0.05,
                                        "rand-m9-mstd0.5-inc1", 3, 0.99996, 300, 5, 128),
    "in1k_uniformer_base": ("exp", "uniformer_base", 224, 0.3, 4e-4 * 1024 / 512, 0.05, "rand-m9-mstd0.5-inc1", 3,
                            0.99996, 300, 5, 128),
    "in1k_uniformer_base_ls": ("exp", "uniformer_base_ls", 224, 0.3, 8e-4, 0.05, "rand-m9-mstd0.5-inc1", 3, 0.99996,
                               300, 5, 128),
    # exp_light: --no-repeated-aug, --model-ema-decay 0.9999, --warmup-epochs 30, --epoch 600, --batch-size 512
    "in1k_light_xs_192": ("exp_light", "uniformer_xs", 192, 0.1, 5e-4 * 4096 / 512, 0.05, "rand-m9-mstd0.5-inc1", 0,
                          0.9999, 600, 30, 512),
    "in1k_light_xs_224": ("exp_light", "uniformer_xs", 224, 0.1, 4e-3, 0.05, "rand-m9-mstd0.5-inc1", 0, 0.9999, 600,
                          30, 512),
    # xxs: --lr 4e-4, --drop-path 0, --aa v0, --weight-decay 0.1
    "in1k_light_xxs_128": ("exp_light", "uniformer_xxs", 128, 0.0, 4e-4 * 4096 / 512, 0.1, "v0", 0, 0.9999, 600, 30,
                           512),
    "in1k_light_xxs_160": ("exp_light", "uniformer_xxs", 160, 0.0, 3.2e-3, 0.1, "v0", 0, 0.9999, 600, 30, 512),
    "in1k_light_xxs_192": ("exp_light", "uniformer_xxs", 192, 0.0, 3.2e-3, 0.1, "v0", 0, 0.9999, 600, 30, 512),
    "in1k_light_xxs_224": ("exp_light", "uniformer_xxs", 224, 0.0, 3.2e-3, 0.1, "v0", 0, 0.9999, 600, 30, 512),
}

PROCESSES = 8  # NUM_GPUS 8 (run.sh) / --nproc_per_node=8 (run.sh)


def _global(cfg: dict) -> tuple[int, float]:
    """Clips (or images) per optimiser step and the lr after scaling, on 8 processes per node."""
    t, o = cfg["train"], cfg["optim"]
    clips = t["batch_size"] * PROCESSES * t["accum_steps"]
    return clips, scaled_lr(o["lr"], clips, o["lr_base_batch"])


def test_one_recipe_per_folder_of_the_original():
    # 31 folders in video_classification/exp, 5 in image_classification/exp, 6 in image_classification/exp_light
    shipped = {p.stem for p in CONFIGS.glob("*.yaml")} - {"demo", "demo_quick"}
    assert shipped == set(VIDEO) | set(IMAGE)
    assert len(VIDEO) == 31 and len(IMAGE) == 11


@pytest.mark.parametrize("name", sorted(VIDEO))
def test_video_recipe_is_the_original_run(name):
    videos, lr, epochs, warmup, drop_path, frames, stride, init, views = VIDEO[name]
    cfg = load_recipe(CONFIGS / f"{name}.yaml")
    d, t = cfg["data"], cfg["train"]
    # AUG.NUM_SAMPLE 2 (exp/*/config.yaml): each video two clips in the same step
    assert d["num_sample"] == 2
    assert _global(cfg) == (videos * 2, pytest.approx(lr, rel=1e-9))
    assert (t["epochs"], cfg["sched"]["warmup_epochs"]) == (epochs, warmup)
    assert cfg["model"]["drop_path_rate"] == drop_path
    assert cfg["model"]["checkpoint"].endswith(f"checkpoints/{init}.pth")
    assert cfg["model"]["name"] == ("uniformer_video_small" if "_s" in name[9:11] else "uniformer_video_base")
    assert d["num_frames"] == frames
    sth = "_sth" in name
    if sth:  # DATASET sth: one frame per segment (slowfast/datasets/ssv2.py), DATA.RANDOM_FLIP False (config.yaml)
        assert d["sampling"] == "uniform" and d["hflip"] is False
        # frames are JPEGs read with cv2 (ssv2.py / sth dataset): the networks take B, G, R
        assert d["channel_order"] == "BGR"
    else:
        assert (d["sampling"], d["stride"], d["hflip"]) == ("dense", stride, True)
        # DATASET kinetics decodes videos with decord (RGB); DATASET hmdb reads JPEG frames with cv2
        # (slowfast/datasets/hmdb.py, utils.retry_load_images), never converted: B, G, R
        assert d["channel_order"] == ("BGR" if "hmdb51" in name else "RGB")
    # test: DATA.TEST_CROP_SIZE 224 (run.sh / test.sh) as the short side; views summed as raw logits (ENSEMBLE_METHOD)
    assert (d["test_clips"], d["test_crops"], d["short_side"], d["input_size"]) == (*views, 224, 224)
    assert d["view_aggregation"] == "sum_logits"
    # config.yaml TRAIN_JITTER_SCALES_RELATIVE [0.08, 1.0], TRAIN_JITTER_ASPECT_RELATIVE [0.75, 1.3333]
    assert d["random_resized_crop"] is True and d["rrc_scale"] == [0.08, 1.0] and d["rrc_ratio"] == [0.75, 1.3333]
    aa = "rand-m5-n2-mstd0.25" if ("ucf101" in name or "hmdb51" in name) else "rand-m7-n4-mstd0.5-inc1"
    assert d["rand_augment"] == aa  # AUG.AA_TYPE (config.yaml)
    # AUG.RE_PROB 0.25, RE_MODE pixel; MIXUP ALPHA 0.8, CUTMIX_ALPHA 1.0, PROB 1.0, SWITCH_PROB 0.5,
    # LABEL_SMOOTH_VALUE 0.1 (config.yaml)
    assert (d["random_erasing"], d["random_erasing_mode"]) == (0.25, "pixel")
    assert (d["mixup"], d["cutmix"], d["mixup_prob"], d["mixup_switch_prob"]) == (0.8, 1.0, 1.0, 0.5)
    assert d["label_smoothing"] == 0.1
    # defaults.py: DATA.MEAN [0.45] * 3, DATA.STD [0.225] * 3, SOLVER.CLIP_GRADIENT 20
    assert d["mean"] == [0.45] * 3 and d["std"] == [0.225] * 3
    assert t["clip_grad"] == 20
    # config.yaml: adamw, WEIGHT_DECAY 0.05, ZERO_WD_1D_PARAM, WARMUP_START_LR 1e-6, COSINE_END_LR 1e-6
    o, s = cfg["optim"], cfg["sched"]
    assert (o["name"], o["weight_decay"], o["no_decay_1d"]) == ("adamw", 0.05, True)
    assert (s["name"], s["warmup_lr"], s["min_lr"]) == ("cosine", 1e-6, 1e-6)
    assert d["repeated_aug"] == 0


@pytest.mark.parametrize("name", sorted(IMAGE))
def test_image_recipe_is_the_original_run(name):
    exp, model, size, drop_path, lr, wd, aa, repeats, ema, epochs, warmup, batch = IMAGE[name]
    cfg = load_recipe(CONFIGS / f"{name}.yaml")
    d, t, o, s = cfg["data"], cfg["train"], cfg["optim"], cfg["sched"]
    assert cfg["model"]["name"] == model and cfg["model"]["drop_path_rate"] == drop_path
    assert cfg["model"]["checkpoint"] is None  # trained from scratch
    assert t["batch_size"] == batch
    assert _global(cfg) == (batch * PROCESSES, pytest.approx(lr, rel=1e-9))
    assert (t["epochs"], s["warmup_epochs"]) == (epochs, warmup)
    assert (o["weight_decay"], o["eps"], o["no_decay_1d"]) == (wd, 1e-8, True)
    assert (s["name"], s["warmup_lr"], s["min_lr"]) == ("cosine", 1e-6, 1e-5)  # --warmup-lr, --min-lr
    assert cfg["ema"]["enabled"] is True and cfg["ema"]["decay"] == ema
    assert d["repeated_aug"] == repeats and d["num_sample"] == 1
    assert d["rand_augment"] == aa
    # datasets.py build_transform: timm create_transform(is_training) with --train-interpolation bicubic, RRC
    # 0.08-1 / 3/4-4/3, flip 0.5; test Resize(int(256 / 224 x size), bicubic) + CenterCrop(size)
    assert (d["input_size"], d["short_side"], d["interpolation"]) == (size, int(256 / 224 * size), "bicubic")
    assert d["random_resized_crop"] is True and d["rrc_scale"] == [0.08, 1.0] and d["rrc_ratio"] == [0.75, 1.3333]
    assert d["hflip"] is True and (d["test_clips"], d["test_crops"]) == (1, 1)
    # --reprob 0.25 --remode pixel, --mixup 0.8 --cutmix 1.0 --mixup-prob 1 --mixup-switch-prob 0.5, --smoothing 0.1
    assert (d["random_erasing"], d["random_erasing_mode"]) == (0.25, "pixel")
    assert (d["mixup"], d["cutmix"], d["mixup_prob"], d["mixup_switch_prob"], d["label_smoothing"]) == \
        (0.8, 1.0, 1.0, 0.5, 0.1)
    # IMAGENET_DEFAULT_MEAN / STD (timm), RGB from PIL; --clip-grad default None
    assert d["mean"] == [0.485, 0.456, 0.406] and d["std"] == [0.229, 0.224, 0.225]
    assert d["channel_order"] == "RGB" and t["clip_grad"] is None


def test_recipes_imply_their_class_counts():
    """`uniformer info --config` builds the model with the class count of the dataset (K400: 400, not 1000)."""
    expected = {"_k400": 400, "_k600": 600, "_sthv1_": 174, "_sthv2_": 174, "_ucf101_": 101, "_hmdb51_": 51,
                "in1k_": 1000}
    for path in CONFIGS.glob("*.yaml"):
        if path.stem.startswith("demo"):
            continue
        (count,) = [v for k, v in expected.items() if k in path.stem]
        assert load_recipe(path)["data"]["num_classes"] == count, path.name
