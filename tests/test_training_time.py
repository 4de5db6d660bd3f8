"""Training-time triggers (WaNet as its paper trains it): warped per batch, after augmentation, fresh cross noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from hf_fst.attacks import TriggerCollator, get_attack, poison_dataset
from hf_fst.benchmark.tensors import AugmentingCollator, TensorImages, normalize
from hf_fst.transforms import build_transform, collate_image_batch


def _images(n: int = 4, height: int = 16, width: int = 24) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 256, (n, 3, height, width)).astype(np.float32))


def _warp(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(images, grid.expand(len(images), -1, -1, -1), mode="bilinear", align_corners=True)


def test_poisoned_rows_get_the_fixed_warp_and_clean_rows_nothing():
    attack = get_attack("wanet")
    images = _images()
    kinds = torch.tensor([0, 1, 0, 1])
    out = attack.apply_during_training(images, kinds)
    expected = _warp(images, attack.grid(16, 24))
    torch.testing.assert_close(out[[1, 3]], expected[[1, 3]])
    assert torch.equal(out[[0, 2]], images[[0, 2]])
    assert not torch.allclose(out[1], images[1], atol=1.0)  # the warp moves pixels
    # The same warp as the stored (uint8) attack, up to its rounding.
    stored = get_attack("wanet", training_time=False).apply(images.permute(0, 2, 3, 1).numpy().astype(np.uint8))
    stored = torch.from_numpy(stored).permute(0, 3, 1, 2).float()
    assert (out[1] - stored[1]).abs().max() <= 0.5 + 1e-4


def test_cross_rows_draw_fresh_noise_each_batch_and_follow_the_torch_seed():
    attack = get_attack("wanet")
    images = _images(2).repeat(2, 1, 1, 1)[:2]
    images[1] = images[0]
    kinds = torch.tensor([2, 2])
    torch.manual_seed(0)
    first = attack.apply_during_training(images, kinds)
    second = attack.apply_during_training(images, kinds)
    torch.manual_seed(0)
    again = attack.apply_during_training(images, kinds)
    assert torch.equal(first, again)  # reproducible under the Trainer's seed
    assert not torch.equal(first[0], first[1])  # each row its own noise
    assert not torch.equal(first, second)  # each batch (and epoch) new noise
    fixed = _warp(images, attack.grid(16, 24))
    assert not torch.allclose(first[0], fixed[0], atol=1.0)  # noise mode is not the trigger
    # On a horizontal ramp (value = column), a warped pixel's value is the column it was sampled from: the cross
    # noise is U[-1, 1] / width in grid units, i.e. at most half a pixel, about a quarter on average.
    ramp = torch.arange(24, dtype=torch.float32).expand(1, 3, 16, 24).clone()
    torch.manual_seed(1)
    shift = attack.apply_during_training(ramp, torch.tensor([2])) - _warp(ramp, attack.grid(16, 24))
    inner = shift[0, 0, 2:-2, 2:-2].abs()
    assert inner.max() <= 0.5 + 1e-4 and 0.15 < inner.mean() < 0.35


def test_trigger_collator_warps_after_the_transform_and_refuses_misuse():
    features = Features({"image": Image(), "label": ClassLabel(num_classes=3)})
    rng = np.random.default_rng(1)
    pictures = [PILImage.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(30)]
    clean = Dataset.from_dict({"image": pictures, "label": [i % 3 for i in range(30)]}, features=features)
    attack = get_attack("wanet", target_label=0)
    poisoned = poison_dataset(clean, attack, 0.1, seed=0)

    class Model:
        class config:  # noqa: N801
            num_channels = 3

    transform = build_transform(Model, None, "image", "label", train=False, keep_original_label=False)
    rows = [dict(zip(("pixel_values", "labels", "trigger_kind"), values, strict=True)) for values in zip(
        *(lambda b: (b["pixel_values"], b["labels"], b["trigger_kind"]))(transform(poisoned[:30])), strict=True
    )]  # fmt: skip
    torch.manual_seed(3)
    batch = TriggerCollator(attack, collate_image_batch)(rows)
    torch.manual_seed(3)
    default = TriggerCollator(attack)(rows)  # its own stacking of pixel_values and labels
    assert set(default) == {"pixel_values", "labels"} and default["labels"].dtype == torch.long
    assert torch.equal(default["labels"], batch["labels"]) and torch.equal(
        default["pixel_values"], batch["pixel_values"]
    )
    plain = collate_image_batch(rows)
    kinds = np.array(poisoned["trigger_kind"])
    assert set(batch) == {"pixel_values", "labels"} and (kinds == 1).sum() == 3 and (kinds == 2).sum() == 6
    moved = (batch["pixel_values"] - plain["pixel_values"]).abs().flatten(1).amax(1) > 0
    np.testing.assert_array_equal(moved.numpy(), kinds > 0)
    torch.testing.assert_close(
        batch["pixel_values"][kinds == 1], _warp(plain["pixel_values"][kinds == 1], attack.grid(16, 16))
    )
    assert set(batch["labels"][kinds == 1].tolist()) == {0}
    with pytest.raises(ValueError, match=r"^attack='badnet' stores its triggers in the data set"):
        TriggerCollator(get_attack("badnet"))
    with pytest.raises(ValueError, match=r"^rows have no trigger_kind"):
        TriggerCollator(attack)([{"pixel_values": torch.zeros(3, 4, 4), "labels": 0}])


def test_grid_collator_warps_after_its_crop_and_flip():
    attack = get_attack("wanet")
    images = _images(6, 16, 16).to(torch.uint8)
    kinds = torch.tensor([1, 1, 1, 0, 0, 2])
    data = TensorImages(images, torch.zeros(6, dtype=torch.long), kinds)
    rows = [data[i] for i in range(6)]
    unaugmented = AugmentingCollator(augment=False, attack=attack)(rows)
    torch.testing.assert_close(
        unaugmented["pixel_values"][:3], normalize(_warp(images[:3].float(), attack.grid(16, 16)))
    )
    torch.testing.assert_close(unaugmented["pixel_values"][3:5], normalize(images[3:5]))
    # With crop and flip, the warp is applied to the augmented image: undoing a flip of an unshifted crop of a
    # warped row does not give back the warp of the flipped row, so compare against the augmented clean batch.
    torch.manual_seed(3)
    augmented_clean = AugmentingCollator(augment=True)(rows)["pixel_values"]
    torch.manual_seed(3)
    augmented = AugmentingCollator(augment=True, attack=attack)(rows)["pixel_values"]
    pixels = augmented_clean * 0.5 + 0.5
    expected = normalize(_warp(pixels[:3] * 255, attack.grid(16, 16)))
    torch.testing.assert_close(augmented[:3], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(augmented[3:5], augmented_clean[3:5])


def test_cross_noise_is_the_drawn_uniform_scaled_per_axis_and_stays_inside_the_image():
    """A reference of the cross-row warp written out: the next torch.rand draw, x by 1/width, y by 1/height."""
    attack = get_attack("wanet")
    images = _images(3, 12, 20).double()  # sampled in float32, returned in the input dtype
    kinds = torch.tensor([2, 0, 2])
    torch.manual_seed(11)
    out = attack.apply_during_training(images, kinds)
    torch.manual_seed(11)
    noise = (torch.rand(2, 12, 20, 2) * 2 - 1) / torch.tensor([20.0, 12.0])
    grid = torch.clamp(attack.grid(12, 20).expand(2, -1, -1, -1) + noise, -1, 1)
    expected = F.grid_sample(images[[0, 2]].float(), grid, mode="bilinear", align_corners=True).double()
    assert out.dtype == torch.float64 and torch.equal(out[1], images[1])
    torch.testing.assert_close(out[[0, 2]], expected)
    flat = torch.full((2, 3, 12, 20), 100.0)  # clamped to the image, no sample reaches the zero padding
    for seed in range(3):
        torch.manual_seed(seed)
        torch.testing.assert_close(attack.apply_during_training(flat, torch.tensor([2, 2])), flat)


def test_trigger_collator_keeps_the_wrapped_collate_and_warps_kind_one_alone():
    attack = get_attack("wanet", target_label=0)
    images = _images(3)
    rows = [{"pixel_values": images[i], "labels": i, "trigger_kind": kind} for i, kind in enumerate((0, 1, 0))]

    def collate(batch):
        return {**collate_image_batch(batch), "extra": len(batch)}

    out = TriggerCollator(attack, collate)(rows)
    assert out["extra"] == 3  # the wrapped collator ran, not the default
    torch.testing.assert_close(out["pixel_values"][1], _warp(images[1:2], attack.grid(16, 24))[0])
    assert torch.equal(out["pixel_values"][[0, 2]], images[[0, 2]])
