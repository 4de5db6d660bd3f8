"""Triggers reach `pixel_values` as specified whatever the model's processor does (resize, crop_pct, centre crop)."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import CLIPImageProcessorPil, ConvNextImageProcessorPil, ViTImageProcessorPil

from hf_fst.attacks import backdoor_test_set, get_attack, poison_dataset
from hf_fst.attacks.base import scale_to
from hf_fst.transforms import match_attack_to_model, processor_geometry


def _dataset(n: int = 6, size: tuple[int, int] = (32, 32)) -> Dataset:
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]
    features = Features({"image": Image(), "label": ClassLabel(num_classes=3)})
    return Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)]}, features=features)


def _pixels(processor, images) -> np.ndarray:
    """What the model gets, in [0, 255] units (no rescale/normalise, so values compare exactly)."""
    return processor(images=list(images), do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"]


class _Model:  # match_attack_to_model only reads model.config
    class config:  # noqa: N801
        num_channels = 3


CONVNEXT = dict(size={"shortest_edge": 56}, crop_pct=0.875)  # resize the short edge to 64, centre-crop 56


@pytest.mark.parametrize(
    "processor, native, expected",
    [
        (ConvNextImageProcessorPil(**CONVNEXT), (32, 32), ((64, 64), (4, 4, 56, 56), "bicubic")),
        (ConvNextImageProcessorPil(**CONVNEXT), (32, 48), ((64, 96), (4, 20, 56, 56), "bicubic")),
        (ConvNextImageProcessorPil(size={"shortest_edge": 400}), (32, 32), ((400, 400), None, "bicubic")),
        (
            CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 36, "width": 36}),
            (32, 32),
            ((40, 40), (2, 2, 36, 36), "bicubic"),
        ),
        (ViTImageProcessorPil(size={"height": 48, "width": 40}), (32, 32), ((48, 40), None, "bilinear")),
    ],
)
def test_geometry_of_real_processors(processor, native, expected):
    assert processor_geometry(processor, native) == expected


def test_a_processor_that_is_not_a_resize_and_crop_is_refused():
    class Padding(ViTImageProcessorPil):
        def _preprocess(self, images, **kwargs):
            out = super()._preprocess(images, **kwargs)
            out["pixel_values"] = [np.pad(x, ((0, 0), (1, 1), (1, 1))) for x in out["pixel_values"]]
            return out

    with pytest.raises(ValueError, match=r"^image_processor: Padding does not reduce to a resize"):
        processor_geometry(Padding(size={"height": 40, "width": 40}), (32, 32))


@pytest.mark.parametrize("native", [(32, 32), (32, 48)])
def test_badnet_patch_reaches_pixel_values_through_a_crop_pct_processor(native):
    processor = ConvNextImageProcessorPil(**CONVNEXT)
    clean = _dataset(size=native)
    attack = match_attack_to_model(get_attack("badnet"), _Model, processor, clean, "image")
    assert attack.model_view is not None and attack.resample == "bicubic"
    poisoned = backdoor_test_set(clean, attack)
    sources = clean.select([i for i, y in enumerate(clean["label"]) if y != attack.target_label])
    got, reference = _pixels(processor, poisoned["image"]), _pixels(processor, sources["image"])
    assert got.shape == (len(sources), 3, 56, 56)
    side = scale_to(3, 56)  # 5 pixels: the 3x3 patch at the model's 56x56 input
    patch = np.zeros((56, 56), dtype=bool)
    patch[-side:, -side:] = True
    assert np.all(got[:, :, patch] == 255)
    # One resampling path: outside the patch, a triggered row is the clean row, pixel for pixel.
    np.testing.assert_array_equal(got[:, :, ~patch], reference[:, :, ~patch])
    # Without the geometry (the trigger at 56x56 resized again and cropped), the patch is cut and blurred.
    naive = backdoor_test_set(clean, get_attack("badnet", image_size=56))
    cut = _pixels(processor, naive["image"])
    assert not np.all(cut[:, :, patch] == 255)


def test_lc_corners_and_sig_signal_are_placed_in_the_cropped_view():
    processor = ConvNextImageProcessorPil(**CONVNEXT)
    clean = _dataset()
    lc = match_attack_to_model(get_attack("lc"), _Model, processor, clean, "image")
    got = _pixels(processor, backdoor_test_set(clean, lc)["image"])
    side = scale_to(3, 56)
    for rows in (slice(0, side), slice(56 - side, 56)):
        for cols in (slice(0, side), slice(56 - side, 56)):
            assert got[:, :, rows, cols].max() == 255 and got[:, :, rows, cols].min() == 0
            assert got[:, :, rows, cols][..., 0, 0].min() == 255  # white at the very corner, as specified
    # SIG's signal has the period the attack states at the model's width (56 columns), not at the stored 64.
    sig = match_attack_to_model(get_attack("sig"), _Model, processor, clean, "image")
    flat = _dataset(n=3)
    flat = flat.map(lambda row: {"image": PILImage.new("RGB", (32, 32), (128, 128, 128))})
    signal = _pixels(processor, backdoor_test_set(flat, sig)["image"])[0, 0].astype(np.float64) - 128
    expected = sig.apply(np.full((1, 56, 56, 1), 128, np.uint8), "test")[0, ..., 0].astype(np.float64) - 128
    np.testing.assert_array_equal(signal, expected)


def test_resample_and_view_are_recorded_and_checked():
    attack = get_attack("blended", image_size=64, model_view=(4, 4, 56, 56), resample="bicubic")
    again = get_attack(attack.name, **{k: v for k, v in attack.to_dict().items() if k != "name"})
    assert again == attack and again.model_view == (4, 4, 56, 56)
    with pytest.raises(ValueError, match=r"^model_view=\(0, 0, 8, 8\) needs image_size"):
        get_attack("badnet", model_view=(0, 0, 8, 8))
    with pytest.raises(ValueError, match=r"^model_view=\(10, 4, 56, 56\): expected \(top, left, height, width\)"):
        get_attack("badnet", image_size=64, model_view=(10, 4, 56, 56))
    with pytest.raises(ValueError, match=r"^resample='cubic': expected one of"):
        get_attack("badnet", resample="cubic")


def test_poisoned_training_rows_use_the_processors_filter():
    processor = ViTImageProcessorPil(size={"height": 48, "width": 48}, resample=PILImage.Resampling.BICUBIC)
    clean = _dataset(n=4)
    attack = match_attack_to_model(get_attack("badnet"), _Model, processor, clean, "image")
    assert (attack.image_size, attack.model_view, attack.resample) == ((48, 48), None, "bicubic")
    poisoned = poison_dataset(clean, attack, 1.0, seed=0)
    got, reference = _pixels(processor, poisoned["image"]), _pixels(processor, clean["image"])
    side = scale_to(3, 48)
    np.testing.assert_array_equal(got[:, :, :-side, :], reference[:, :, :-side, :])
    assert np.all(got[:, :, -side:, -side:] == 255)


def test_a_size_given_as_a_plain_dict_is_read_like_transformers_size_dict():
    processor = ConvNextImageProcessorPil(**CONVNEXT)
    processor.size = {"shortest_edge": 56}  # older configs and hand-made processors hold plain dicts
    assert processor_geometry(processor, (32, 32)) == ((64, 64), (4, 4, 56, 56), "bicubic")
