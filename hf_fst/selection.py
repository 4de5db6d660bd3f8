"""Which clean rows a run tunes on: a seeded draw from the training split, map-style or streamed.

The draw depends only on the seed and the data (its own generator, or a per-row hash for streams), so every tuning
mode of an experiment sees the same rows and a resumed run sees the rows it started with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["materialize_stream", "select_tuning_set", "select_tuning_stream", "take", "training_dataset"]


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


def training_dataset(dataset: Any, transform: Any, data_args: Any, seed: int) -> Any:
    """The Trainer's training set: a shuffled, mapped stream, or a map-style set with a lazy transform."""
    if data_args.streaming:
        shuffled = dataset.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
        return shuffled.map(transform, batched=True, remove_columns=list(dataset.features))
    return dataset.with_transform(transform)
