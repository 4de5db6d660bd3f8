"""How one `datasets.map` batch is poisoned, in Arrow: only the selected rows are decoded, triggered and re-encoded.

Shared by the map-style path (`hf_fst.attacks.poison`) and the streaming path (`hf_fst.attacks.streaming`): rows
that are not selected keep their original encoded bytes and never become Python objects.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Image
from PIL import Image as PILImage

from hf_fst.attacks.registry import get_attack

__all__ = ["COVER", "NEW_COLUMNS", "POISON", "TEST", "check_rate", "decode_colors", "grouped", "transform_table"]

NEW_COLUMNS = ("is_poisoned", "original_label", "trigger_kind")


POISON, COVER, TEST = 1, 2, 3


_KIND_NAMES = {POISON: "poison", COVER: "cover", TEST: "test"}


def check_rate(poison_rate: Any) -> float:
    if isinstance(poison_rate, bool) or not isinstance(poison_rate, (int, float, np.floating, np.integer)):
        raise ValueError(f"poison_rate={poison_rate!r}: expected a number in (0, 1], e.g. 0.05 for 5%")
    rate = float(poison_rate)
    if not 0 < rate <= 1:
        raise ValueError(f"poison_rate={poison_rate!r}: expected a share of the rows in (0, 1], e.g. 0.05 for 5%")
    return rate


def _decode(
    value: Any, feature: Image, image_size: tuple[int, int] | None, resample: str = "bilinear"
) -> PILImage.Image:
    """Decode one raw image value to a PIL image in a mode the triggers handle (RGB, L, RGBA, LA)."""
    image = dataclasses.replace(feature, decode=True).decode_example(value)
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("1", "I", "I;16", "I;16B", "I;16L", "F"):
        image = image.convert("L")
    elif mode == "La":
        image = image.convert("LA")
    elif mode not in ("RGB", "L", "RGBA", "LA"):
        image = image.convert("RGB")
    if image_size is not None and image.size != (image_size[1], image_size[0]):
        image = image.resize((image_size[1], image_size[0]), PILImage.Resampling[resample.upper()])
    return image


def _split_alpha(image: PILImage.Image) -> tuple[np.ndarray, np.ndarray | None]:
    array = np.asarray(image, dtype=np.uint8)
    if image.mode == "L":
        return array[..., None], None
    if image.mode == "LA":
        return array[..., :1], array[..., 1]
    if image.mode == "RGBA":
        return array[..., :3], array[..., 3]
    return array, None


def _encode(color: np.ndarray, alpha: np.ndarray | None) -> dict[str, Any]:
    if alpha is not None:
        color = np.concatenate([color, alpha[..., None]], axis=-1)
    elif color.shape[-1] == 1:
        color = color[..., 0]
    buffer = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(color)).save(buffer, format="PNG", compress_level=1)
    return {"bytes": buffer.getvalue(), "path": None}


def decode_colors(
    values: list[Any], feature: Image, image_size: tuple[int, int] | None, resample: str = "bilinear"
) -> list[np.ndarray]:
    return [_split_alpha(_decode(value, feature, image_size, resample))[0] for value in values]


def grouped(shapes: list[tuple[int, ...]], keys: list[Any]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for position, (shape, key) in enumerate(zip(shapes, keys, strict=True)):
        groups.setdefault((key, *shape), []).append(position)
    return groups


def transform_table(
    table: pa.Table,
    indices: list[int],
    *,
    image_column: str,
    label_column: str,
    image_feature: Image,
    attack_config: dict[str, Any],
    plan_indices: np.ndarray,
    plan_kinds: np.ndarray,
    plan_seeds: np.ndarray,
    plan_labels: np.ndarray,
    prepared: dict[int, np.ndarray] | None,
) -> pa.Table:
    """One map batch, in Arrow: untouched rows are never turned into Python objects."""
    labels = table.column(label_column)
    num_rows = table.num_rows
    rows = np.asarray(indices, dtype=np.int64)
    where = np.searchsorted(plan_indices, rows)
    hit = where < len(plan_indices)
    hit[hit] = plan_indices[where[hit]] == rows[hit]
    positions = np.flatnonzero(hit)
    is_poisoned = np.zeros(num_rows, dtype=bool)
    attack = get_attack(attack_config["name"], **{k: v for k, v in attack_config.items() if k != "name"})
    trigger_kind = np.zeros(num_rows, dtype=np.int8) if attack.is_training_time else None
    if len(positions):
        all_kinds = plan_kinds[where[positions]]
        new_labels = labels.to_numpy().astype(np.int64)
        new_labels[positions] = plan_labels[where[positions]]
        is_poisoned[positions] = all_kinds != COVER
        table = table.set_column(
            table.column_names.index(label_column), label_column, pa.array(new_labels, type=labels.type)
        )
        if trigger_kind is not None:
            # Training-time attacks: the training loop triggers poisoned and cover rows; only test rows are stored.
            trained = all_kinds != TEST
            trigger_kind[positions[trained]] = all_kinds[trained]
            positions = positions[~trained]
    if len(positions):
        images = table.column(image_column).combine_chunks()
        decoded = [
            _decode(value, image_feature, attack.image_size, attack.resample)
            for value in images.take(positions).to_pylist()
        ]
        colors, alphas = (list(x) for x in zip(*(_split_alpha(image) for image in decoded), strict=True))
        slots = where[positions]
        kinds = plan_kinds[slots]
        if prepared:
            for j, row in enumerate(rows[positions].tolist()):
                if kinds[j] == POISON and row in prepared:
                    colors[j] = prepared[row]
        for (kind, *_), members in grouped([c.shape for c in colors], kinds.tolist()).items():
            out = attack.apply_in_view(
                np.stack([colors[m] for m in members]), _KIND_NAMES[kind], plan_seeds[slots[members]]
            )
            for m, image in zip(members, out, strict=True):
                colors[m] = image
        encoded = pa.array([_encode(c, a) for c, a in zip(colors, alphas, strict=True)], type=images.type)
        order = np.arange(num_rows)
        order[positions] = num_rows + np.arange(len(positions))
        new_images = pa.concat_arrays([images, encoded]).take(pa.array(order))
        table = table.set_column(table.column_names.index(image_column), image_column, new_images)
    table = table.append_column("is_poisoned", pa.array(is_poisoned))
    table = table.append_column("original_label", labels)
    if trigger_kind is not None:
        table = table.append_column("trigger_kind", pa.array(trigger_kind))
    return table
