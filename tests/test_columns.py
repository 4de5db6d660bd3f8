import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage

from hf_fst.columns import resolve_columns


def _dataset(columns: dict[str, object]) -> Dataset:
    picture = PILImage.fromarray(np.zeros((4, 4, 3), dtype=np.uint8))
    data, features = {}, {}
    for name, feature in columns.items():
        features[name] = feature
        data[name] = (
            [picture] * 2
            if isinstance(feature, Image)
            else [0, 1]
            if not isinstance(feature, Value) or feature.dtype != "string"
            else ["a", "b"]
        )
    return Dataset.from_dict(data, features=Features(features))


CLASSES = ClassLabel(names=["a", "b"])


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({"img": Image(), "label": CLASSES}, ("img", "label")),
        ({"image": Image(), "labels": CLASSES}, ("image", "labels")),
        ({"image": Image(), "fine_label": CLASSES, "coarse_label": CLASSES}, ("image", "fine_label")),
        ({"photo_x": Image(), "y": CLASSES}, ("photo_x", "y")),  # found by feature type alone
        ({"image": Image(), "label": Value("int64"), "caption": Value("string")}, ("image", "label")),
    ],
)
def test_detects_columns(columns, expected):
    assert resolve_columns(_dataset(columns)) == expected


def test_explicit_columns_win_and_work_for_iterable_datasets():
    ds = _dataset({"a": Image(), "b": Image(), "label": CLASSES})
    assert resolve_columns(ds, image_column="b") == ("b", "label")
    assert resolve_columns(ds.to_iterable_dataset(), image_column="a") == ("a", "label")


def test_missing_column_message_names_argument_and_lists_columns():
    ds = _dataset({"img": Image(), "label": CLASSES})
    with pytest.raises(ValueError, match=r"label_column='target' is not a column.*\['img', 'label'\]"):
        resolve_columns(ds, label_column="target")
    no_label = _dataset({"img": Image(), "caption": Value("string")})
    with pytest.raises(ValueError, match=r"^label_column=: no label column.*\['img', 'caption'\].*pass label_column="):
        resolve_columns(no_label)


def test_ambiguous_columns_are_an_error():
    ds = _dataset({"a": Image(), "b": Image(), "label": CLASSES})
    with pytest.raises(ValueError, match=r"^image_column=: several possible image columns \['a', 'b'\]"):
        resolve_columns(ds)
    two_labels = _dataset({"image": Image(), "x": CLASSES, "z": CLASSES})
    with pytest.raises(ValueError, match=r"label_column=: several possible label columns"):
        resolve_columns(two_labels)
