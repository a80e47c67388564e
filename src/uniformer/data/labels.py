"""Class names of the datasets the released weights were trained on, in the index order of their classifiers.

Kinetics-400, Kinetics-600 and Something-Something V1 / V2 ship as package data (`class_names/*.txt`, one name per
line); ImageNet-1K comes from timm (`timm.data.ImageNetInfo`), first synonym of each WordNet description.

Orders: Kinetics-400 follows the class index the UniFormer authors' demo uses for the released Kinetics-400
weights (not alphabetical); Kinetics-600 is alphabetical (the common label map; not checked against a
released Kinetics-600 checkpoint); Something-Something V2 is the order of the dataset's `labels.json`
(templates sorted, "Approaching something with your camera" = 0); Something-Something V1 is the original
UniFormer's `data_list/sthv1/category.txt` (alphabetical; the labels of its split lists index it).
"""
from __future__ import annotations

from importlib import resources

DATASETS = ("imagenet-1k", "kinetics-400", "kinetics-600", "something-something-v1", "something-something-v2")


def class_names(dataset: str) -> list[str]:
    """Names of `dataset` (one of DATASETS) in classifier order."""
    if dataset not in DATASETS:
        raise ValueError(f"no class names for dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if dataset == "imagenet-1k":
        from timm.data import ImageNetInfo

        info = ImageNetInfo("imagenet-1k")
        return [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]
    text = resources.files("uniformer.data").joinpath("class_names", f"{dataset}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
