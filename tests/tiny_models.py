"""Tiny, randomly initialised transformers classifiers for fast tests (no downloads)."""

from __future__ import annotations

import torch
import transformers as tf

from hf_fst import FSTConfig

NUM_LABELS = 5


def tiny_resnet(num_labels: int = NUM_LABELS, num_channels: int = 3, seed: int = 0) -> tf.ResNetForImageClassification:
    torch.manual_seed(seed)
    config = tf.ResNetConfig(
        num_channels=num_channels, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=num_labels
    )
    return tf.ResNetForImageClassification(config).eval()


def tiny_vit(num_labels: int = NUM_LABELS, image_size: int = 16, seed: int = 0) -> tf.ViTForImageClassification:
    torch.manual_seed(seed)
    config = tf.ViTConfig(
        image_size=image_size,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return tf.ViTForImageClassification(config).eval()


def random_image_rows(n: int, num_labels: int = NUM_LABELS, size: int = 16, seed: int = 0) -> list[dict]:
    """Rows in the format the trainer's default collator stacks: `pixel_values` and `labels`."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=generator)
    labels = torch.randint(0, num_labels, (n,), generator=generator)
    return [{"pixel_values": images[i], "labels": int(labels[i])} for i in range(n)]


def fst_args(tmp_path, **overrides) -> FSTConfig:
    """An FSTConfig for fast tests: CPU, no reporting, no checkpoints, seeded; `overrides` win."""
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        seed=7,
        data_seed=7,
    )
    kwargs.update(overrides)
    return FSTConfig(**kwargs)
