"""Find the image and label columns of an image-classification dataset.

Hub datasets name these columns differently (`img` in CIFAR-10, `image` in most others, `label`,
`labels`, `fine_label` in CIFAR-100, ...). Every entry point of hf-fst takes optional
`image_column=` / `label_column=` arguments and falls back to this detection, so a user only has
to name a column when the dataset is genuinely ambiguous.
"""

from __future__ import annotations

from typing import Any

from datasets import ClassLabel, Image, Value

__all__ = ["IMAGE_COLUMN_NAMES", "LABEL_COLUMN_NAMES", "resolve_columns"]

# Names tried in order when no column is given and no single feature of the right type exists.
IMAGE_COLUMN_NAMES: tuple[str, ...] = ("image", "img", "images", "pixel_values", "picture", "photo")
LABEL_COLUMN_NAMES: tuple[str, ...] = (
    "label",
    "labels",
    "fine_label",
    "class",
    "classes",
    "target",
    "category",
    "label_id",
    "class_id",
)


def _column_names(dataset: Any) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None and getattr(dataset, "features", None) is not None:
        names = list(dataset.features)
    if names is None:
        raise ValueError(
            f"dataset=: expected a datasets.Dataset or datasets.IterableDataset with known columns, got "
            f"{type(dataset).__name__}; pass one split (dataset['train']) or call `.cast(...)` to set its features"
        )
    return list(names)


def _is_integer_label(feature: Any) -> bool:
    if isinstance(feature, ClassLabel):
        return True
    return isinstance(feature, Value) and feature.dtype.startswith(("int", "uint"))


def _pick(
    argument: str, given: str | None, names: list[str], features: dict, preferred: tuple[str, ...], typed: list[str]
) -> str:
    if given is not None:
        if given not in names:
            raise ValueError(f"{argument}={given!r} is not a column of the dataset; its columns are {names}")
        return given
    if len(typed) == 1:
        return typed[0]
    candidates = [name for name in preferred if name in names]
    if len(typed) > 1:
        candidates = [name for name in candidates if name in typed] or typed
    if len(candidates) == 1:
        return candidates[0]
    kind = "image" if argument == "image_column" else "label"
    if not candidates:
        raise ValueError(
            f"{argument}=: no {kind} column found among the dataset's columns {names}; "
            f"pass {argument}='<name>' to say which one holds the {kind}s"
        )
    raise ValueError(
        f"{argument}=: several possible {kind} columns {candidates} among the dataset's columns {names}; "
        f"pass {argument}='<name>' to choose one"
    )


def resolve_columns(dataset: Any, image_column: str | None = None, label_column: str | None = None) -> tuple[str, str]:
    """Return `(image_column, label_column)` for `dataset`, detecting the ones not given.

    Detection prefers the feature type (the only `Image` feature, the only `ClassLabel` feature) and
    then the usual names (`image`, `img`, `label`, `labels`, `fine_label`, ...). Works for
    `datasets.Dataset` and `datasets.IterableDataset` (only `.features` / `.column_names` are read,
    nothing is iterated).

    Raises:
        ValueError: a given column does not exist, or none or several candidates were found; the message names
            the argument, lists the dataset's columns and says how to fix it.
    """
    names = _column_names(dataset)
    features = dict(getattr(dataset, "features", None) or {})
    image_typed = [name for name in names if isinstance(features.get(name), Image)]
    label_typed = [name for name in names if isinstance(features.get(name), ClassLabel)]
    if not label_typed:
        label_typed = [name for name in names if name in LABEL_COLUMN_NAMES and _is_integer_label(features.get(name))]
    image = _pick("image_column", image_column, names, features, IMAGE_COLUMN_NAMES, image_typed)
    label = _pick("label_column", label_column, names, features, LABEL_COLUMN_NAMES, label_typed)
    if image == label:
        raise ValueError(
            f"image_column= and label_column= both resolve to {image!r}; the dataset's columns are {names}; "
            "pass the two columns explicitly"
        )
    return image, label
