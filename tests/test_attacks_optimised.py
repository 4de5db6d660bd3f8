"""LF and TrojanNN: triggers optimised on a clean model, their model-free stand-ins, and their files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import ResNetConfig, ResNetForImageClassification

from hf_fst.attacks import LFConfig, TrojanNNConfig, get_attack, list_attacks
from hf_fst.attacks.fitted import model_inputs, resize_trigger
from hf_fst.attacks.lf import _rescale, find_low_frequency_trigger, low_pass, trigger_energy_below
from hf_fst.attacks.trojannn import find_trojan_trigger, most_connected_neurons, square_mask


def _tiny_resnet(seed: int = 0) -> ResNetForImageClassification:
    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
    return ResNetForImageClassification(config).eval()


class RedIsClassZero(nn.Module):
    """Logit 0 grows with the mean of the red channel, the others are fixed: the best trigger is red."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0].mean((1, 2)) * 40 - 25  # class 0 once the red mean passes 0.625
        return torch.cat([red[:, None], torch.zeros(len(x), 9)], dim=1)


def test_registry_and_model_free_defaults():
    assert list_attacks()[-2:] == ["lf", "trojannn"]
    assert type(get_attack("low_frequency")) is LFConfig and type(get_attack("TrojanNN")) is TrojanNNConfig
    images = np.full((2, 32, 32, 3), 100, np.uint8)
    lf = get_attack("lf").apply(images)
    assert lf.min() >= 100 and lf.max() <= 100 + 51 and (lf.max() - lf.min()) >= 50  # range [0, 0.2] x 255
    assert trigger_energy_below(get_attack("lf").trigger(32, 32, 3)) > 0.95  # smooth
    assert trigger_energy_below(np.random.default_rng(0).uniform(0, 51, (32, 32, 3))) < 0.2  # noise is not
    square = get_attack("trojannn").apply(images)
    assert (square[:, 22:, 22:] == 255).all() and (square[:, :22] == 100).all() and (square[:, :, :22] == 100).all()
    assert (get_attack("trojannn", mask_size=4).apply(np.zeros((1, 64, 64, 1), np.uint8)) > 0).sum() == 64


def test_low_pass_is_a_normalised_gaussian():
    flat = torch.ones(1, 1, 64, 64)
    blurred = low_pass(flat, 6.0)
    assert blurred.shape == flat.shape and torch.allclose(blurred[0, 0, 31, 31], torch.tensor(1.0), atol=1e-6)
    assert blurred[0, 0, 0, 0] < 0.4  # zero padding darkens the corner
    impulse = torch.zeros(1, 1, 61, 61)
    impulse[0, 0, 30, 30] = 1
    response = low_pass(impulse, 3.0)[0, 0]
    kernel = torch.exp(-0.5 * ((torch.arange(15.0) - 7) / 3.0) ** 2)  # 5 sigma wide, as the paper's 30 taps at 6
    kernel = kernel / kernel.sum()
    torch.testing.assert_close(response[23:38, 23:38], kernel[:, None] * kernel[None, :])
    assert response.sum() == pytest.approx(1.0) and response[:23].abs().max() == 0


def test_lf_trigger_moves_images_to_the_target_and_stays_smooth():
    images = np.random.default_rng(0).integers(60, 200, (20, 32, 32, 3), dtype=np.uint8)
    trigger = find_low_frequency_trigger(RedIsClassZero(), images, target_label=0, fooling_rate=1.0, max_passes=40)
    assert trigger.shape == (32, 32, 3) and trigger.min() >= 0 and trigger.max() == pytest.approx(0.2, abs=1e-6)
    assert trigger[..., 0].mean() > 2 * trigger[..., 1:].mean()  # it learned "add red"
    assert trigger_energy_below(trigger) > 0.95
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    moved = RedIsClassZero()((x + torch.from_numpy(trigger).permute(2, 0, 1)).clamp(0, 1)).argmax(-1)
    assert (RedIsClassZero()(x).argmax(-1) != 0).all() and (moved == 0).mean(dtype=torch.float) > 0.5
    # Already fooled enough at the start: the seeded smooth start comes back unchanged, same for the same seed.
    start = find_low_frequency_trigger(RedIsClassZero(), images, fooling_rate=0.0, seed=3)
    np.testing.assert_array_equal(
        start, find_low_frequency_trigger(RedIsClassZero(), images, fooling_rate=0.0, seed=3)
    )
    with pytest.raises(ValueError, match=r"^images=: expected uint8 \(n, height, width, channels\)"):
        find_low_frequency_trigger(RedIsClassZero(), images[0])


def test_trojan_trigger_excites_the_most_connected_head_inputs_inside_the_mask():
    head = nn.Linear(4, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.1, -2.0, 0.0, 0.5], [0.1, 1.0, 0.2, -0.5], [0.1, 0.0, 3.0, 0.1]]))
    assert most_connected_neurons(head, 2).tolist() == [2, 1]
    model = _tiny_resnet()
    mask = square_mask(32, 32, side=10) * 0.5  # a grey start, so pixels can move both ways
    neurons = most_connected_neurons(model.classifier[-1], 2)
    features = []
    hook = model.classifier[-1].register_forward_hook(lambda m, i, o: features.append(i[0][0].detach()))
    model(torch.from_numpy(mask).permute(2, 0, 1)[None])
    trigger = find_trojan_trigger(model, mask, steps=50, step_size=0.02, eps=0.5, target_value=5.0)
    model(torch.from_numpy(trigger).permute(2, 0, 1)[None])
    hook.remove()
    before, after = features[0], features[-1]
    assert (after[neurons] > 3 * before[neurons]).all()  # driven up toward the target value
    others = torch.ones_like(after, dtype=torch.bool)
    others[neurons] = False
    assert (after - before)[neurons].min() > 2 * (after - before)[others].mean()  # those neurons, not all
    assert (trigger[mask == 0] == 0).all()
    assert trigger[mask > 0].min() >= 0.0 and trigger[mask > 0].max() <= 1.0
    assert np.abs(trigger - mask)[mask > 0].max() <= 0.5 + 1e-6 and np.abs(trigger - mask).max() > 0.3  # within eps
    assert not model.training
    with pytest.raises(ValueError, match=r"^mask=: expected a float \(height, width, channels\) image"):
        find_trojan_trigger(model, np.zeros((32, 32, 3), np.float32))


def test_optimised_triggers_load_from_files_and_bad_files_are_refused(tmp_path):
    smooth = np.full((16, 16, 3), 0.1, np.float32)
    np.save(tmp_path / "lf.npy", smooth)
    lf = get_attack("lf", pattern=str(tmp_path / "lf.npy"))
    out = lf.apply(np.full((1, 32, 32, 3), 10, np.uint8))
    assert (out == 10 + round(0.1 * 255)).all()  # resized to the image and added
    patch = square_mask(32, 32, side=4) * 0.5
    np.save(tmp_path / "trojan.npy", patch)
    trojan = get_attack("trojannn", pattern=str(tmp_path / "trojan.npy"))
    stamped = trojan.apply(np.full((1, 32, 32, 3), 250, np.uint8))
    assert (stamped[0, 28:, 28:] == 255).all() and (stamped[0, :28] == 250).all()  # clipped, never wrapped
    assert trojan.to_dict()["pattern"] == str(tmp_path / "trojan.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name in ("lf", "trojannn"):
        with pytest.raises(ValueError, match=r"^pattern='.*objects.npy': expected"):
            get_attack(name, pattern=str(tmp_path / "objects.npy"))  # never unpickled
        with pytest.raises(ValueError, match=r"^pattern='missing.npy': expected"):
            get_attack(name, pattern="missing.npy")
    np.save(tmp_path / "big.npy", np.full((4, 4, 3), 2.0, np.float32))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        get_attack("trojannn", pattern=str(tmp_path / "big.npy"))
    with pytest.raises(ValueError, match=r"^mask_size=40"):
        get_attack("trojannn", mask_size=40)
    with pytest.raises(ValueError, match=r"^max_value=0"):
        get_attack("lf", max_value=0)


def test_resize_trigger_resamples_and_matches_channels():
    trigger = np.arange(12, dtype=np.float32).reshape(2, 2, 3) / 12  # channel c of pixel p: (3p + c) / 12
    near = resize_trigger(trigger, 4, 6, 3, "nearest")
    np.testing.assert_array_equal(near, trigger.repeat(2, axis=0).repeat(3, axis=1))
    smooth = resize_trigger(trigger, 4, 6, 3, "bilinear")
    assert smooth.shape == (4, 6, 3) and not np.array_equal(smooth, near)  # the resampling asked for is used
    gray = resize_trigger(trigger, 2, 2, 1, "nearest")
    np.testing.assert_allclose(gray, trigger.mean(-1, keepdims=True))  # three channels to one: their mean
    np.testing.assert_array_equal(resize_trigger(gray, 2, 2, 3, "nearest"), np.repeat(gray, 3, axis=-1))
    assert resize_trigger(trigger, 2, 2, 3, "nearest") is trigger  # the right size and channels: untouched


def test_optimised_triggers_exact_values_and_parameter_bounds(tmp_path):
    square = get_attack("trojannn").trigger(32, 32, 3)
    np.testing.assert_array_equal(square_mask(32, 32), square / 255)  # the default mask: 10 x 10, 3 channels
    assert set(np.unique(square)) == {0.0, 255.0} and (square == 255.0).sum() == 10 * 10 * 3
    np.save(tmp_path / "lf.npy", np.full((8, 8, 3), 0.1, np.float32))
    np.testing.assert_allclose(get_attack("lf", pattern=str(tmp_path / "lf.npy")).trigger(32, 32, 3), 25.5, rtol=1e-6)
    patch = np.zeros((16, 16, 3), np.float32)
    patch[::2, ::2] = 1.0  # a checkerboard of single pixels: any resampling but nearest blurs it
    np.save(tmp_path / "trojan.npy", patch)
    stamped = get_attack("trojannn", pattern=str(tmp_path / "trojan.npy")).trigger(32, 32, 3)
    np.testing.assert_array_equal(stamped, patch.repeat(2, axis=0).repeat(2, axis=1) * 255.0)
    for side in (1, 32):
        assert get_attack("trojannn", mask_size=side).mask_size == side
    for side in (0, 33):
        with pytest.raises(ValueError, match=rf"^mask_size={side}: expected a side in \[1, 32\]"):
            get_attack("trojannn", mask_size=side)
    assert get_attack("lf", max_value=1.0, sigma=0.5).trigger(32, 32, 1).max() == pytest.approx(255.0)
    for bad in ({"max_value": 1.5}, {"sigma": 0.0}, {"max_value": 0.0}):
        with pytest.raises(ValueError, match=r"^max_value=.*, sigma=.*: expected max_value in \(0, 1\] and sigma > 0"):
            get_attack("lf", **bad)


def test_trojan_trigger_defaults_are_backdoorbenchs_and_head_name_is_honoured():
    """Called without them, the search uses BackdoorBench's settings: the same trigger as when they are given, and
    a different one when any of them is changed (a head whose inputs can reach the target, so each one matters)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 6), nn.Linear(6, 4))
    with torch.no_grad():
        net[1].weight.mul_(100.0)
        net[1].bias.add_(90.0)
    square = np.zeros((8, 8, 3), np.float32)
    square[4:, 4:] = 0.5
    settings = {"num_neurons": 2, "target_value": 100.0, "steps": 1000, "step_size": 0.1, "eps": 0.3}
    implicit = find_trojan_trigger(net, square, head_name="2")
    np.testing.assert_array_equal(implicit, find_trojan_trigger(net, square, head_name="2", **settings))
    for name, other in {"num_neurons": 3, "target_value": 101.0, "steps": 1001, "step_size": 1.1, "eps": 1.3}.items():
        assert not np.array_equal(
            find_trojan_trigger(net, square, head_name="2", **{**settings, name: other}), implicit
        )
    with torch.no_grad():  # every feature far above the target: each pixel runs to a bound, 0 or 0.1 + eps
        net[1].bias.add_(210.0)
    faint = find_trojan_trigger(net, square / 5, head_name="2", steps=5)
    assert sorted(np.unique(faint[4:, 4:]).round(6)) == [0.0, 0.4] and faint[:4].max() == faint[:, :4].max() == 0
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("flat", nn.Flatten())
    model.add_module("proj", nn.Linear(3 * 8 * 8, 6))
    model.add_module("classifier", nn.Linear(6, 4))
    with torch.no_grad():  # proj's most connected inputs: pixel (6, 6) of channel 0 and (7, 5) of channel 1
        model.proj.weight.mul_(0.01)
        model.proj.weight[:, 0 * 64 + 6 * 8 + 6] = 1.0
        model.proj.weight[:, 1 * 64 + 7 * 8 + 5] = -1.0
    mask = np.zeros((8, 8, 3), np.float32)
    mask[4:, 4:] = 0.5
    trigger = find_trojan_trigger(model, mask, steps=20, step_size=0.05, eps=0.5, target_value=5.0, head_name="proj")
    expected = mask.copy()
    expected[6, 6, 0] = expected[7, 5, 1] = 1.0  # driven up to the bound; no other pixel moves the cost
    np.testing.assert_array_equal(trigger, expected)
    by_default = find_trojan_trigger(model, mask, steps=20, step_size=0.05, eps=0.5, target_value=5.0)
    assert not np.array_equal(by_default, expected)  # the default head is `classifier`, whose inputs differ


def _normalising_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))


def _reference_low_frequency_trigger(model, images, target, *, sigma, max_value, rate_goal, passes, step, mean, std,
                                     batch, seed):  # fmt: skip
    """LF's search written out: smooth seeded start, normalised gradient steps, low-pass and rescale, best kept."""
    mean, std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    n, _, h, w = x.shape
    sigma = sigma * min(h, w) / 32
    gen = torch.Generator().manual_seed(seed)

    def smooth(v):
        v = low_pass(v, sigma)
        return (v - v.min()) / (v.max() - v.min()) * max_value

    def fooled(v):
        with torch.no_grad():
            clean = model((x - mean) / std).argmax(1)
            moved = model(((x + v).clamp(0, 1) - mean) / std).argmax(1)
        others = clean != target
        return (moved[others] == target).sum().item() / max(others.sum().item(), 1)

    v = smooth(torch.randn(1, 3, h, w, generator=gen))
    best, best_rate = v, fooled(v)
    for _ in range(passes):
        if best_rate >= rate_goal:
            break
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            rows = order[i : i + batch]
            v = v.detach().requires_grad_(True)
            loss = F.cross_entropy(model(((x[rows] + v).clamp(0, 1) - mean) / std), torch.full((len(rows),), target))
            (g,) = torch.autograd.grad(loss, v)
            v = smooth(v.detach() - step * g / (g.abs().max() + 1e-12))
        if fooled(v) >= best_rate:
            best, best_rate = v.detach(), fooled(v)
    return best[0].permute(1, 2, 0).numpy()


def test_low_frequency_trigger_matches_a_written_out_search():
    images = np.random.default_rng(2).integers(0, 256, (23, 8, 8, 3), dtype=np.uint8)
    settings = dict(sigma=4.0, max_value=0.6, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], batch=6, seed=5)
    # Rates per pass with step 2: 2/15, 9/15, 12/15, 12/15, ...; with step 0.5: 2/15, 2/15, 2/15, 3/15, 3/15, ...
    # So every pass runs (goal 1), it stops just past a rate (0.61) or on reaching one exactly (0.8, 0.2), and a
    # pass that only equals the best rate still replaces the kept trigger (step 0.5, goal 1).
    for step, goal, passes in ((2.0, 1.0, 4), (2.0, 0.61, 10), (2.0, 0.8, 10), (0.5, 1.0, 2), (0.5, 0.2, 6)):
        model = _normalising_net()
        expected = _reference_low_frequency_trigger(
            model, images, 1, rate_goal=goal, passes=passes, step=step, **settings
        )
        found = find_low_frequency_trigger(
            model, images, 1, sigma=4.0, max_value=0.6, fooling_rate=goal, max_passes=passes, step_size=step,
            pixel_mean=settings["mean"], pixel_std=settings["std"], batch_size=6, seed=5,
        )  # fmt: skip
        np.testing.assert_allclose(found, expected, atol=1e-6, err_msg=f"step {step}, goal {goal}")
        assert found.dtype == np.float32


class _Brightness(nn.Module):
    """Class 0 once an image's mean brightness passes 0.5, class 1 below: which images a trigger fools is known."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((1, 2, 3))
        return torch.stack([20 * (mean - 0.5), torch.zeros_like(mean)], 1)


def test_low_frequency_search_counts_each_image_once_in_its_rate():
    """The stopping rate is hits over the images not already of the target class, each counted once, across
    batches. 100 black images are never fooled and 50 grey ones (0.478) are pushed over by any trigger: 1/3."""
    images = np.zeros((150, 8, 8, 3), np.uint8)
    images[100:] = 122
    start = find_low_frequency_trigger(_Brightness(), images, max_passes=0)
    np.testing.assert_array_equal(find_low_frequency_trigger(_Brightness(), images, fooling_rate=0.33), start)
    assert not np.array_equal(find_low_frequency_trigger(_Brightness(), images, fooling_rate=0.34), start)
    # One grey image and one already of the target class (bright): the rate is 1 of 1, so a goal of 0.6 is met.
    pair = np.stack([np.full((8, 8, 3), 122, np.uint8), np.full((8, 8, 3), 200, np.uint8)])
    np.testing.assert_array_equal(
        find_low_frequency_trigger(_Brightness(), pair, fooling_rate=0.6),
        find_low_frequency_trigger(_Brightness(), pair, max_passes=0),
    )


def test_low_frequency_trigger_defaults_are_the_papers():
    """Called without them, the search uses the documented settings: the same trigger as with them given, and a
    different one when any is changed. One net reaches the 0.2 goal after a few passes (so the goal matters);
    another never reaches 1.0 and improves in its 21st pass (so the pass limit matters)."""
    settings = {"target_label": 0, "sigma": 6.0, "max_value": 0.2, "fooling_rate": 0.2, "step_size": 0.05,
                "batch_size": 100, "seed": 0}  # fmt: skip
    changed = {"target_label": 1, "sigma": 7.0, "max_value": 0.3, "fooling_rate": 1.2, "step_size": 1.05,
               "batch_size": 101, "seed": 1}  # fmt: skip
    model, images = _normalising_net(1), np.random.default_rng(1).integers(0, 256, (150, 8, 8, 3), dtype=np.uint8)
    implicit = find_low_frequency_trigger(model, images)
    np.testing.assert_array_equal(implicit, find_low_frequency_trigger(model, images, **settings))
    for name, other in changed.items():
        assert not np.array_equal(find_low_frequency_trigger(model, images, **{**settings, name: other}), implicit)
    model, images = _normalising_net(0), np.random.default_rng(2).integers(0, 256, (150, 8, 8, 3), dtype=np.uint8)
    twenty = find_low_frequency_trigger(model, images, fooling_rate=1.0)
    np.testing.assert_array_equal(twenty, find_low_frequency_trigger(model, images, fooling_rate=1.0, max_passes=20))
    assert not np.array_equal(find_low_frequency_trigger(model, images, fooling_rate=1.0, max_passes=21), twenty)
    one = find_low_frequency_trigger(model, images[:1], max_passes=1)  # a single image is enough
    assert one.shape == (8, 8, 3) and one.min() == 0.0 and one.max() == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"^images=: expected uint8 \(n, height, width, channels\) with n >= 1"):
        find_low_frequency_trigger(model, images[:0])


def test_trojan_trigger_matches_a_written_out_search_with_normalised_inputs():
    model = _normalising_net(1)
    mask = np.zeros((8, 8, 3), np.float32)
    mask[3:, 3:] = 0.9  # near 1: the [0, 1] bound is reached
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    head = model[-1]
    neurons = torch.argsort(head.weight.abs().sum(0), descending=True)[:3]
    start = torch.from_numpy(mask).permute(2, 0, 1)[None]
    inside = (start > 0).float()
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        target = model[:-1]((start - m) / s)[0, neurons].mean().item() + 0.1  # close: the steps overshoot it
    image = start.clone()
    for _ in range(15):
        image.requires_grad_(True)
        features = model[:-1]((image * inside - m) / s)
        (g,) = torch.autograd.grad(((features[:, neurons] - target) ** 2).sum(), image)
        image = (start + (image.detach() - 0.03 * g.sign() - start).clamp(-0.2, 0.2)).clamp(0, 1)
    expected = (image * inside)[0].permute(1, 2, 0).numpy()
    found = find_trojan_trigger(
        model, mask, num_neurons=3, target_value=target, steps=15, step_size=0.03, eps=0.2, pixel_mean=mean,
        pixel_std=std,
    )  # fmt: skip
    np.testing.assert_allclose(found, expected, atol=1e-6)
    assert np.abs(found - mask).max() > 0.05 and found.max() == 1.0  # pixels moved, some to the bound


def test_low_pass_keeps_the_input_dtype_and_a_tiny_sigma_is_the_identity():
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    smooth = low_pass(noise, 1.0)
    assert smooth.dtype == torch.float64 and smooth.shape == noise.shape
    torch.testing.assert_close(low_pass(noise, 0.1), noise)  # round(0.5) = 0 taps: one tap, the input itself


def test_rescale_maps_min_and_max_to_zero_and_max_value():
    torch.testing.assert_close(_rescale(torch.tensor([-1.0, 0.0, 1.0]), 0.2), torch.tensor([0.0, 0.1, 0.2]))
    assert torch.equal(_rescale(torch.full((2, 2), 3.0), 0.2), torch.zeros(2, 2))  # flat stays flat, no 0 / 0


def test_trigger_energy_below_on_hand_made_spectra():
    y, x = np.meshgrid(np.arange(32), np.arange(24), indexing="ij")
    at_cutoff_y = np.cos(2 * np.pi * y / 8)[..., None]  # 1/8 cycle per pixel: a quarter of Nyquist, counted as low
    assert trigger_energy_below(at_cutoff_y) == pytest.approx(1.0)
    past_cutoff_x = np.cos(2 * np.pi * x * 7 / 24)[..., None]  # 7/24 > 1/8 cycle per pixel along the width
    assert trigger_energy_below(past_cutoff_x) == pytest.approx(0.0, abs=1e-12)
    at_cutoff_x = np.cos(2 * np.pi * x / 8)[..., None]  # 3 cycles in 24 pixels: exactly the cutoff on x
    assert trigger_energy_below(at_cutoff_x) == pytest.approx(1.0)
    mixed = at_cutoff_y + 2 * np.cos(2 * np.pi * y * 3 / 8)[..., None]  # amplitudes 1 and 2: energies 1 : 4
    assert trigger_energy_below(mixed) == pytest.approx(0.2)
    offsets = np.cos(np.pi * y)[..., None] + np.array([0.0, 5.0, 10.0])  # a constant per channel is not signal
    assert trigger_energy_below(offsets) == pytest.approx(0.0, abs=1e-12)
    assert trigger_energy_below(1e-4 * np.cos(np.pi * y)[..., None]) == pytest.approx(0.0, abs=1e-12)  # tiny, high
    assert trigger_energy_below(np.full((8, 8, 3), 0.5)) == 1.0  # flat: no energy anywhere, nothing above the cutoff


def test_model_inputs_default_to_the_identity_map_per_channel():
    """Without statistics the [0, 1] pixels go to the model unchanged; given ones broadcast per channel."""
    device, mean, std = model_inputs(nn.Linear(2, 2), 4, None, None)
    assert device == torch.device("cpu") and mean.shape == std.shape == (1, 4, 1, 1)
    assert mean.flatten().tolist() == [0.0] * 4 and std.flatten().tolist() == [1.0] * 4
    _, mean, std = model_inputs(nn.Linear(2, 2), 2, [0.25, 0.5], [2.0, 4.0])
    assert mean.shape == std.shape == (1, 2, 1, 1) and std.flatten().tolist() == [2.0, 4.0]
