"""CIFAR-10-C's 15 corruptions (pagrob.threats.corruptions): contract, determinism, damage by severity, and
agreement of the parts that re-implement a library's algorithm with that library.

Images: scikit-learn's digits (always there), upscaled to 32x32 and coloured, and the 8x8 grey originals; and,
where ../shared/data/cifar10.npz exists beside the checkout, CIFAR-10 test images (skipped, saying why, otherwise).
"""

from __future__ import annotations

import colorsys
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from sklearn.datasets import load_digits

from pagrob.threats import corruptions as C
from pagrob.threats.corruptions import (CORRUPTION_NAMES, CORRUPTIONS, FAMILIES, SEVERITIES, Corruption, corrupt,
                                        corruption_grid)

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10.npz"

EXPECTED_FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
          "elastic_transform")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These are many small-tensor calls: one thread (a busy machine's thread pool costs more than it gives;
    `test_same_result_with_two_threads` checks that the thread count does not change a result)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _digits(n: int) -> torch.Tensor:
    return torch.tensor(load_digits().images[:n] / 16.0, dtype=torch.float32).unsqueeze(1)


@pytest.fixture(scope="module")
def digits_rgb() -> torch.Tensor:
    """12 digits, 32x32, coloured (a warm stroke on a blue-grey ground), at 8-bit levels."""
    x = F.interpolate(_digits(12), size=32, mode="bilinear", align_corners=False).clamp(0, 1)
    stroke = torch.tensor([0.9, 0.6, 0.3]).view(1, 3, 1, 1)
    ground = torch.tensor([0.1, 0.3, 0.5]).view(1, 3, 1, 1)
    return torch.round((x * stroke + (1 - x) * ground) * 255) / 255


@pytest.fixture(scope="module")
def digits8() -> torch.Tensor:
    return _digits(6)


@pytest.fixture(scope="module")
def cifar() -> torch.Tensor:
    if not SHARED_CIFAR.exists():
        pytest.skip(f"CIFAR-10 is not at {SHARED_CIFAR} (the digits tests cover the same checks)")
    return torch.from_numpy(np.load(SHARED_CIFAR)["x_test"][:16]).permute(0, 3, 1, 2).float() / 255


def _damage(x: torch.Tensor, name: str) -> tuple[list[float], list[float]]:
    """Mean |corrupted - clean| and mean (1 - correlation with the clean image), per severity."""
    seeds = torch.arange(len(x))
    dist, decorrelation = [], []
    for s in SEVERITIES:
        y = corrupt(name, x, s, seeds)
        dist.append(float((y - x).abs().mean()))
        a, b = x.flatten(1) - x.flatten(1).mean(1, keepdim=True), y.flatten(1) - y.flatten(1).mean(1, keepdim=True)
        decorrelation.append(float((1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()))
    return dist, decorrelation


# --------------------------------------------------------------------------------------------- registry

def test_registry_names_families_and_severities():
    assert CORRUPTION_NAMES == sum(EXPECTED_FAMILIES.values(), ())
    assert FAMILIES == EXPECTED_FAMILIES
    assert SEVERITIES == (1, 2, 3, 4, 5)
    assert list(CORRUPTIONS) == list(CORRUPTION_NAMES)
    for name, entry in CORRUPTIONS.items():
        assert isinstance(entry, Corruption) and entry.name == name
        assert name in FAMILIES[entry.family]
        assert entry.summary and "\n" not in entry.summary
        assert callable(entry.fn)
    with pytest.raises(Exception):
        CORRUPTIONS["frost"].family = "digital"  # frozen
    assert {n for n, c in CORRUPTIONS.items() if c.approximation} == {"motion_blur", "snow", "frost"}


# ------------------------------------------------------------------------------------ contract per image

@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_every_severity_valid_deterministic_and_damaging(name, digits_rgb):
    x = digits_rgb
    seeds = torch.arange(100, 100 + len(x))
    for s in SEVERITIES:
        y = corrupt(name, x, s, seeds)
        assert y.shape == x.shape and y.dtype == torch.float32
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        levels = y * 255
        assert torch.equal(levels, torch.round(levels)), "not quantised to 8 bits"
        assert torch.equal(corrupt(name, x, s, seeds), y), "same seeds, different output"
        changed = float((y != x).float().mean())
        assert changed > 0.005 and float((y - x).abs().mean()) > 1e-4, f"{name} s{s} barely changes the image"


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_same_image_same_corruption_in_any_batch(name, digits_rgb):
    x = digits_rgb[:8]
    seeds = torch.tensor([7, 3, 2**40 + 5, -1, 0, 11, 12, 99], dtype=torch.int64)
    whole = corrupt(name, x, 4, seeds)
    order = torch.tensor([5, 2, 7, 0, 3, 1, 6, 4])
    shuffled = corrupt(name, x[order], 4, seeds[order])
    assert torch.equal(shuffled, whole[order])
    pieces = torch.cat([corrupt(name, x[i:i + 3], 4, seeds[i:i + 3]) for i in range(0, 8, 3)])
    assert torch.equal(pieces, whole)
    alone = corrupt(name, x[2:3], 4, seeds[2:3])
    assert torch.equal(alone, whole[2:3])
    if name in RANDOM:  # the seed, not the position, picks the randomness
        other = corrupt(name, x, 4, seeds + 1000)
        assert not torch.equal(other, whole)
        twin = corrupt(name, x[[0, 0]], 4, torch.tensor([7, 7]))
        assert torch.equal(twin[0], twin[1]) and torch.equal(twin[0], whole[0])


def test_same_result_with_two_threads(digits_rgb):
    x, seeds = digits_rgb[:4], torch.arange(4)
    single = {name: corrupt(name, x, 3, seeds) for name in CORRUPTION_NAMES}
    torch.set_num_threads(2)
    try:
        for name in CORRUPTION_NAMES:
            assert torch.equal(corrupt(name, x, 3, seeds), single[name]), name
    finally:
        torch.set_num_threads(1)


def test_global_rngs_untouched(digits_rgb):
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()
    for name in CORRUPTION_NAMES:
        corrupt(name, digits_rgb[:2], 3, torch.tensor([1, 2]))
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_small_grey_images(name, digits8):
    seeds = torch.arange(len(digits8))
    for s in SEVERITIES:
        y = corrupt(name, digits8, s, seeds)
        assert y.shape == digits8.shape and y.dtype == torch.float32
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert torch.equal(y * 255, torch.round(y * 255))
        assert torch.equal(corrupt(name, digits8[1:3], s, seeds[1:3]), y[1:3])


def test_non_square_and_empty():
    x = torch.rand(2, 3, 12, 20)
    for name in CORRUPTION_NAMES:
        assert corrupt(name, x, 5, torch.tensor([0, 1])).shape == x.shape
    assert corrupt("fog", torch.rand(0, 3, 32, 32), 1, torch.zeros(0, dtype=torch.int64)).shape == (0, 3, 32, 32)


# ------------------------------------------------------------------------------------ damage by severity

MONOTONE = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "snow", "fog",
            "brightness", "contrast", "pixelate", "jpeg_compression")


def _check_damage(name: str, x: torch.Tensor) -> None:
    d, decor = _damage(x, name)
    if name in MONOTONE:
        assert all(b > a for a, b in zip(d, d[1:])), (name, d)
    elif name == "motion_blur":
        # severities 3 and 4 share sigma 2 (radius 6 vs 8 adds only taps of weight < e^-18): equal damage
        assert d[0] < d[1] < d[2] < d[4], d
        assert abs(d[3] - d[2]) < 0.02 * d[2], d
    elif name == "glass_blur":
        # 1 and 2 differ only by a blur of sigma 0.05 vs 0.25 (weights e^-8); 3's stronger blur hides part of
        # the one shuffling pass; 4 and 5 shuffle twice: more damage than any one-pass severity
        assert abs(d[1] - d[0]) < 0.02 * d[0], d
        assert d[2] <= d[1], d
        assert min(d[3], d[4]) > max(d[:3]), d
    elif name == "frost":
        # the image's weight falls 1 -> 0.75 while the frost's rises 0.2 -> 0.45: the pixel distance peaks at
        # 3 (0.9 x + 0.4 frost), but the image is ever less of what is left (decorrelation grows throughout)
        assert d[0] < d[1] < d[2] and d[4] > d[0], d
        assert all(b > a for a, b in zip(decor, decor[1:])), decor
    elif name == "elastic_transform":
        # CIFAR-10-C's constants: the affine jitter falls 2.56 -> 0.96 px while the local field grows, and the
        # affine part dominates the pixel distance: severity 1 moves pixels most
        assert all(b < a for a, b in zip(d, d[1:])), d
    else:
        raise AssertionError(f"no damage expectation for {name}")


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_damage_by_severity_digits(name, digits_rgb):
    _check_damage(name, digits_rgb)


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_damage_by_severity_cifar(name, cifar):
    _check_damage(name, cifar)
    for s in SEVERITIES:
        y = corrupt(name, cifar, s, torch.arange(len(cifar)))
        assert y.shape == cifar.shape and float(y.min()) >= 0 and float(y.max()) <= 1
        assert float((y != cifar).float().mean()) > 0.005, (name, s)


# ------------------------------------------------------------------------------------------------ errors

def test_unknown_name_lists_the_valid_ones(digits_rgb):
    with pytest.raises(ValueError) as err:
        corrupt("gaussian_blur", digits_rgb, 1, torch.arange(len(digits_rgb)))
    message = str(err.value)
    assert "gaussian_blur" in message and all(n in message for n in CORRUPTION_NAMES)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, 2.5, True, "3", None])
def test_bad_severity(severity, digits_rgb):
    with pytest.raises(ValueError, match="severity must be an integer from 1 to 5"):
        corrupt("fog", digits_rgb, severity, torch.arange(len(digits_rgb)))


def test_bad_images_and_seeds():
    seeds = torch.arange(2)
    for bad, match in [(torch.rand(2, 32, 32), "N, C, H, W"), (torch.rand(2, 2, 32, 32), "C = 1 or 3"),
                       (torch.rand(2, 3, 7, 32), "at least 8x8"), (torch.randint(0, 255, (2, 3, 32, 32)), "float"),
                       (torch.rand(2, 3, 32, 32) * 2, r"\[0, 1\]"),
                       (torch.full((2, 3, 32, 32), float("nan")), r"\[0, 1\]")]:
        with pytest.raises(ValueError, match=match):
            corrupt("contrast", bad, 1, seeds)
    x = torch.rand(2, 3, 32, 32)
    for bad in (torch.arange(3), torch.zeros(2), torch.zeros(2, 1, dtype=torch.int64), [0, 1]):
        with pytest.raises(ValueError, match="one seed per image"):
            corrupt("contrast", x, 1, bad)


# ------------------------------------------------------------------------------------------------- grid

def test_corruption_grid_matches_corrupt(digits_rgb):
    x = digits_rgb[3]
    grid = corruption_grid(x, 42)
    assert grid.shape == (15, 5, 3, 32, 32)
    for r, name in enumerate(CORRUPTION_NAMES):
        for c, s in enumerate(SEVERITIES):
            assert torch.equal(grid[r, c], corrupt(name, x[None], s, torch.tensor([42]))[0])
    assert torch.equal(corruption_grid(x[None], torch.tensor([42])), grid)
    with pytest.raises(ValueError):
        corruption_grid(digits_rgb[:2], 0)


# ------------------------------------------------------------------- agreement with the reference libraries

def test_zoom_blur_is_scipy_zoom(digits_rgb):
    """The reference's clipped_zoom with scipy.ndimage.zoom(order=1), averaged with the image."""
    a = digits_rgb[0].permute(1, 2, 0).double().numpy()

    def clipped_zoom(img, z):
        h = img.shape[0]
        ch = int(np.ceil(h / z))
        top = (h - ch) // 2
        img = ndimage.zoom(img[top:top + ch, top:top + ch], (z, z, 1), order=1)
        trim = (img.shape[0] - h) // 2
        return img[trim:trim + h, trim:trim + h]

    for s in SEVERITIES:
        factors = np.arange(1, (1.06, 1.11, 1.16, 1.21, 1.26)[s - 1], 0.01)
        ref = (a + sum(clipped_zoom(a, z) for z in factors)) / (len(factors) + 1)
        ref = np.round(np.clip(ref, 0, 1) * 255)
        ours = corrupt("zoom_blur", digits_rgb[:1], s, torch.zeros(1, dtype=torch.int64))[0].permute(1, 2, 0)
        assert np.abs(ours.double().numpy() * 255 - ref).max() < 1e-3, s


def test_pixelate_is_pillow_box(digits_rgb):
    a = digits_rgb[1].permute(1, 2, 0).numpy() * 255
    for s, c in zip(SEVERITIES, (0.95, 0.9, 0.85, 0.75, 0.65)):
        ref = np.stack([np.asarray(Image.fromarray(a[..., k].astype(np.float32)).resize((int(32 * c),) * 2, Image.BOX)
                                   .resize((32, 32), Image.BOX)) for k in range(3)], -1)
        # before quantising (8-bit inputs make many exact .5 averages, which Pillow's float32 sums put either side)
        ours = C._pixelate(digits_rgb[1:2].double(), s, [])[0].permute(1, 2, 0).numpy() * 255
        assert np.abs(ours - ref).max() < 1e-3, s


def test_jpeg_is_pillow_at_cifar_quality(digits_rgb):
    a = np.round(digits_rgb[2].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    for s, q in zip(SEVERITIES, (80, 65, 58, 50, 40)):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=q)
        ref = np.asarray(Image.open(buf))
        ours = corrupt("jpeg_compression", digits_rgb[2:3], s, torch.zeros(1, dtype=torch.int64))[0]
        assert np.array_equal(np.round(ours.permute(1, 2, 0).numpy() * 255).astype(np.uint8), ref)


def test_brightness_is_an_hsv_value_shift(cifar):
    x = cifar[:2]
    for s, c in zip(SEVERITIES, (0.05, 0.1, 0.15, 0.2, 0.3)):
        ours = corrupt("brightness", x, s, torch.zeros(2, dtype=torch.int64))
        for i in range(2):
            px = x[i].permute(1, 2, 0).reshape(-1, 3).double().numpy()
            ref = []
            for r, g, b in px:
                h, sat, v = colorsys.rgb_to_hsv(r, g, b)
                ref.append(colorsys.hsv_to_rgb(h, sat, min(v + c, 1.0)))
            ref = np.round(np.clip(np.array(ref), 0, 1) * 255)
            got = np.round(ours[i].permute(1, 2, 0).reshape(-1, 3).double().numpy() * 255)
            assert np.abs(got - ref).max() <= 1.0 and np.mean(got != ref) < 0.001


def test_contrast_scales_deviations_from_channel_means(digits_rgb):
    x = digits_rgb[:3].double()
    for s, c in zip(SEVERITIES, (0.75, 0.5, 0.4, 0.3, 0.15)):
        means = x.mean(dim=(2, 3), keepdim=True)
        ref = torch.round(((x - means) * c + means).clamp(0, 1) * 255)
        got = torch.round(corrupt("contrast", digits_rgb[:3], s, torch.zeros(3, dtype=torch.int64)).double() * 255)
        assert float((got - ref).abs().max()) <= 1.0 and float((got != ref).double().mean()) < 0.001


def test_glass_blur_vectorised_equals_the_reference_loop(digits_rgb):
    """The reference's sequential pixel loop, with its numpy tuple 'swap' of two views (which copies), on the
    same shifts, gives our vectorised result."""

    class FixedShifts:
        def __init__(self, shifts):
            self.shifts = shifts

        def integers(self, low, high, size):
            return self.shifts

    shifts = np.random.default_rng(5).integers(-1, 1, size=(2, 30, 30, 2))
    a = digits_rgb[4:5].double()
    for s in (3, 5):
        sigma, delta, passes = C._GLASS[s - 1]
        ref = C._round8(C._gaussian_blur(a, sigma, 4.0, "nearest"))[0].permute(1, 2, 0).numpy().copy()
        for p in range(passes):
            for hi, h in enumerate(range(32 - delta, delta, -1)):
                for wi, w in enumerate(range(32 - delta, delta, -1)):
                    dx, dy = shifts[p, hi, wi]
                    ref[h, w], ref[h + dy, w + dx] = ref[h + dy, w + dx], ref[h, w]
        ref = C._gaussian_blur(torch.from_numpy(ref).permute(2, 0, 1)[None], sigma, 4.0, "nearest")
        ours = C._glass_blur(a, s, [FixedShifts(shifts)])
        assert float((ours - ref).abs().max()) < 1e-12


def test_gaussian_smoothing_matches_scipy():
    field = np.random.default_rng(0).uniform(-1, 1, (32, 32))
    for sigma in (6.4, 1.92, 0.96):  # elastic: mode 'reflect' (symmetric), truncate 3
        ref = ndimage.gaussian_filter(field, sigma, mode="reflect", truncate=3.0)
        ours = C._gaussian_blur(torch.from_numpy(field)[None, None], sigma, 3.0, "symmetric")[0, 0].numpy()
        assert np.abs(ours - ref).max() < 1e-12
    for sigma in (0.25, 0.4):  # glass: skimage's default mode 'nearest', truncate 4
        ref = ndimage.gaussian_filter(field, sigma, mode="nearest", truncate=4.0)
        ours = C._gaussian_blur(torch.from_numpy(field)[None, None], sigma, 4.0, "nearest")[0, 0].numpy()
        assert np.abs(ours - ref).max() < 1e-12


def test_motion_blur_kernel_is_imagemagicks():
    """ImageMagick's MotionBlurImage: a one-sided Gaussian over 2 ceil(radius) + 1 taps; at angle 0 the pixel
    (y, x) reads (y, x + i), so a dot becomes a streak to its left, fading over ~sigma px."""
    dot = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    dot[0, 0, 16, 20] = 1.0
    out = C._motion_blur(dot, 6, 2.0, np.array([0.0]))[0, 0]
    kernel = np.exp(-np.arange(13) ** 2 / 8.0)
    kernel /= kernel.sum()
    expected = torch.zeros(32, 32, dtype=torch.float64)
    expected[16, 20 - np.arange(13)] = torch.from_numpy(kernel)
    assert float((out - expected).abs().max()) < 1e-15
    down = C._motion_blur(dot, 6, 2.0, np.array([90.0]))[0, 0]  # 90 degrees: reads (y + i, x), streak upwards
    assert torch.allclose(down[16 - np.arange(13), 20], torch.from_numpy(kernel))


def test_fog_plasma_is_normalised_and_seeded():
    u = np.random.default_rng(3).uniform(-1, 1, (2, C._plasma_draws(32)))
    m = C._plasma(u, 32, 2.0)
    assert m.shape == (2, 32, 32)
    assert np.allclose(m.min(axis=(1, 2)), 0) and np.allclose(m.max(axis=(1, 2)), 1)
    assert not np.allclose(m[0], m[1])
    assert np.array_equal(C._plasma(u[1:], 32, 2.0)[0], m[1])


def test_frost_texture_looks_like_the_photographs():
    """The procedural texture's 32x32 statistics sit where the reference's frost photographs' crops do."""
    t = C._frost_texture([np.random.default_rng([i, 8]) for i in range(64)], 3, 32, 32).numpy()
    blue = t[:, 2].mean(axis=(1, 2))
    assert 0.55 < blue.mean() < 0.8 and blue.min() > 0.4
    assert 0.06 < t.std(axis=(2, 3)).mean() < 0.14
    gray = t.mean(1)
    assert 0.04 < np.abs(np.diff(gray, axis=2)).mean() < 0.12
    assert (t[:, 0].mean(axis=(1, 2)) < blue).all() and (t[:, 1].mean(axis=(1, 2)) < blue).all()  # bluish


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_output_on_input_device(digits_rgb):
    y = corrupt("snow", digits_rgb.cuda(), 2, torch.arange(len(digits_rgb)))
    assert y.device.type == "cuda"
    assert torch.equal(y.cpu(), corrupt("snow", digits_rgb, 2, torch.arange(len(digits_rgb))))
