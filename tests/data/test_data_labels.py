"""Class names shipped with the package: lengths, known entries at known indices, order."""
from __future__ import annotations

import pytest

from uniformer.data import class_names


def test_imagenet_names_come_from_timm():
    names = class_names("imagenet-1k")
    assert len(names) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet tissue"


def test_kinetics_400_in_the_order_of_the_released_weights():
    names = class_names("kinetics-400")
    assert len(names) == 400 == len(set(names))
    # the class index of the UniFormer authors' demo, not alphabetical
    assert names[:3] == ["riding a bike", "marching", "dodgeball"]
    assert names[341] == "abseiling" and names[399] == "playing badminton"


def test_kinetics_400_is_the_same_set_as_torchvision():
    tv = pytest.importorskip("torchvision.models._meta")._KINETICS400_CATEGORIES
    assert {n.lower() for n in class_names("kinetics-400")} == {n.lower() for n in tv}


def test_kinetics_600():
    names = class_names("kinetics-600")
    assert len(names) == 600 == len(set(names))
    assert names[0] == "abseiling" and names[-1] == "zumba" and "alligator wrestling" in names
    assert set(class_names("kinetics-400")) - set(names)  # K600 renamed a few K400 classes


def test_something_something_v2_follows_labels_json():
    names = class_names("something-something-v2")
    assert len(names) == 174 == len(set(names))
    # indices of the dataset's labels.json
    assert names[0] == "Approaching something with your camera"
    assert names[16] == "Holding something"
    assert names[134] == "Something falling like a feather or paper"
    assert names[160] == "Touching (without moving) part of something"


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="cifar-10.*kinetics-400"):
        class_names("cifar-10")
