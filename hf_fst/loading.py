"""Data sets and models from a Hub id or a local folder, with one-line errors that name the flag.

A recipe calls these before it builds a Trainer, so a typo in a name or an unreachable Hub costs seconds, not an
epoch. Without a network, Hub ids resolve from the local cache at once instead of retrying for half a minute.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from hf_fst.errors import one_line
from hf_fst.weights import ALLOW_PICKLE_FLAG, check_safe_weights

__all__ = [
    "check_head",
    "get_split",
    "hub_is_reachable",
    "label_names",
    "load_classifier",
    "load_config",
    "load_image_dataset",
    "load_image_processor",
    "resolve_columns_or_raise",
]


_LOCAL_HINT = (
    "pass a local folder instead (e.g. one written by save_pretrained / save_to_disk, or a parquet/imagefolder)"
)


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
                f"{arg_name}={name!r}: the folder exists but is not a readable data set ({one_line(err)}); "
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
                f"{arg_name}={name!r}: could not load the data set from the Hub ({one_line(err)})"
            ) from err
        raise _not_found(
            arg_name, name, "data set", "the Hub cannot be reached and it is not in the local cache"
        ) from err
    finally:
        datasets.config.HF_HUB_OFFLINE = previous


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
        raise ValueError(f"{arg_name}={model_id!r}: could not load the model ({one_line(err)})") from err
    except ValueError as err:
        raise ValueError(f"{arg_name}={model_id!r} is not an image classifier ({one_line(err)})") from err


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
        raise ValueError(f"{arg_name}={model_id!r}: could not load the config ({one_line(err)})") from err


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
        raise ValueError(f"{arg_name}: {one_line(err, 400)}") from err
    if layer.out_features != num_labels:
        raise ValueError(
            f"{arg_name}: the head {name!r} has {layer.out_features} outputs but the data set has {num_labels} labels; "
            "pass a model trained on this data set's labels (or the matching --dataset_name / --label_column_name)"
        )
    return name, layer


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
