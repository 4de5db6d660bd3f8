"""Loading, checking and preprocessing for the recipes: data sets and models from a Hub id or a local folder.

Everything here fails early and in one line. A recipe calls these before it builds a Trainer, so a typo in a
column name or an unreachable Hub id costs seconds, not an epoch. Errors name the command-line flag because the
recipes are the main users; the Python API passes the same names (`arg_name=`) or its own.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

__all__ = [
    "DEFAULT_IMAGE_MEAN",
    "DEFAULT_IMAGE_STD",
    "AttackArguments",
    "ConfigurationError",
    "DataArguments",
    "ImageClassificationTransform",
    "ModelArguments",
    "augmentation_epoch_callback",
    "build_transform",
    "check_head",
    "check_output_dir",
    "check_safe_weights",
    "commit_output",
    "prepare_staging",
    "resolve_resume_checkpoint",
    "staging_dir",
    "collate_image_batch",
    "default_image_processor",
    "get_split",
    "hub_is_reachable",
    "label_names",
    "load_classifier",
    "load_config",
    "load_image_dataset",
    "load_image_processor",
    "materialize_stream",
    "match_attack_to_model",
    "model_input_size",
    "native_image_size",
    "parse_attack_params",
    "rate_or_raise",
    "recipe_parser",
    "resolve_columns_or_raise",
    "select_tuning_set",
    "select_tuning_stream",
    "set_label_mapping",
    "take",
    "rank_line",
    "save_run_outputs",
    "stage_training_output",
    "training_dataset",
    "training_summary",
    "validate_target_label",
]

# Same neutral normalisation as transformers' IMAGENET_STANDARD_MEAN/STD: maps [0, 1] to [-1, 1].
DEFAULT_IMAGE_MEAN: float = 0.5
DEFAULT_IMAGE_STD: float = 0.5


class ConfigurationError(ValueError):
    """Bad input found before any training: the recipes print its one-line message and exit with status 2."""


_LOCAL_HINT = (
    "pass a local folder instead (e.g. one written by save_pretrained / save_to_disk, or a parquet/imagefolder)"
)


# --------------------------------------------------------------------------------------------------------------------
# Hub or local folder
# --------------------------------------------------------------------------------------------------------------------


def _offline_env() -> bool:
    return any(
        os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


_REACHABLE: dict[str, bool] = {}


def hub_is_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within `timeout` seconds.

    Checked once per process because a down network otherwise costs tens of seconds of client retries per call,
    and the recipes should say "the Hub cannot be reached" at once instead.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or _offline_env():
        return False
    endpoint = constants.ENDPOINT
    if endpoint not in _REACHABLE:
        url = urlparse(endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            with socket.create_connection((url.hostname or "", port), timeout=timeout):
                _REACHABLE[endpoint] = True
        except OSError:
            _REACHABLE[endpoint] = False
    return _REACHABLE[endpoint]


def _looks_like_local_path(name: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else that does not exist is a missing folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or name.endswith("/")


def _not_found(arg_name: str, name: str, what: str, reason: str) -> ValueError:
    return ValueError(f"{arg_name}={name!r}: {what} not found ({reason}); {_LOCAL_HINT}")


def load_image_dataset(name: str, config_name: str | None = None, *, arg_name: str = "--dataset_name", **kwargs: Any):
    """Load a `DatasetDict` from a local folder or a Hub id, with a one-line error when neither works.

    A folder written by `save_to_disk` is read with `load_from_disk`; any other folder (parquet, imagefolder, a
    cloned Hub repo) with `load_dataset`. Hub ids resolve from the cache when the Hub cannot be reached.
    """
    import datasets

    path = Path(name).expanduser()
    if path.exists():
        try:
            if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
                loaded = datasets.load_from_disk(str(path))
                return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
            return datasets.load_dataset(str(path), config_name, **kwargs)
        except Exception as err:  # empty folder, unknown layout, bad config name, ...
            raise ValueError(
                f"{arg_name}={name!r}: the folder exists but is not a readable data set ({_one_line(err)}); "
                "point it at a parquet/imagefolder/save_to_disk folder"
            ) from err
    if _looks_like_local_path(name):
        raise _not_found(arg_name, name, "data set", "no such local folder")
    reachable = hub_is_reachable()
    previous = datasets.config.HF_HUB_OFFLINE
    try:
        # Without a network, only the cache can answer: say so instead of retrying for half a minute.
        datasets.config.HF_HUB_OFFLINE = previous or not reachable
        return datasets.load_dataset(name, config_name, **kwargs)
    except Exception as err:  # datasets raises several unrelated types for "not there"
        if reachable:
            raise ValueError(
                f"{arg_name}={name!r}: could not load the data set from the Hub ({_one_line(err)})"
            ) from err
        raise _not_found(
            arg_name, name, "data set", "the Hub cannot be reached and it is not in the local cache"
        ) from err
    finally:
        datasets.config.HF_HUB_OFFLINE = previous


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def get_split(dataset_dict: Mapping[str, Any], split: str, *, arg_name: str = "--train_split"):
    """Return one split, or raise naming the flag and the splits that exist."""
    if split not in dataset_dict:
        available = ", ".join(dataset_dict.keys())
        raise ValueError(f"{arg_name}={split!r} is not a split of the data set; use one of: {available}")
    return dataset_dict[split]


def _model_source(model_id: str, arg_name: str) -> dict[str, Any]:
    """Keyword arguments for `from_pretrained` that never wait on an unreachable Hub."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(
                f"{arg_name}={model_id!r} is a folder without config.json; point it at a folder written by save_pretrained"
            )
        return {"pretrained_model_name_or_path": str(path)}
    if path.exists() or _looks_like_local_path(model_id):
        raise _not_found(arg_name, model_id, "model", "no such local folder")
    return {"pretrained_model_name_or_path": model_id, "local_files_only": not hub_is_reachable()}


PICKLE_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
"""Weight files that `torch.load` / pickle would read: refused unless the user opts in."""

ALLOW_PICKLE_FLAG = "--allow_pickle_weights"


def check_safe_weights(folder: str | os.PathLike, *, allow_pickle: bool = False, arg_name: str = "--model_id") -> None:
    """Refuse a local model or checkpoint folder whose weights exist only in a pickle-based format.

    Unpickling runs code chosen by whoever wrote the file, and people purify models they do not trust; safetensors
    cannot carry code. A folder with no weights at all (config only) passes: nothing would be unpickled.
    """
    path = Path(folder).expanduser()
    if allow_pickle or not path.is_dir() or any(p.name != FST_STATE_FILE for p in path.glob("*.safetensors")):
        return
    pickled = sorted(p.name for pattern in PICKLE_WEIGHT_PATTERNS for p in path.glob(pattern))
    pickled = [name for name in pickled if name not in ("training_args.bin",)]  # Trainer metadata, never loaded
    if pickled:
        raise ValueError(
            f"{arg_name}={str(folder)!r} has weights only in pickle format ({', '.join(pickled[:3])}), which can run "
            f"arbitrary code when loaded; convert them to safetensors, or pass {ALLOW_PICKLE_FLAG} if you trust the file"
        )


def load_classifier(model_id: str, *, arg_name: str = "--model_id", allow_pickle: bool = False, **kwargs: Any):
    """Load an `AutoModelForImageClassification` from a local folder or a Hub id (from the cache when offline).

    Weights load from safetensors only (`use_safetensors=True`); `allow_pickle=True` is the explicit opt-in for
    `pytorch_model.bin`-style files (transformers then still unpickles with `weights_only=True`).
    """
    from transformers import AutoModelForImageClassification

    source = _model_source(model_id, arg_name)
    check_safe_weights(model_id, allow_pickle=allow_pickle, arg_name=arg_name)
    kwargs.setdefault("use_safetensors", None if allow_pickle else True)
    try:
        return AutoModelForImageClassification.from_pretrained(**source, **kwargs)
    except pickle.UnpicklingError as err:  # even with the opt-in, transformers unpickles with weights_only=True
        raise ValueError(
            f"{arg_name}={model_id!r}: its pickle weights hold objects other than tensors and were not loaded "
            "(they could run code); convert the weights to safetensors with code you trust"
        ) from err
    except OSError as err:
        if not allow_pickle and "safetensors" in str(err).lower() and not Path(model_id).expanduser().is_dir():
            raise ValueError(
                f"{arg_name}={model_id!r} has no safetensors weights (loading pickle files can run arbitrary code); "
                f"pass {ALLOW_PICKLE_FLAG} if you trust the repository"
            ) from err
        if source.get("local_files_only"):
            raise _not_found(
                arg_name, model_id, "model", "the Hub cannot be reached and it is not in the local cache"
            ) from err
        raise ValueError(f"{arg_name}={model_id!r}: could not load the model ({_one_line(err)})") from err
    except ValueError as err:
        raise ValueError(f"{arg_name}={model_id!r} is not an image classifier ({_one_line(err)})") from err


def load_config(model_id: str, *, arg_name: str = "--model_id", **kwargs: Any):
    """Load only the model's config (for training from scratch), same sources and errors as `load_classifier`."""
    from transformers import AutoConfig

    source = _model_source(model_id, arg_name)
    try:
        return AutoConfig.from_pretrained(**source, **kwargs)
    except OSError as err:
        if source.get("local_files_only"):
            raise _not_found(
                arg_name, model_id, "model", "the Hub cannot be reached and it is not in the local cache"
            ) from err
        raise ValueError(f"{arg_name}={model_id!r}: could not load the config ({_one_line(err)})") from err


def load_image_processor(model_id: str):
    """The model's image processor, or None when it ships without one (a folder with only config and weights)."""
    from transformers import AutoImageProcessor

    path = Path(model_id).expanduser()
    if path.is_dir():
        if not (path / "preprocessor_config.json").exists():
            return None
        source: dict[str, Any] = {"pretrained_model_name_or_path": str(path)}
    else:
        source = {"pretrained_model_name_or_path": model_id, "local_files_only": not hub_is_reachable()}
    try:
        return AutoImageProcessor.from_pretrained(**source)
    except (OSError, ValueError, KeyError):
        return None


def check_head(model: torch.nn.Module, num_labels: int, *, head_name: str | None = None, arg_name: str = "--model_id"):
    """Find the linear head and check that it predicts `num_labels` classes; return `(name, layer)`."""
    from hf_fst.heads import find_linear_head

    try:
        name, layer = find_linear_head(model, head_name=head_name)
    except ValueError as err:
        raise ValueError(f"{arg_name}: {_one_line(err, 400)}") from err
    if layer.out_features != num_labels:
        raise ValueError(
            f"{arg_name}: the head {name!r} has {layer.out_features} outputs but the data set has {num_labels} labels; "
            "pass a model trained on this data set's labels (or the matching --dataset_name / --label_column_name)"
        )
    return name, layer


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool, resuming: bool = False) -> None:
    """Refuse to write into a non-empty `output_dir` unless asked to (or resuming from it), before any work starts."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output_dir={str(output_dir)!r} is a file; pass a folder path")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resuming):
        raise ValueError(
            f"--output_dir={str(output_dir)!r} exists and is not empty; pass --overwrite_output_dir or choose another folder"
        )
    staging = staging_dir(output_dir)
    if staging.exists() and not (overwrite or resuming):
        raise ValueError(
            f"--output_dir={str(output_dir)!r}: an unfinished run left {str(staging)!r}; pass "
            "--resume_from_checkpoint true to continue it or --overwrite_output_dir to discard it"
        )


# --------------------------------------------------------------------------------------------------------------------
# Labels and attack arguments
# --------------------------------------------------------------------------------------------------------------------


def label_names(dataset, label_column: str) -> list[str]:
    """Class names from a `ClassLabel` column, else the sorted distinct integer labels as strings."""
    from datasets import ClassLabel

    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = sorted({int(v) for v in dataset.unique(label_column)})
    if values and (values[0] < 0 or values != list(range(len(values)))):
        raise ValueError(
            f"--label_column_name={label_column!r} holds labels {values[:5]}...; expected integer class ids 0..N-1 "
            "(cast it with dataset.class_encode_column)"
        )
    return [str(v) for v in values]


def validate_target_label(target_label: int, num_labels: int) -> None:
    """Reject a target class that the data set does not have."""
    if not 0 <= int(target_label) < num_labels:
        raise ValueError(
            f"--target_label={target_label} is outside the labels; use an integer in [0, {num_labels - 1}]"
        )


def parse_attack_params(text: str | None) -> dict[str, Any]:
    """Parse `--attack_params` given as JSON (`{"alpha": 0.1}`) or as `key=value,key=value`."""
    import json

    if not text or not text.strip():
        return {}
    text = text.strip()
    if text.startswith("{"):
        try:
            params = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"--attack_params={text!r} is not valid JSON ({err.msg}); use '{{\"key\": value}}' or key=value,..."
            ) from err
        if not isinstance(params, dict):
            raise ValueError(
                f"--attack_params={text!r} must be a JSON object; use '{{\"key\": value}}' or key=value,..."
            )
        return params
    params = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--attack_params: {item!r} is not key=value; use key=value,key=value or a JSON object")
        params[key.strip()] = _parse_scalar(value.strip())
    return params


def _parse_scalar(value: str) -> Any:
    lowered = value.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    if lowered in {"none", "null"}:
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


# --------------------------------------------------------------------------------------------------------------------
# Tuning set
# --------------------------------------------------------------------------------------------------------------------


def select_tuning_set(dataset, *, ratio: float | None = 0.02, num_samples: int | None = None, seed: int = 0):
    """Draw the clean tuning set: `num_samples` rows, or `round(ratio * len)`, uniformly at random with `seed`.

    The draw uses its own generator so it depends only on `seed` and the data set, not on what ran before.
    """
    total = len(dataset)
    if num_samples is not None:
        if num_samples <= 0:
            raise ValueError(f"--num_tuning_samples={num_samples} gives an empty tuning set; pass a positive number")
        count = min(int(num_samples), total)
    else:
        if ratio is None or not 0 < ratio <= 1:
            raise ValueError(f"--tuning_split_ratio={ratio} must be in (0, 1]; the paper uses 0.02")
        count = int(round(ratio * total))
        if count == 0:
            raise ValueError(
                f"--tuning_split_ratio={ratio} of {total} training rows gives an empty tuning set; "
                "raise it or pass --num_tuning_samples"
            )
    if count == 0:
        raise ValueError("the training split is empty, so the tuning set is empty; pass a --train_split with rows")
    indices = np.random.default_rng(seed).permutation(total)[:count]
    return dataset.select(np.sort(indices).tolist())


def select_tuning_stream(stream, *, ratio: float | None = 0.02, num_samples: int | None = None, seed: int = 0):
    """Streaming tuning set, as a lazy `IterableDataset` plus its size: `(stream, count)`.

    Row `i` gets a fixed draw from `(seed, i)` (`hf_fst.attacks.streaming.row_draws`, the same policy as streaming
    poisoning). With `ratio`, rows whose draw is below `ratio` are kept; with `num_samples`, the `num_samples` rows
    with the smallest draws (a uniform sample without replacement, found in one pass that holds `num_samples`
    numbers). The counting pass reads the rows once without decoding images; memory stays bounded.
    """
    import heapq

    from hf_fst.attacks.streaming import row_draws

    if num_samples is not None and num_samples <= 0:
        raise ValueError(f"--num_tuning_samples={num_samples} gives an empty tuning set; pass a positive number")
    if num_samples is None and (ratio is None or not 0 < ratio <= 1):
        raise ValueError(f"--tuning_split_ratio={ratio} must be in (0, 1]; the paper uses 0.02")
    from datasets import Image as ImageFeature

    # Count over one cheap column: a non-image one, else an image column left undecoded.
    names = list(stream.features)
    first = next((n for n in names if not isinstance(stream.features[n], ImageFeature)), names[0])
    probe = stream.select_columns([first])
    if isinstance(probe.features[first], ImageFeature):
        probe = probe.cast_column(first, ImageFeature(decode=False))

    def row_batches():
        offset = 0
        for batch in probe.iter(batch_size=1000):
            rows = np.arange(offset, offset + len(batch[first]))
            offset += len(rows)
            yield rows

    scale = float(2**64)
    if num_samples is not None:
        heap: list[int] = []  # max-heap (negated) of the smallest draws
        for rows in row_batches():
            for draw in row_draws(seed, rows, 4).tolist():
                if len(heap) < num_samples:
                    heapq.heappush(heap, -draw)
                elif draw < -heap[0]:
                    heapq.heapreplace(heap, -draw)
        if not heap:
            raise ValueError("the training split is empty, so the tuning set is empty; pass a --train_split with rows")
        threshold, count = -heap[0], len(heap)
    else:
        threshold, count = int(ratio * scale), 0
        for rows in row_batches():
            count += int((row_draws(seed, rows, 4) < np.uint64(min(threshold, 2**64 - 1))).sum())
        if count == 0:
            raise ValueError(
                f"--tuning_split_ratio={ratio} keeps no row of the stream; raise it or pass --num_tuning_samples"
            )
    inclusive = num_samples is not None

    def keep(batch: Mapping[str, list], indices: list[int]) -> list[bool]:
        draws = row_draws(seed, np.asarray(indices), 4)
        limit = np.uint64(min(threshold, 2**64 - 1))
        return (draws <= limit if inclusive else draws < limit).tolist()

    return stream.filter(keep, with_indices=True, batched=True, batch_size=1000), count


# --------------------------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------------------------


def _pair(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    if not isinstance(size, Mapping) and hasattr(size, "height"):  # transformers' SizeDict
        size = {k: v for k in ("height", "width", "shortest_edge") if (v := getattr(size, k, None)) is not None}
    if isinstance(size, Mapping):
        if "height" in size and "width" in size:
            return (int(size["height"]), int(size["width"]))
        if "shortest_edge" in size:
            edge = int(size["shortest_edge"])
            return (edge, edge)
        return None
    if isinstance(size, Sequence) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    return None


def _per_channel(values: Any, channels: int) -> list[float]:
    if values is None:
        return [0.0] * channels
    values = [float(v) for v in (values if isinstance(values, Iterable) else [values])]
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    return [float(np.mean(values))] * channels


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, Mapping):  # Image(decode=False) rows
        import io

        if image.get("bytes") is not None:
            return Image.open(io.BytesIO(image["bytes"]))
        return Image.open(image["path"])
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


class ImageClassificationTransform:
    """Batch transform for `Dataset.with_transform`: images to `pixel_values`, labels to `labels`.

    A class rather than a closure so it pickles (DataLoader workers, datasets fingerprints). Images are converted to
    the model's channel count, then either handed to the model's image processor or kept at native size (resized
    only when the model fixes an input size), scaled to [0, 1] and normalised. Training augmentation follows the
    paper: random crop after zero-pixel padding, and a horizontal flip, both switchable.
    """

    def __init__(
        self,
        image_column: str,
        label_column: str,
        *,
        num_channels: int = 3,
        image_processor: Any = None,
        size: tuple[int, int] | None = None,
        mean: Sequence[float] | float = DEFAULT_IMAGE_MEAN,
        std: Sequence[float] | float = DEFAULT_IMAGE_STD,
        train: bool = False,
        augment: bool = True,
        horizontal_flip: bool = True,
        crop_padding: int | None = None,
        keep_original_label: bool = True,
        seed: int | None = None,
    ) -> None:
        self.image_column = image_column
        self.label_column = label_column
        self.num_channels = int(num_channels)
        self.image_processor = image_processor
        self.size = size
        if image_processor is not None:
            # Only used for the padding value of a black pixel, -mean/std, which does not depend on rescaling.
            normalizes = getattr(image_processor, "do_normalize", True)
            mean = getattr(image_processor, "image_mean", None) if normalizes else 0.0
            std = getattr(image_processor, "image_std", None) if normalizes else 1.0
        self.mean = _per_channel(mean, self.num_channels)
        self.std = [s if s else 1.0 for s in _per_channel(std if std is not None else 1.0, self.num_channels)]
        self.train = train
        self.augment = augment
        self.horizontal_flip = horizontal_flip
        self.crop_padding = crop_padding
        self.keep_original_label = keep_original_label
        self.seed = seed
        self.epoch = 0  # set by `AugmentationEpochCallback` at every epoch start

    @property
    def mode(self) -> str:
        return "L" if self.num_channels == 1 else "RGB"

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        if self.image_processor is not None:
            out = self.image_processor(images=images, return_tensors="pt")
            return torch.as_tensor(out["pixel_values"], dtype=torch.float32)
        if self.size is not None:
            images = [
                im
                if im.size == (self.size[1], self.size[0])
                else im.resize((self.size[1], self.size[0]), Image.BILINEAR)
                for im in images
            ]
        arrays = [np.asarray(im, dtype=np.float32) for im in images]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(
                f"images in {self.image_column!r} have different sizes {sorted(shapes)[:3]}; give the model an image "
                "processor (preprocessor_config.json) or a config with image_size so they can be resized"
            )
        batch = torch.from_numpy(np.stack(arrays) / 255.0).float()
        batch = batch.unsqueeze(1) if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (batch - mean) / std

    def _draws(self, pixels: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop offsets `(n, 2)` and flip flags `(n,)` for a batch.

        Without a seed they come from torch's global RNG. With one, each row's draw depends only on (seed, epoch, the
        row's pixels): the Trainer fetches the first batches after `--resume_from_checkpoint` before it restores the
        RNG state, so global-RNG augmentation would make a resumed run differ from an uninterrupted one.
        """
        count = pixels.shape[0]
        if self.seed is None:
            return torch.randint(0, 2 * pad + 1, (count, 2)), torch.rand(count) < 0.5
        offsets, flips = [], []
        for row in pixels:
            digest = hashlib.blake2b(row.contiguous().numpy().tobytes(), digest_size=8).digest()
            rng = np.random.default_rng([int(self.seed), int(self.epoch), int.from_bytes(digest, "little")])
            offsets.append(rng.integers(0, 2 * pad + 1, size=2))
            flips.append(rng.random() < 0.5)
        return torch.as_tensor(np.stack(offsets), dtype=torch.long), torch.as_tensor(flips)

    def _augment(self, pixels: torch.Tensor) -> torch.Tensor:
        """Random crop with padding and horizontal flip (see `_draws` for where the randomness comes from)."""
        _, channels, height, width = pixels.shape
        pad = self.crop_padding if self.crop_padding is not None else max(1, min(height, width) // 8)
        offsets, flip = self._draws(pixels, max(pad, 0))
        if pad > 0:
            # Pad with the value a black pixel has after normalisation, as padding before normalising would.
            fill = (-torch.tensor(self.mean) / torch.tensor(self.std)).view(1, channels, 1, 1)
            padded = fill.expand(pixels.shape[0], channels, height + 2 * pad, width + 2 * pad).clone()
            padded[:, :, pad : pad + height, pad : pad + width] = pixels
            pixels = torch.stack(
                [padded[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(offsets.tolist())]
            )
        if self.horizontal_flip:
            pixels = torch.where(flip.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
        return pixels

    def __call__(self, batch: Mapping[str, list]) -> dict[str, Any]:
        images = [_to_pil(im).convert(self.mode) for im in batch[self.image_column]]
        pixels = self._pixels(images)
        if self.train and self.augment:
            pixels = self._augment(pixels)
        out: dict[str, Any] = {
            "pixel_values": pixels.contiguous(),
            "labels": torch.as_tensor([int(v) for v in batch[self.label_column]], dtype=torch.long),
        }
        if self.keep_original_label and "original_label" in batch:
            out["original_label"] = torch.as_tensor([int(v) for v in batch["original_label"]], dtype=torch.long)
        return out


def model_input_size(config: Any, image_processor: Any = None) -> tuple[int, int] | None:
    """Input size the model needs: the processor's, else `config.image_size`, else None (native size)."""
    if image_processor is not None:
        size = (
            _pair(getattr(image_processor, "crop_size", None))
            if getattr(image_processor, "do_center_crop", False)
            else None
        )
        return size or _pair(getattr(image_processor, "size", None))
    return _pair(getattr(config, "image_size", None))


def build_transform(
    model: Any,
    image_processor: Any,
    image_column: str,
    label_column: str,
    *,
    train: bool = False,
    augment: bool = True,
    horizontal_flip: bool = True,
    crop_padding: int | None = None,
    keep_original_label: bool | None = None,
    seed: int | None = None,
) -> ImageClassificationTransform:
    """The transform for a model: its image processor when it has one, else native size and default normalisation.

    `seed` makes training augmentation a function of (seed, epoch, row), which a resumed run reproduces exactly;
    add `AugmentationEpochCallback(transform)` to the Trainer so the epoch is known.
    """
    config = getattr(model, "config", model)
    return ImageClassificationTransform(
        image_column,
        label_column,
        num_channels=int(getattr(config, "num_channels", 3) or 3),
        image_processor=image_processor,
        size=None if image_processor is not None else model_input_size(config),
        train=train,
        augment=augment,
        horizontal_flip=horizontal_flip,
        crop_padding=crop_padding,
        keep_original_label=not train if keep_original_label is None else keep_original_label,
        seed=seed,
    )


def augmentation_epoch_callback(transform: ImageClassificationTransform):
    """A `TrainerCallback` that tells a seeded transform which epoch is starting (also right after a resume)."""
    from transformers import TrainerCallback

    class AugmentationEpochCallback(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            # state.epoch is e + k/n mid-epoch (resume) and exactly e at an epoch boundary.
            transform.epoch = math.floor((state.epoch or 0.0) + 1e-9)

    return AugmentationEpochCallback()


def default_image_processor(config: Any, image_size: tuple[int, int]):
    """An image processor that reproduces the default preprocessing, saved next to models that came without one."""
    try:
        from transformers import ViTImageProcessorPil as Processor
    except ImportError:  # older transformers, or a build where the PIL class has another name
        from transformers import ViTImageProcessor as Processor

    channels = int(getattr(config, "num_channels", 3) or 3)
    return Processor(
        do_resize=True,
        size={"height": int(image_size[0]), "width": int(image_size[1])},
        do_rescale=True,
        do_normalize=True,
        image_mean=[DEFAULT_IMAGE_MEAN] * channels,
        image_std=[DEFAULT_IMAGE_STD] * channels,
    )


def native_image_size(dataset, image_column: str) -> tuple[int, int]:
    """(height, width) of the first image: the size used when neither processor nor config fixes one."""
    image = _to_pil(dataset[0][image_column])
    return (image.height, image.width)


def match_attack_to_model(attack: Any, model: Any, image_processor: Any, dataset, image_column: str):
    """Apply the trigger at the model's input size when preprocessing resizes the images (BackdoorBench convention).

    A 3x3 BadNet patch put on a 32x32 image and then resized to 224x224 is no longer the attack that was asked for;
    an explicit `image_size` in the attack parameters is kept as given.
    """
    if getattr(attack, "image_size", None) is not None:
        return attack
    size = model_input_size(getattr(model, "config", model), image_processor)
    if size is None or size == native_image_size(dataset, image_column):
        return attack
    from hf_fst.attacks import get_attack

    return get_attack(attack, image_size=size)


def collate_image_batch(rows: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack `pixel_values` and `labels` only, so stray columns never reach `model(**inputs)`."""
    return {
        "pixel_values": torch.stack([torch.as_tensor(r["pixel_values"]) for r in rows]),
        "labels": torch.as_tensor([int(r["labels"]) for r in rows], dtype=torch.long),
    }


def rate_or_raise(value: float, arg_name: str) -> float:
    """Check a fraction in (0, 1]."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"{arg_name}={value} is out of range; pass a fraction in (0, 1], e.g. 0.01 or 0.1")
    return float(value)


# --------------------------------------------------------------------------------------------------------------------
# Script arguments shared by the recipes (HfArgumentParser dataclasses)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class DataArguments:
    """Which data set to use and how to read and preprocess it."""

    dataset_name: str = field(
        default=None,
        metadata={"help": "Hub id of the data set, or a local folder (parquet, imagefolder, save_to_disk)."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config name of the data set, if any."})
    train_split: str = field(default="train", metadata={"help": "Split to poison / draw the tuning set from."})
    test_split: str = field(default="test", metadata={"help": "Split to measure C-Acc, ASR and RA on."})
    image_column_name: str | None = field(default=None, metadata={"help": "Image column; detected when unset."})
    label_column_name: str | None = field(default=None, metadata={"help": "Label column; detected when unset."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many training rows (seeded shuffle), for quick runs."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many test rows (seeded shuffle), for quick runs."}
    )
    augment: bool = field(
        default=True, metadata={"help": "Training augmentation: random crop with padding (and flip), as in the paper."}
    )
    horizontal_flip: bool = field(default=True, metadata={"help": "Random horizontal flip when --augment is on."})
    crop_padding: int | None = field(
        default=None, metadata={"help": "Padding of the random crop; default 1/8 of the image side (4 at 32x32)."}
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the training split (an IterableDataset, bounded memory); needs --max_steps. The test "
            "split is still read into memory (limit it with --max_eval_samples)."
        },
    )
    shuffle_buffer_size: int = field(
        default=10_000,
        metadata={"help": "With --streaming: rows held for the seeded shuffle buffer (reshuffled every epoch)."},
    )

    def __post_init__(self) -> None:
        if not self.dataset_name:
            raise ValueError(
                "--dataset_name is required; pass a Hub id or a local folder such as ../shared/data/cifar10-jpeg"
            )
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name}={value} must be a positive number of rows; drop it to use every row")
        if self.crop_padding is not None and self.crop_padding < 0:
            raise ValueError(f"--crop_padding={self.crop_padding} must be >= 0 pixels; drop it for 1/8 of the side")
        if self.shuffle_buffer_size < 1:
            raise ValueError(
                f"--shuffle_buffer_size={self.shuffle_buffer_size} must be at least 1 (1 keeps the stream's order)"
            )


@dataclass
class ModelArguments:
    """Which model to start from."""

    model_id: str = field(
        default=None,
        metadata={
            "help": "Hub id or local folder of an image classifier (config and weights; an image processor is optional)."
        },
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and data sets are cached."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow writing into a non-empty --output_dir (it is never clobbered otherwise)."},
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "DANGEROUS: also load weights from pickle files (pytorch_model.bin, checkpoints without "
            "safetensors). Unpickling a file can run code chosen by its author; use only for files you trust."
        },
    )

    def __post_init__(self) -> None:
        if not self.model_id:
            raise ValueError("--model_id is required; pass a Hub id or a local folder written by save_pretrained")


@dataclass
class AttackArguments:
    """The backdoor attack: poisons the training set (train_backdoor) and builds the ASR test set (both)."""

    attack: str = field(default="badnet", metadata={"help": "Attack name (badnet, blended, sig, wanet, lc, ...)."})
    attack_params: str | None = field(
        default=None, metadata={"help": "Attack parameters as JSON or key=value,key=value (e.g. 'patch_size=3')."}
    )
    target_label: int = field(default=0, metadata={"help": "Target class of the all-to-one backdoor."})
    poison_rate: float = field(default=0.1, metadata={"help": "Share of the training set to poison, in (0, 1]."})

    def build(self, num_labels: int, **extra: Any):
        """The attack config, validated against the data set's labels; `extra` passes e.g. LC's clean model."""
        from hf_fst.attacks import get_attack

        validate_target_label(self.target_label, num_labels)
        params = parse_attack_params(self.attack_params)
        params.setdefault("target_label", self.target_label)
        try:
            return get_attack(self.attack, **params, **extra)
        except ValueError as err:
            message = _one_line(err, 400)
            if "unknown attack" in message:
                raise ValueError(
                    f"--attack={self.attack!r} is not an attack; {message.split(';', 1)[-1].strip()}"
                ) from err
            raise ValueError(f"--attack_params={self.attack_params!r}: {message}") from err


def recipe_parser(dataclass_types: Sequence[type]):
    """An `HfArgumentParser` whose errors are one-line `ConfigurationError`s instead of a usage dump.

    With every TrainingArguments flag the usage text runs to hundreds of lines and hides the one that matters.
    """
    from transformers import HfArgumentParser

    class _Parser(HfArgumentParser):
        def error(self, message: str):  # type: ignore[override]
            raise ConfigurationError(f"{message} (see --help)")

    return _Parser(dataclass_types)


def resolve_columns_or_raise(dataset, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    """`hf_fst.columns.resolve_columns` with messages that name the recipe flags."""
    from hf_fst.columns import resolve_columns

    try:
        return resolve_columns(dataset, image_column, label_column)
    except ValueError as err:
        message = (
            str(err).replace("image_column=", "--image_column_name=").replace("label_column=", "--label_column_name=")
        )
        raise ValueError(message) from err


# --------------------------------------------------------------------------------------------------------------------
# Crash-safe outputs: stage in `<output_dir>.partial`, rename into place at the end
# --------------------------------------------------------------------------------------------------------------------

STAGING_SUFFIX = ".partial"
FST_STATE_FILE = "fst_state.safetensors"  # same name as hf_fst.tuning.trainer.FST_STATE_NAME (kept import-free)


def staging_dir(output_dir: str | os.PathLike) -> Path:
    """The sibling folder a run writes into (checkpoints and final files) until it finishes: `<output_dir>.partial`.

    A sibling, not a subfolder, so that the finished `output_dir` appears in one `rename` and a crash can never leave
    a folder under the final name that looks complete.
    """
    path = Path(output_dir).expanduser()
    return path.with_name(path.name + STAGING_SUFFIX)


def _is_complete_checkpoint(folder: Path) -> bool:
    """A checkpoint whose last files were written: the Trainer state, then (by FSTTrainer) the FST state."""
    return (folder / "trainer_state.json").is_file() and (folder / FST_STATE_FILE).is_file()


def _latest_checkpoint(folder: Path) -> Path | None:
    found = []
    for child in folder.glob("checkpoint-*") if folder.is_dir() else ():
        step = child.name.rpartition("-")[2]
        if step.isdigit() and _is_complete_checkpoint(child):
            found.append((int(step), child))
    return max(found)[1] if found else None


def resolve_resume_checkpoint(
    value: str | None, output_dir: str | os.PathLike, *, allow_pickle: bool = False
) -> str | None:
    """Turn `--resume_from_checkpoint` into a checked folder, or None.

    `true` / `last` pick the newest complete checkpoint (one whose FST state was written, so a checkpoint cut short
    by a crash is skipped) in the staging folder, else in `output_dir`. A path must be such a checkpoint.
    """
    if value is None or str(value).strip() == "" or str(value).lower() in ("false", "none"):
        return None
    if str(value).lower() in ("true", "last", "latest"):
        for folder in (staging_dir(output_dir), Path(output_dir)):
            latest = _latest_checkpoint(folder)
            if latest is not None:
                check_safe_weights(latest, allow_pickle=allow_pickle, arg_name="--resume_from_checkpoint")
                return str(latest)
        raise ValueError(
            f"--resume_from_checkpoint={value}: no complete checkpoint in {str(staging_dir(output_dir))!r} or "
            f"{str(output_dir)!r}; pass a checkpoint folder, or drop the flag to start from scratch"
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"--resume_from_checkpoint={value!r} is not a folder; pass a checkpoint-N folder (checkpoints are in "
            f"{str(staging_dir(output_dir))!r} until the run finishes) or 'true' for the newest one"
        )
    if not _is_complete_checkpoint(path):
        raise ValueError(
            f"--resume_from_checkpoint={value!r} is incomplete (no trainer_state.json or {FST_STATE_FILE}, e.g. "
            "cut short by a crash); pass an earlier checkpoint-N folder or 'true' for the newest complete one"
        )
    check_safe_weights(path, allow_pickle=allow_pickle, arg_name="--resume_from_checkpoint")
    return str(path)


def prepare_staging(output_dir: str | os.PathLike, *, overwrite: bool, resuming: bool) -> Path:
    """Create (or reuse, when resuming) the staging folder; refuse a stale one left by a crash unless told.

    Called after the cheap checks so a typo never deletes anything.
    """
    staging = staging_dir(output_dir)
    if staging.exists() and not resuming:
        if not overwrite:
            raise ValueError(
                f"--output_dir={str(output_dir)!r}: an unfinished run left {str(staging)!r}; pass "
                "--resume_from_checkpoint true to continue it or --overwrite_output_dir to discard it"
            )
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def commit_output(staging: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Move the finished staging folder to `output_dir` (one atomic rename when `output_dir` does not exist).

    When `output_dir` exists (allowed by `--overwrite_output_dir`, or a run resumed from its checkpoints), it is
    renamed aside first and removed only after the new folder is in place; its checkpoints that the staging folder
    lacks are carried over, so resuming never loses them.
    """
    staging, final = Path(staging), Path(output_dir).expanduser()
    if not final.exists():
        os.replace(staging, final)
        return final
    aside = final.with_name(f"{final.name}.old-{os.getpid()}")
    for child in final.glob("checkpoint-*"):
        if not (staging / child.name).exists():
            os.replace(child, staging / child.name)
    os.replace(final, aside)
    os.replace(staging, final)
    shutil.rmtree(aside, ignore_errors=True)
    return final


def _stream_rows(stream):
    yield from stream


def materialize_stream(stream, image_column: str):
    """A map-style `Dataset` with the rows of a stream, written to an Arrow cache in batches (bounded memory).

    Images pass through as their original bytes (decoding and re-encoding a JPEG would change its pixels).
    """
    import dataclasses

    from datasets import Dataset

    feature = stream.features[image_column]
    raw = stream.cast_column(image_column, dataclasses.replace(feature, decode=False))
    table = Dataset.from_generator(_stream_rows, gen_kwargs={"stream": raw}, features=raw.features)
    return table.cast_column(image_column, feature)


def take(dataset, limit: int | None, seed: int):
    """At most `limit` rows, drawn by a seeded shuffle (all rows when `limit` is None)."""
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit))


def set_label_mapping(config: Any, names: Sequence[str]) -> None:
    """Write `id2label`/`label2id` from the data set into a model config (so the checkpoint names its classes)."""
    config.id2label = {i: str(name) for i, name in enumerate(names)}
    config.label2id = {str(name): i for i, name in enumerate(names)}


def stage_training_output(training_args: Any, *, overwrite: bool) -> tuple[Path, Path]:
    """Point `training_args.output_dir` at `<output_dir>.partial`; return `(final_dir, staging_dir)`.

    Checkpoints and outputs are written to the staging folder, which `commit_output` renames into place at
    the end, so a crash never leaves a finished-looking `output_dir`.
    """
    output_dir = Path(training_args.output_dir)
    with training_args.main_process_first(desc="staging folder"):
        staging = prepare_staging(
            output_dir,
            overwrite=overwrite and training_args.process_index == 0,
            resuming=bool(training_args.resume_from_checkpoint) or training_args.process_index != 0,
        )
    training_args.output_dir = str(staging)
    return output_dir, staging


def training_dataset(dataset: Any, transform: Any, data_args: Any, seed: int) -> Any:
    """The Trainer's training set: a shuffled, mapped stream, or a map-style set with a lazy transform."""
    if data_args.streaming:
        shuffled = dataset.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
        return shuffled.map(transform, batched=True, remove_columns=list(dataset.features))
    return dataset.with_transform(transform)


def rank_line(training_args: Any, results: dict, model: torch.nn.Module) -> str:
    """One JSON line per process, so multi-process runs can be checked for agreement."""
    checksum = float(sum(t.detach().double().sum() for t in model.state_dict().values()))
    payload = {
        "rank": training_args.process_index,
        "world_size": training_args.world_size,
        "results": results,
        "param_sum": checksum,
    }
    return f"[hf-fst] {json.dumps(payload)}"


def save_run_outputs(
    trainer: Any, model: Any, processor: Any, names: Sequence[str], staging: Path, results: dict, test_split, image_col
) -> None:
    """Write model, image-processor config and `all_results.json` into the staging folder.

    `save_model` runs on every rank (FSDP gathers the weights collectively; rank 0 writes); the rest is written
    by the main process only.
    """
    set_label_mapping(model.config, names)
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        if processor is None:
            size = model_input_size(model.config) or native_image_size(test_split, image_col)
            processor = default_image_processor(model.config, size)
        processor.save_pretrained(str(staging))
        (staging / "all_results.json").write_text(json.dumps(results, indent=2) + "\n")


def training_summary(training_args: Any) -> dict[str, Any]:
    """The training settings a model card reports."""
    return {
        "num_train_epochs": training_args.num_train_epochs,
        "learning_rate": training_args.learning_rate,
        "batch_size": training_args.per_device_train_batch_size * training_args.world_size,
        "optim": str(getattr(training_args.optim, "value", training_args.optim)),
        "lr_scheduler_type": str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)),
    }
