"""Top-down human pose estimation with UniFormer backbones (COCO keypoints recipes of the paper).

`Task` is the engine's view of it; `uniformer.tasks.open(checkpoint)` gives it with its trained model for
`Task.predict` (`<stem>_pose.png` + `<stem>.json`), in person boxes from `read_person_boxes` (`--boxes`, a
COCO detections JSON) or `boxes_from_detector` (`--detector`, this package's detector).
`complexity(variants=..., input_sizes=((256, 192), ...))` counts parameters and GFLOPs.

Recipe sections: `Task.schema`. Not told by the keys: data.val.detections is a person detection results JSON;
data.flip_pairs, skeleton and sigmas null are COCO's; data.input_size is [width, height], data.heatmap_size null
a quarter of it; test.post_process is default or unbiased (DARK); model.checkpoint is ours or an original mmpose
file.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from uniformer.profiling import count_gflops, count_params

from ..dense.coco import coco_ground_truth, evaluate_coco
from ..dense.io import resolve_path
from ..dense.synthetic import COCO_FLIP_PAIRS, COCO_SKELETON, write_pose_coco
from ..dense.task import DenseTask
from ..dense.visualize import draw_keypoints
from .data import PoseDataset, pose_collate
from .decoding import COCO_SIGMAS, decode_heatmaps, estimate_poses, rescore_and_nms, topdown_heatmaps
from .head import HeatmapHead, TopDownPose, joints_mse_loss

__all__ = ["Task", "read_person_boxes", "boxes_from_detector", "complexity", "recipe_complexity"]

STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def _flip_pairs(cfg) -> list[tuple[int, int]]:
    return [tuple(p) for p in (cfg["data"]["flip_pairs"] or COCO_FLIP_PAIRS)]


def _sigmas(cfg) -> np.ndarray:
    s = cfg["data"]["sigmas"]
    sigmas = np.asarray(s if s is not None else COCO_SIGMAS, float)
    if len(sigmas) != int(cfg["data"]["num_joints"]):
        raise ValueError(f"data.sigmas has {len(sigmas)} values for {cfg['data']['num_joints']} joints")
    return sigmas


def _predict_people(model: nn.Module, dataset: PoseDataset, cfg: Mapping, batches):
    """Keypoints of every person box in `batches` ((indices, pose_collate batch) pairs), unreadable image ids."""
    people, seen, indices = [], set(), []
    for batch_indices, batch in batches:
        indices += batch_indices
        if batch is None:
            continue
        t = cfg["test"]
        heat = topdown_heatmaps(model, batch["img"], _flip_pairs(cfg), bool(t["flip"]), bool(t["shift_heatmap"]))
        centers, scales = np.stack(batch["center"]), np.stack(batch["scale"])
        coords, maxvals = decode_heatmaps(heat, centers, scales, t["post_process"], int(t["modulate_kernel"]))
        for j in range(len(coords)):
            people.append({"image_id": batch["image_id"][j], "keypoints": np.concatenate(
                [coords[j], maxvals[j][:, None]], 1), "box_score": batch["score"][j], "area": batch["area"][j]})
            seen.add(batch["index"][j])
    skipped = sorted({dataset.samples[i]["image_id"] for i in indices if i not in seen})
    return people, skipped, indices


def _rescore_and_nms(people: list[dict], cfg: Mapping) -> list[dict]:
    """Per image: person score = box score × mean confidence of its joints above vis_thr, then OKS-NMS."""
    by_image: dict = {}
    for p in people:
        by_image.setdefault(p["image_id"], []).append(p)
    t = cfg["test"]
    return [kept for plist in by_image.values()
            for kept in rescore_and_nms(plist, float(t["vis_thr"]), float(t["oks_thr"]), _sigmas(cfg))]


def _coco_keypoint_eval(dataset: PoseDataset, results: list[dict], image_ids: Sequence, sigmas: np.ndarray) -> dict:
    """OKS AP / AR with pycocotools' COCOeval ('keypoints') over the usable images that were predicted."""
    dt = [{"image_id": r["image_id"], "category_id": 1, "score": float(r["score"]),
           "keypoints": [float(v) for v in r["keypoints"].reshape(-1)]} for r in results]
    return evaluate_coco(coco_ground_truth(dataset.index, keypoints=True), dt, "keypoints", image_ids, STAT_NAMES,
                         sigmas)


class Task(DenseTask):
    """Top-down pose estimation on COCO-style keypoint annotations (ground-truth or detected person boxes)."""

    name = "pose"
    min_batch = 2  # BatchNorm in the heads
    schema = {
        "model": {
            "backbone": {"name": "uniformer_small", "stage3": "global", "window_size": 14, "drop_path_rate": 0.2,
                         "pretrained": None, "kwargs": {}},
            "num_deconv": 3, "deconv_channels": 256, "final_kernel": 1, "checkpoint": None, "skip_mismatched": False,
        },
        "data": {
            "root": "data/coco",
            "train": {"annotations": "annotations/person_keypoints_train2017.json", "images": "train2017",
                      "detections": None},
            "val": {"annotations": "annotations/person_keypoints_val2017.json", "images": "val2017",
                    "detections": "person_detection_results/COCO_val2017_detections_AP_H_56_person.json"},
            "num_joints": 17, "flip_pairs": None, "skeleton": None, "sigmas": None,
            "upper_body_ids": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            "input_size": [192, 256], "heatmap_size": None, "sigma": 2.0, "bbox_padding": 1.25, "det_bbox_thr": 0.0,
            "flip_prob": 0.5, "half_body_prob": 0.3, "half_body_min_joints": 8, "scale_factor": 0.5, "rot_factor": 40,
            "rot_prob": 0.6, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        },
        "train": {"epochs": 210, "batch_size": 64, "num_workers": 4, "log_every": 50},
        "optim": {"lr": 2e-3, "weight_decay": 0.01},
        "sched": {"name": "step", "warmup_iters": 500, "warmup_ratio": 0.001, "steps": [170, 200], "gamma": 0.1},
        "checkpoint": {"every": 5, "best_metric": "val_AP"},
        "test": {"flip": True, "shift_heatmap": True, "post_process": "default", "modulate_kernel": 11, "vis_thr": 0.2,
                 "oks_thr": 0.9, "use_gt_bbox": False, "batch_size": 32},
    }
    dataset_class = PoseDataset
    meta_keys = ("num_joints",)
    collate = staticmethod(pose_collate)
    prepare_demo = staticmethod(write_pose_coco)
    demo_bar = {"AP": 0.5}
    predict_options = ("boxes",)
    picture_suffix = "pose"

    def batch_size(self, batch) -> int:
        return len(batch["index"])

    def build_model(self, for_training: bool = True) -> TopDownPose:
        m, d = self.cfg["model"], self.cfg["data"]
        w, h = d["input_size"]
        if w % 32 or h % 32:
            raise ValueError(f"data.input_size {w}x{h}: width and height must be multiples of 32 (the heatmaps are "
                             "the backbone's stride-32 map upsampled 8x)")
        backbone = self._backbone(for_training, out_indices=(3,))
        for i in (1, 2, 3):  # the output norms of the stages the head does not read: kept (original
            norm = getattr(backbone, f"norm{i}", None)  # checkpoints hold them), not trained (DDP needs every
            if norm is not None:  # trained parameter to receive a gradient)
                norm.requires_grad_(False)
        head = HeatmapHead(backbone.feature_info.channels()[-1], int(d["num_joints"]), int(m["num_deconv"]),
                           int(m["deconv_channels"]), int(m["final_kernel"]))
        return self._initial_weights(TopDownPose(backbone, head), for_training)

    def training_step(self, model: nn.Module, batch: dict) -> dict:
        heat, target = model(batch["img"]), batch["target"]
        if heat.shape != target.shape:
            raise ValueError(f"heatmaps {tuple(heat.shape)} vs targets {tuple(target.shape)}: data.heatmap_size must "
                             "be a quarter of data.input_size")
        return {"loss_kpt": joints_mse_loss(heat.float(), target, batch["target_weight"])}

    def eval_collate(self, items: list):
        return [i for i, _ in items], pose_collate([sample for _, sample in items])

    def evaluate(self, model: nn.Module, dataset: PoseDataset, batches) -> dict:
        people, skipped, indices = _predict_people(model, dataset, self.cfg, batches)
        return {"people": people, "skipped": skipped, "image_ids": [dataset.samples[i]["image_id"] for i in indices]}

    def merge(self, dataset: PoseDataset, parts: Sequence[dict]) -> dict:
        results = _rescore_and_nms([p for part in parts for p in part["people"]], self.cfg)
        skipped = sorted({s for part in parts for s in part["skipped"]})
        image_ids = {i for part in parts for i in part["image_ids"]} - set(skipped)
        stats = _coco_keypoint_eval(dataset, results, image_ids, _sigmas(self.cfg))
        return {**stats, "num_images": len(image_ids), "num_people": len(results), "skipped_images": skipped}

    def demo_examples(self, model: nn.Module, out_dir: Path, show: int = 4) -> list[dict]:
        """Skeletons on a few validation images, in their ground-truth person boxes (a top-down model needs boxes)."""
        index = PoseDataset(self.cfg, "val", train=False).index
        boxes = {index.images[iid]["file_name"]: [[a["box"][0], a["box"][1], a["box"][2] - a["box"][0],
                                                   a["box"][3] - a["box"][1]] for a in anns]
                 for iid, anns in list(index.annotations.items())[:show]}
        folder = resolve_path(self.cfg, self.cfg["data"]["val"]["images"])
        return self.predict(model, [folder / n for n in boxes], out_dir, boxes=boxes)

    def predict_image(self, model: nn.Module, image: np.ndarray, path: Path,
                      boxes: Mapping[str, Sequence[Sequence[float]]] | None = None):
        """Keypoints of the people in `boxes[path.name]` (`[x, y, w, h]` or `[x, y, w, h, score]`, from a
        detector; without an entry the whole image is one person): those the evaluation keeps (rescored,
        OKS-NMS), in the order of their boxes."""
        h, w = image.shape[:2]
        given = boxes is not None and path.name in boxes
        person_boxes = boxes[path.name] if given else [[0, 0, w, h, 1.0]]
        people = sorted(estimate_poses(model, image, person_boxes, self.cfg["data"], self.cfg["test"],
                                       _flip_pairs(self.cfg), _sigmas(self.cfg)), key=lambda p: p["index"]) \
            if person_boxes else []
        fields = {"people": [{"box_index": p["index"], "box": p["box"], "score": float(p["score"]),
                              "keypoints": [[float(x), float(y), float(v)] for x, y, v in p["keypoints"]]}
                             for p in people]}
        if boxes is not None and not given:
            fields["boxes"] = "none given for this image: the whole image is one person"
        return fields, people

    def draw(self, image: np.ndarray, output):
        skeleton = [tuple(p) for p in (self.cfg["data"]["skeleton"] or COCO_SKELETON)]
        return draw_keypoints(image, [p["keypoints"] for p in output], skeleton, float(self.cfg["test"]["vis_thr"]))


def read_person_boxes(path: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> dict[str, list]:
    """Person boxes of `--boxes FILE` by image file name: a COCO detections JSON (a list of {image_id,
    category_id, bbox [x, y, w, h], score}; ids matched to the inputs' numeric file stems as in COCO, or a
    `file_name` per detection; category 1, person, only), or a mapping {file name: [[x, y, w, h(, score)], ...]}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--boxes {path} does not exist") from None
    except ValueError as e:
        raise ValueError(f"--boxes {path}: not valid JSON ({e})") from None
    if isinstance(data, dict):
        return {str(k): [list(map(float, b)) for b in v] for k, v in data.items()}
    if not isinstance(data, list):
        raise ValueError(f"--boxes {path}: expected a COCO detections list or a mapping of file names to boxes")
    by_id = {str(int(Path(item).stem)): Path(item).name for item in inputs if Path(item).stem.isdigit()}
    out: dict[str, list] = {}
    for i, det in enumerate(data):
        if not isinstance(det, dict) or "bbox" not in det:
            raise ValueError(f"--boxes {path}: detection {i} has no bbox")
        name = det.get("file_name") or by_id.get(str(det.get("image_id")))
        if det.get("category_id", 1) == 1 and name is not None:
            box = [*map(float, det["bbox"][:4]), float(det.get("score", 1.0))]
            out.setdefault(Path(str(name)).name, []).append(box)
    if not out:
        raise ValueError(f"--boxes {path}: no person box belongs to an input (image_id matches a numeric file "
                         "name, as in COCO, or give file_name per detection)")
    return out


def boxes_from_detector(detector, inputs, score_thr: float = 0.3) -> dict[str, list]:
    """Person boxes `[x, y, w, h, score]` by file name from a detection model opened by `uniformer.tasks.open`
    (its `person` class, or every class when it has none), as the original top-down demo ran mmdet first."""
    person = "person" in detector.task.classes
    return {Path(r["image"]).name: [[d["box"][0], d["box"][1], d["box"][2] - d["box"][0], d["box"][3] - d["box"][1],
                                     d["score"]] for d in r["detections"] if not person or d["name"] == "person"]
            for r in detector.predict(inputs, score_thr=score_thr) if "error" not in r}


def complexity(variants: Sequence[str] = ("uniformer_small", "uniformer_base"),
               input_sizes: Sequence[Sequence[int]] = ((256, 192), (384, 288), (448, 320))) -> list[dict]:
    """Parameters and GFLOPs (multiply-adds, one crop) of the composed pose networks; sizes are (height, width)."""
    return [recipe_complexity(Task.load_recipe({"model": {"backbone": {"name": name}}, "data": {"input_size": [w, h]}}))
            for name in variants for h, w in input_sizes]


def recipe_complexity(cfg: Mapping, input_size: Sequence[int] | None = None) -> dict:
    """Parameters and GFLOPs of the pose network of a resolved recipe at `input_size` (default: data.input_size)."""
    w, h = cfg["data"]["input_size"]
    size = list(input_size) if input_size else [h, w]
    model = Task(cfg).build_model(for_training=False).eval()
    return {"model": f"{cfg['model']['backbone']['name']} + heatmap head", "input": size,
            "params": count_params(model), "gflops": count_gflops(model, (3, *size))}
