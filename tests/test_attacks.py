"""Trigger pixels of each attack, and the registry / config contract."""

import io
import json
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Image
from PIL import Image as PILImage
from transformers import ResNetConfig, ResNetForImageClassification

from hf_fst.attacks import (
    AdaptiveBlendConfig,
    AttackConfig,
    BadNetConfig,
    BlendedConfig,
    LCConfig,
    SIGConfig,
    WaNetConfig,
    get_attack,
    list_attacks,
)
from hf_fst.attacks.batches import _decode, decode_colors
from hf_fst.attacks.lc import checker_trigger
from hf_fst.attacks.wanet import warp_grid


def _images(n=4, h=32, w=32, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def _tiny_resnet(num_channels=3, seed=0):
    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=num_channels, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10
    )
    return ResNetForImageClassification(config).eval()


# ----------------------------------------------------------------------------------------------------------------
# Registry and configs
def test_registry_names_and_variants():
    assert list_attacks() == ["badnet", "blended", "sig", "wanet", "lc", "adaptive-blend", "lf", "trojannn"]
    assert isinstance(get_attack("BadNet"), BadNetConfig)
    for spelling in ("Adaptive Blend", " adaptive_blend ", "ADAPTIVE-BLEND"):
        assert isinstance(get_attack(spelling), AdaptiveBlendConfig)
    assert isinstance(get_attack("adaptive_blend"), AdaptiveBlendConfig)
    assert isinstance(get_attack("Adaptive-Blend"), AdaptiveBlendConfig)
    with pytest.raises(ValueError, match=r"name='ssba': unknown attack; registered attacks are \['badnet'"):
        get_attack("ssba")
    with pytest.raises(ValueError, match=r"\['alpha'\] are not parameters of attack 'badnet'"):
        get_attack("badnet", alpha=0.1)


def test_defaults_follow_design():
    assert get_attack("badnet").patch_size == 3 and get_attack("badnet").target_label == 0
    assert get_attack("blended").alpha == 0.2
    sig = get_attack("sig")
    assert (sig.delta, sig.frequency) == (40, 6)
    wanet = get_attack("wanet")
    assert (wanet.k, wanet.s, wanet.grid_rescale, wanet.noise_mode, wanet.cross_ratio) == (4, 0.5, 1, True, 2)
    lc = get_attack("lc")
    assert (lc.eps, lc.step_size, lc.steps, lc.trigger_size) == (8 / 255, 1.5 / 255, 100, 3)
    ab = get_attack("adaptive-blend")
    assert (ab.alpha, ab.test_alpha, ab.pieces, ab.mask_rate, ab.cover_rate) == (0.15, 0.2, 16, 0.5, None)
    clean_label = [get_attack(n).is_clean_label for n in list_attacks()]
    assert clean_label == [False, False, True, False, True, False, False, False]
    for name in list_attacks():
        config = get_attack(name)
        assert config.label_mode == "all-to-one" and config.image_size is None


@pytest.mark.parametrize("name", ["badnet", "blended", "sig", "wanet", "lc", "adaptive-blend", "lf", "trojannn"])
def test_json_round_trip(name):
    config = get_attack(name, target_label=3, image_size=(40, 48))
    text = config.to_json()
    data = json.loads(text)
    assert data["name"] == config.name and data["target_label"] == 3 and data["image_size"] == [40, 48]
    again = AttackConfig.from_json(text)
    assert type(again) is type(config) and again == config and again.image_size == (40, 48)


def test_describe_is_one_line_of_every_setting_but_the_name():
    assert get_attack("badnet", target_label=3, patch_size=4).describe() == (
        "badnet(target_label=3, label_mode=all-to-one, image_size=None, model_view=None, resample=bilinear, "
        "patch_size=4, location=bottom-right, value=255)"
    )
    assert "model=" not in get_attack("lc", model=_tiny_resnet(), steps=2).describe()  # weights are not a setting


def test_lc_json_records_the_model_but_not_its_weights():
    model = _tiny_resnet()
    model.config.name_or_path = "org/clean-resnet"
    config = get_attack("lc", model=model, steps=2)
    data = config.to_dict()
    assert "model" not in data and data["model_name_or_path"] == "org/clean-resnet"
    assert json.loads(json.dumps(data)) == data
    assert LCConfig.from_dict(data).model is None


def test_configs_rebuild_with_extras_and_a_model_never_enters_repr_or_equality():
    model, other = _tiny_resnet(), _tiny_resnet()
    data = get_attack("lc", steps=2, model_name_or_path="org/clean").to_dict()
    # Extra (non-serialised) arguments reach the rebuilt config, through the base class and the subclass.
    assert AttackConfig.from_dict(data, model=model).model is model
    assert LCConfig.from_dict(data, model=model).model is model
    assert AttackConfig.from_json(json.dumps(data), model=model).model is model
    # A subclass rebuilds from its fields alone (no name), keeping every value given.
    assert BadNetConfig.from_dict({"patch_size": 5, "value": 128}) == BadNetConfig(patch_size=5, value=128)
    with pytest.raises(ValueError, match=r"^config name 'sig' does not match BadNetConfig"):
        BadNetConfig.from_dict({"name": "sig"})
    assert "\n" in get_attack("badnet").to_json(indent=2)  # json.dumps options pass through
    one = LCConfig(model=model, model_name_or_path="org/clean")
    assert one == LCConfig(model=other, model_name_or_path="org/clean") and "model=" not in repr(one)
    assert LCConfig().model is None


def test_register_attack_adds_a_subclass_and_refuses_anything_else():
    from dataclasses import dataclass

    from hf_fst.attacks import ATTACKS, register_attack

    @dataclass
    class Dim(BadNetConfig):
        name = "dim-patch"

        def apply(self, images, kind="poison", seeds=None):
            return images // 2

    try:
        assert register_attack(Dim) is Dim and ATTACKS["dim-patch"] is Dim
        assert type(get_attack("Dim_Patch", patch_size=2)) is Dim and "dim-patch" in list_attacks()
    finally:
        ATTACKS.pop("dim-patch", None)
    for bad in (BadNetConfig(), int, "badnet"):
        with pytest.raises(ValueError, match=r"^config_class=.*: expected an AttackConfig subclass"):
            register_attack(bad)


def test_config_validation():
    with pytest.raises(ValueError, match="label_mode='all-to-all' is not defined for the clean-label attack 'sig'"):
        get_attack("sig", label_mode="all-to-all")
    with pytest.raises(ValueError, match=r"^label_mode='x'"):
        get_attack("badnet", label_mode="x")
    with pytest.raises(ValueError, match=r"^target_label=-1"):
        get_attack("badnet", target_label=-1)
    with pytest.raises(ValueError, match=r"^image_size=\(0, 3\)"):
        get_attack("badnet", image_size=(0, 3))
    with pytest.raises(ValueError, match=r"^pieces=15"):
        get_attack("adaptive-blend", pieces=15)
    with pytest.raises(ValueError, match=r"^pattern='/nonexistent.png'"):
        get_attack("blended", pattern="/nonexistent.png")


# ----------------------------------------------------------------------------------------------------------------
# Trigger pixels
@pytest.mark.parametrize(("side", "patch"), [(32, 3), (64, 6), (16, 2), (224, 21)])
def test_badnet_patch_place_and_size(side, patch):
    images = np.zeros((2, side, side, 3), dtype=np.uint8)
    out = BadNetConfig().apply(images)
    expected = np.zeros_like(images)
    expected[:, side - patch :, side - patch :, :] = 255
    np.testing.assert_array_equal(out, expected)
    assert images.max() == 0  # input untouched


def test_badnet_non_square_and_grayscale_and_corner():
    out = BadNetConfig(location="top-left").apply(np.zeros((1, 32, 64, 1), dtype=np.uint8))
    assert out[0, :3, :6, 0].min() == 255 and out.sum() == 3 * 6 * 255


def test_blended_ratio_and_pattern():
    images = _images()
    config = BlendedConfig()
    t = config.trigger(32, 32, 3)
    out = config.apply(images)
    np.testing.assert_array_equal(out, np.clip(np.rint(0.8 * images.astype(np.float32) + 0.2 * t), 0, 255))
    # On a constant image the result is exactly (1 - a) x + a t: the blend ratio can be read back.
    flat = np.full((1, 32, 32, 3), 100, dtype=np.uint8)
    ratio = (config.apply(flat).astype(float) - 100) / (t - 100 + 1e-9)
    mask = np.abs(t - 100) > 50
    assert abs(np.median(ratio[0][mask]) - 0.2) < 0.01
    assert t.min() >= 0 and t.max() <= 255 and t.std() > 50  # a noise picture, not a constant
    assert not np.array_equal(BlendedConfig(pattern_seed=1).trigger(32, 32, 3), t)
    assert BlendedConfig().trigger(64, 64, 1).shape == (64, 64, 1)


def test_blended_pattern_file(tmp_path):
    from PIL import Image

    path = tmp_path / "key.png"
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(path)
    out = BlendedConfig(pattern=str(path), alpha=0.5).apply(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    assert (out == 100).all()


def test_sig_formula():
    images = np.full((2, 32, 40, 3), 100, dtype=np.uint8)
    out = SIGConfig().apply(images)
    j = np.arange(40)
    expected = np.rint(100 + 40 * np.sin(2 * np.pi * j * 6 / 40))
    np.testing.assert_array_equal(out[0, 5, :, 1], expected)
    assert (out == out[:1, :1, :, :1]).all()  # constant along rows, channels and images
    dark = SIGConfig().apply(np.zeros((1, 8, 32, 1), dtype=np.uint8))
    assert dark.min() == 0 and dark.max() == 40  # the negative half clipped to 0, not wrapped to 216-255
    assert np.abs(SIGConfig(test_delta=60).signal(32, "test")).max() > 59
    assert SIGConfig().signal(32).dtype == np.float32  # documented; a float64 row would upcast every batch


def test_wanet_grid_properties():
    config = WaNetConfig()
    grid = config.grid(32, 32)
    assert grid.shape == (1, 32, 32, 2) and grid.abs().max() <= 1
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    displacement = (grid[0] - torch.stack((xs, ys), -1)) * 32 / 0.5  # back to control-noise units
    inner = displacement[2:-2, 2:-2]  # away from the clamped border
    assert 0.5 < inner.abs().mean() < 1.5  # normalised by its mean absolute value before upsampling
    assert inner.abs().max() < 4
    assert torch.equal(warp_grid(4, 0.5, 1.0, 0, 32, 32), grid)
    assert not torch.equal(WaNetConfig(grid_seed=1).grid(32, 32), grid)
    # Identity at s = 0: the image comes back unchanged.
    images = _images()
    np.testing.assert_array_equal(WaNetConfig(s=0).apply(images), images)
    out = config.apply(images)
    assert out.shape == images.shape and 0 < np.abs(out.astype(int) - images).mean() < 40


def test_wanet_cross_rows_use_per_image_noise():
    config = WaNetConfig()
    images = np.repeat(_images(1), 3, axis=0)
    seeds = np.array([1, 2, 1], dtype=np.uint64)
    cross = config.apply(images, "cover", seeds)
    assert np.array_equal(cross[0], cross[2]) and not np.array_equal(cross[0], cross[1])
    assert not np.array_equal(cross[0], config.apply(images[:1])[0])
    assert config.num_cover(100, 0.1, 1000) == 200 and WaNetConfig(noise_mode=False).num_cover(100, 0.1, 1000) == 0


def _bilinear(image: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Sample `image` (h, w, c) at `grid` (h, w, 2) of (x, y) in [-1, 1], corners aligned, by hand."""
    height, width = image.shape[:2]
    x, y = (grid[..., 0] + 1) / 2 * (width - 1), (grid[..., 1] + 1) / 2 * (height - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def test_wanet_cross_rows_match_a_written_out_warp_on_non_square_images():
    """Cross rows: the fixed grid plus noise uniform in [-1, 1] pixels from each row's seed ((h, w, 2), x then y,
    scaled by the width and the height), clamped to the image, then sampled bilinearly."""
    config = WaNetConfig(s=2.0)
    images = np.random.default_rng(3).integers(0, 256, (2, 6, 10, 3), dtype=np.uint8)
    seeds = np.array([7, 8], dtype=np.uint64)
    fixed = config.grid(6, 10)[0].numpy().astype(np.float64)
    for row, seed in enumerate(seeds):
        noise = np.random.default_rng(int(seed)).uniform(-1, 1, size=(6, 10, 2)) / np.array([10, 6])
        grid = np.clip(fixed + noise, -1, 1)
        assert (np.abs(fixed + noise) > 1).any()  # the clamp is reached
        expected = np.clip(np.rint(_bilinear(images[row].astype(np.float64), grid)), 0, 255)
        got = config.apply(images, "cover", seeds)[row]
        assert np.abs(got.astype(int) - expected).max() <= 1 and (got != expected).mean() < 0.02
    for bad in (None, seeds[:1]):
        with pytest.raises(ValueError, match=r"^seeds=: WaNet cross rows need one seed per image"):
            config.apply(images, "cover", bad)


def test_adaptive_blend_masks_and_cover():
    config = AdaptiveBlendConfig()
    tiles = config.piece_masks(32, 32)
    assert tiles.shape == (16, 32, 32) and (tiles.sum(0) == 1).all() and (tiles.sum((1, 2)) == 64).all()
    seeds = np.array([3, 4, 3], dtype=np.uint64)
    masks = config.training_masks(seeds, 32, 32)
    assert set(np.unique(masks)) == {0.0, 1.0}
    kept_tiles = (masks[:, None] * tiles).sum((2, 3)) / 64
    assert (kept_tiles.sum(1) == 8).all()  # half of the 16 pieces kept on every row
    assert np.array_equal(masks[0], masks[2]) and not np.array_equal(masks[0], masks[1])
    images = _images(3)
    out = config.apply(images, "poison", seeds)
    pattern = BlendedConfig().trigger(32, 32, 3)
    blended = np.clip(np.rint(0.85 * images.astype(np.float32) + 0.15 * pattern), 0, 255)
    keep = masks[..., None].astype(bool).repeat(3, -1)
    np.testing.assert_array_equal(out[keep], blended[keep])
    np.testing.assert_array_equal(out[~keep], images[~keep])
    # Test time: full trigger at 0.2, the same as Blended with the same picture.
    np.testing.assert_array_equal(config.apply(images, "test"), BlendedConfig().apply(images))
    assert config.num_cover(25, 0.05, 500) == 25 and AdaptiveBlendConfig(cover_rate=0.1).num_cover(25, 0.05, 500) == 50


def test_lc_corners():
    assert checker_trigger(3).tolist() == [[255, 0, 255], [0, 255, 0], [255, 0, 255]]
    images = np.full((1, 32, 32, 3), 7, dtype=np.uint8)
    out = LCConfig().apply(images, "test")
    for rows, cols in [(slice(0, 3), slice(0, 3)), (slice(29, 32), slice(0, 3)), (slice(0, 3), slice(29, 32))]:
        np.testing.assert_array_equal(out[0, rows, cols, 0], checker_trigger(3))
    np.testing.assert_array_equal(out[0, 29:, 29:, 2], checker_trigger(3))
    changed = (out != images).any(-1)[0]
    assert changed.sum() == 4 * 9 and not changed[3:29, :].any()
    assert (LCConfig().apply(np.zeros((1, 64, 64, 1), np.uint8)) > 0).sum() == 4 * 20  # 6x6 corners, 5/9 white


def test_lc_pgd_respects_the_linf_bound_and_raises_the_loss():
    model = _tiny_resnet()
    config = LCConfig(model=model, steps=5, pgd_batch_size=4)
    images = _images(6)
    labels = np.zeros(6, dtype=np.int64)
    model.train()
    adv = config.prepare(images, labels)
    assert model.training  # mode restored
    diff = adv.astype(int) - images.astype(int)
    assert np.abs(diff).max() <= 8 and np.abs(diff).max() >= 7 and adv.dtype == np.uint8

    def loss(x):
        with torch.no_grad():
            logits = model.eval()(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255).logits
        return F.cross_entropy(logits, torch.zeros(len(x), dtype=torch.long)).item()

    assert loss(adv) > loss(images)
    assert math.isclose(LCConfig(eps=4 / 255, model=model, steps=3).eps * 255, 4)
    assert np.abs(LCConfig(eps=4 / 255, model=model, steps=3).prepare(images, labels).astype(int) - images).max() <= 4
    with pytest.raises(ValueError, match="model=: the clean model takes 3 channels but the images have 1"):
        config.prepare(images[..., :1], labels)


def test_lc_pgd_matches_a_hand_written_loop_with_normalisation_and_batches():
    """Every detail of the PGD (normalisation, sign step, clamps, batching, rounding) against a plain loop."""
    model = _tiny_resnet()
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    config = LCConfig(model=model, steps=3, eps=6 / 255, step_size=2.5 / 255, pgd_batch_size=4,
                      pixel_mean=mean, pixel_std=std)  # fmt: skip
    images = _images(10)  # more than two batches: every batch start is reached
    images[0, :4, :4] = 0  # pixels at the bounds: the [0, 1] clamp matters
    images[1, :4, :4] = 255
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    expected = []
    for start in (0, 4, 8):  # batches of 4: the last one has 2 images
        x0 = torch.from_numpy(images[start : start + 4].astype(np.float32)).permute(0, 3, 1, 2) / 255
        y = torch.from_numpy(labels[start : start + 4])
        delta = torch.zeros_like(x0)
        for _ in range(3):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model.eval()(pixel_values=((x0 + delta).clamp(0, 1) - m) / s).logits, y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = ((delta + 2.5 / 255 * grad.sign()).clamp(-6 / 255, 6 / 255) + x0).clamp(0, 1) - x0
            delta = delta.detach()
        expected.append(((x0 + delta).clamp(0, 1) * 255).permute(0, 2, 3, 1).numpy())
    expected = np.clip(np.rint(np.concatenate(expected)), 0, 255).astype(np.uint8)
    got = config.prepare(images, labels)
    np.testing.assert_array_equal(got, expected)
    assert np.abs(got.astype(int) - images).max() == 6  # two steps of 2.5 reach the bound of 6
    assert (got[0, :4, :4] == 0).mean() > 0.2 and (got[1, :4, :4] == 255).mean() > 0.2  # clamped, not wrapped
    # Zero steps: the images come back unchanged.
    np.testing.assert_array_equal(LCConfig(model=model, steps=0).prepare(images, labels), images)


def test_adaptive_blend_cover_rows_keep_masked_tiles_untouched():
    """Cover rows carry a partial trigger at the training alpha; the full test trigger would touch every pixel."""
    config = AdaptiveBlendConfig()
    images = _images(n=3)
    seeds = np.array([11, 12, 13], dtype=np.uint64)
    cover = config.apply(images, "cover", seeds)
    kept = config.training_masks(seeds, 32, 32)  # 1 where the trigger is blended in, 0 on masked tiles
    assert np.array_equal(cover[kept == 0], images[kept == 0])
    assert (kept == 0).mean() == pytest.approx(config.num_masked / config.pieces, abs=0.02)
    assert not np.array_equal(cover, config.apply(images, "test"))


def test_sig_training_rows_use_delta_and_test_rows_test_delta():
    config = SIGConfig(delta=20, test_delta=60)
    grey = np.full((2, 32, 32, 3), 128, dtype=np.uint8)  # far from 0 and 255: nothing clips
    poisoned = np.abs(config.apply(grey, "poison").astype(int) - 128).max()
    tested = np.abs(config.apply(grey, "test").astype(int) - 128).max()
    assert 19 <= poisoned <= 20 and 59 <= tested <= 60


def test_wanet_warp_scales_each_axis_by_its_own_side():
    """On an 8x32 image the x displacement is s / 32 and the y displacement s / 8 per unit of control noise."""
    height, width, s = 8, 32, 0.5
    grid = warp_grid(4, s, 1.0, 0, height, width)[0]
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    inner = (slice(1, -1), slice(1, -1))  # away from the clamped border
    dx = (grid[..., 0] - xs)[inner].abs().mean() * width / s
    dy = (grid[..., 1] - ys)[inner].abs().mean() * height / s
    # Both are the mean size of the interpolated control noise, which is normalised to 1 (bicubic keeps it near 1);
    # a swap of the two scales would make them 4 and 1/4.
    assert 0.4 < dx < 2.0 and 0.4 < dy < 2.0


def test_lc_pgd_runs_on_a_plain_module_and_a_config_without_channels():
    """The channel check reads `model.config.num_channels` only where both exist."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 3, 10))
    images, labels = _images(3, 8, 8), np.array([0, 1, 2])
    adv = LCConfig(model=plain, steps=2, eps=4 / 255, step_size=2 / 255).prepare(images, labels)
    assert np.abs(adv.astype(int) - images).max() == 4
    plain.config = types.SimpleNamespace(name_or_path="org/plain")  # a config that says nothing about channels
    np.testing.assert_array_equal(
        LCConfig(model=plain, steps=2, eps=4 / 255, step_size=2 / 255).prepare(images, labels), adv
    )


def test_decode_colors_resizes_with_the_resampling_asked_for():
    rng = np.random.default_rng(3)
    picture = PILImage.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    value = _stored(picture)
    for resample, method in (("nearest", PILImage.Resampling.NEAREST), ("bilinear", PILImage.Resampling.BILINEAR)):
        (decoded,) = decode_colors([value], Image(), (6, 8), resample)
        np.testing.assert_array_equal(decoded, np.asarray(picture.resize((8, 6), method)))
    (default,) = decode_colors([value], Image(), (6, 8))
    np.testing.assert_array_equal(default, np.asarray(picture.resize((8, 6), PILImage.Resampling.BILINEAR)))
    (same,) = decode_colors([value], Image(), None, "nearest")
    np.testing.assert_array_equal(same, np.asarray(picture))
    (kept,) = decode_colors([value], Image(), (12, 10), "nearest")  # already (height, width): untouched
    np.testing.assert_array_equal(kept, np.asarray(picture))
    square = PILImage.fromarray(np.asarray(picture)[:10])
    (short,) = decode_colors([_stored(square)], Image(), (6, 10), "nearest")
    np.testing.assert_array_equal(short, np.asarray(square.resize((10, 6), PILImage.Resampling.NEAREST)))


def test_sig_parameter_bounds():
    for ok in ({"delta": 0.5}, {"test_delta": 0.5}, {"frequency": 0.5}):
        assert SIGConfig(**ok).signal(32, "test").shape == (32,)
    for bad in ({"delta": 0}, {"delta": 0, "test_delta": 5}, {"test_delta": 0}):
        with pytest.raises(ValueError, match=r"^delta=.*, test_delta=.*: expected positive amplitudes$"):
            SIGConfig(**bad)
    with pytest.raises(ValueError, match=r"^frequency=0: expected a positive number of periods$"):
        SIGConfig(frequency=0)


def test_lc_corners_and_checkerboard_on_non_square_images():
    board = checker_trigger(3, 6)
    assert board.dtype == np.uint8
    np.testing.assert_array_equal(
        board, np.array([[255, 255, 0, 0, 255, 255], [0, 0, 255, 255, 0, 0], [255, 255, 0, 0, 255, 255]])
    )
    out = LCConfig().apply(np.zeros((1, 32, 64, 1), np.uint8))  # corners of 3 x 6 pixels at 32 x 64
    for rows, cols in ((slice(0, 3), slice(0, 6)), (slice(29, 32), slice(58, 64))):
        np.testing.assert_array_equal(out[0, rows, cols, 0], board)
    assert out[0, 3:29].max() == 0 and out[0, :, 6:58].max() == 0


def test_adaptive_blend_tiles_are_boolean_and_row_major():
    masks = AdaptiveBlendConfig().piece_masks(8, 12)  # 16 pieces: a 4 x 4 grid of 2 x 3 tiles
    assert masks.dtype == bool and masks.shape == (16, 8, 12) and (masks.sum(0) == 1).all()
    for piece, (r, c) in ((1, (0, 1)), (4, (1, 0)), (6, (1, 2))):
        expected = np.zeros((8, 12), bool)
        expected[2 * r : 2 * r + 2, 3 * c : 3 * c + 3] = True
        np.testing.assert_array_equal(masks[piece], expected)


def test_blended_on_grayscale_blends_a_one_channel_pattern():
    attack = BlendedConfig(alpha=0.5)
    images = np.full((2, 8, 8, 1), 100, np.uint8)
    out = attack.apply(images)
    assert out.shape == (2, 8, 8, 1)
    expected = np.clip(np.rint(50 + 0.5 * attack.trigger(8, 8, 1)), 0, 255)
    np.testing.assert_array_equal(out[0], expected.astype(np.uint8).reshape(8, 8, 1))


@pytest.mark.parametrize(
    ("name", "field", "accepted", "refused", "message"),
    [
        ("blended", "alpha", (1.0, 0.01), (0.0, 1.01), r"^alpha=.*: expected a blend ratio in \(0, 1\]$"),
        ("adaptive-blend", "alpha", (1.0, 0.01), (0.0, 1.01), r"^alpha=.*, test_alpha=.*: expected blend ratios"),
        ("adaptive-blend", "test_alpha", (1.0, 0.01), (0.0, 1.01), r"^alpha=.*, test_alpha=.*: expected blend ratios"),
        ("adaptive-blend", "pieces", (1, 4), (0, 2), r"^pieces=.*: expected a perfect square"),
        ("adaptive-blend", "mask_rate", (0.0, 0.99), (-0.1, 1.0), r"^mask_rate=.*: expected a share in \[0, 1\)$"),
        (
            "adaptive-blend",
            "cover_rate",
            (0.0, 0.99, None),
            (-0.1, 1.0),
            r"^cover_rate=.*: expected a share in \[0, 1\)",
        ),
    ],
)
def test_blend_parameter_bounds(name, field, accepted, refused, message):
    for value in accepted:
        assert getattr(get_attack(name, **{field: value}), field) == value
    for value in refused:
        with pytest.raises(ValueError, match=message):
            get_attack(name, **{field: value})


def test_adaptive_blend_training_rows_need_one_seed_each_and_grayscale_gets_one_channel():
    attack = AdaptiveBlendConfig()
    images = np.full((2, 8, 8, 1), 100, np.uint8)
    for seeds in (None, np.array([1], np.uint64)):
        with pytest.raises(ValueError, match=r"^seeds=: Adaptive-Blend training rows need one seed per image$"):
            attack.apply(images, "poison", seeds)
    assert attack.apply(images, "poison", np.array([1, 2], np.uint64)).shape == (2, 8, 8, 1)
    assert attack.apply(images, "test").shape == (2, 8, 8, 1)


def test_lc_parameter_bounds_and_normalised_fields():
    """Each bound at its edge, by message; pixel statistics become float lists; the model's name is recorded."""
    for ok in ({"eps": 0.0}, {"eps": 1.0}, {"step_size": 1e-9}, {"steps": 0}, {"trigger_size": 1}):
        LCConfig(**ok)
    message = r"^eps=.*, step_size=.*, steps=.*: expected eps in \[0, 1\]"
    for bad in ({"eps": -0.01}, {"eps": 1.01}, {"step_size": 0.0}, {"step_size": -1.0}, {"steps": -1}):
        with pytest.raises(ValueError, match=message):
            LCConfig(**bad)
    with pytest.raises(ValueError, match=r"^trigger_size=0: expected a positive int"):
        LCConfig(trigger_size=0)
    config = LCConfig(pixel_mean=np.array([0.1, 0.2, 0.3]), pixel_std=0.5)
    assert config.pixel_mean == [0.1, 0.2, 0.3] and type(config.pixel_mean) is list and config.pixel_std == [0.5]
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    assert LCConfig(model=plain).model_name_or_path == "Sequential"
    assert LCConfig(model=plain, model_name_or_path="mine").model_name_or_path == "mine"
    assert LCConfig().model_name_or_path is None


def test_wanet_parameter_bounds_at_their_edges():
    for ok in ({"k": 2}, {"s": 0.0}, {"grid_rescale": 1e-6}, {"cross_ratio": 0.0}):
        WaNetConfig(**ok)
    with pytest.raises(ValueError, match=r"^k=1: expected a control grid side of at least 2"):
        WaNetConfig(k=1)
    for bad in ({"s": -0.1}, {"grid_rescale": 0.0}, {"s": -1.0, "grid_rescale": -1.0}):
        with pytest.raises(ValueError, match=r"^s=.*, grid_rescale=.*: expected s >= 0 and grid_rescale > 0"):
            WaNetConfig(**bad)
    with pytest.raises(ValueError, match=r"^cross_ratio=-0\.1: expected a non-negative ratio"):
        WaNetConfig(cross_ratio=-0.1)


def test_decode_brings_every_stored_mode_to_one_the_triggers_handle():
    """Palette, bilevel, 16/32-bit, float, CMYK and YCbCr images decode to RGB, RGBA, L or LA, pixel for pixel as
    PIL converts them; a transparent palette keeps its alpha."""
    base = PILImage.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5)
    transparent = base.convert("P")
    transparent.info["transparency"] = 0
    cases = [
        (base.convert("P"), "PNG", "RGB"), (transparent, "PNG", "RGBA"), (base.convert("PA"), "TIFF", "RGBA"),
        (base.convert("1"), "PNG", "L"), (base.convert("L").convert("I;16"), "PNG", "L"),
        (base.convert("I"), "TIFF", "L"), (base.convert("F"), "TIFF", "L"), (base.convert("CMYK"), "TIFF", "RGB"),
        (base.convert("YCbCr"), "TIFF", "RGB"), (base.convert("LA"), "PNG", "LA"), (base, "PNG", "RGB"),
    ]  # fmt: skip
    for image, fmt, mode in cases:
        value = _stored(image, fmt)
        stored = PILImage.open(io.BytesIO(value["bytes"]))
        decoded = _decode(value, Image(), None)
        assert decoded.mode == mode, (stored.mode, fmt)
        np.testing.assert_array_equal(np.asarray(decoded), np.asarray(stored.convert(mode)), err_msg=stored.mode)
    assert set(np.unique(np.asarray(_decode(_stored(base.convert("1")), Image(), None)))) == {0, 255}
    rgba = np.asarray(_decode(_stored(transparent), Image(), None))
    assert (rgba[..., 3] == 0).any() and (rgba[..., 3] == 255).any()


def _stored(image: PILImage.Image, fmt: str = "PNG") -> dict:
    """`image` encoded as a data set stores it: `{"bytes", "path"}`."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return {"bytes": buffer.getvalue(), "path": None}


def test_attack_config_bounds_at_their_edges():
    """Target, image size and model view accepted at their edges and refused just past them; BadNet's patch too."""
    for bad in (True, 1.0, "0"):
        with pytest.raises(ValueError, match=r"^target_label=.*: expected a non-negative int class id"):
            BadNetConfig(target_label=bad)
    assert BadNetConfig(image_size=1).image_size == (1, 1) and BadNetConfig(image_size=(1, 3)).image_size == (1, 3)
    for bad in (0, (0, 4), (4, 0), (4, 4, 4)):
        with pytest.raises(ValueError, match=r"^image_size=.*: expected a positive int or \(height, width\)"):
            BadNetConfig(image_size=bad)
    for ok in ((0, 0, 6, 8), (5, 7, 1, 1), (0, 0, 1, 8), (2, 3, 4, 5)):
        assert BadNetConfig(image_size=(6, 8), model_view=ok).model_view == ok
    for bad in ((-1, 0, 2, 2), (0, -1, 2, 2), (0, 0, 0, 2), (0, 0, 2, 0), (0, 0, 7, 8), (0, 0, 6, 9), (3, 0, 4, 2),
                (0, 5, 2, 4), (0, 0, 2)):  # fmt: skip
        with pytest.raises(ValueError, match=r"^model_view=.*: expected \(top, left, height, width\) inside"):
            BadNetConfig(image_size=(6, 8), model_view=bad)
    for ok in ({"patch_size": 1}, {"value": 0}, {"value": 255}):
        BadNetConfig(**ok)
    with pytest.raises(ValueError, match=r"^patch_size=0: expected a positive int"):
        BadNetConfig(patch_size=0)
    for bad in (-1, 256):
        with pytest.raises(ValueError, match=r"^value=.*: expected a pixel value in \[0, 255\]"):
            BadNetConfig(value=bad)
