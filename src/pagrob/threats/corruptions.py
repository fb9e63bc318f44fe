"""The 15 common corruptions of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019), at its 5 severities.

`corrupt(name, x, severity, seeds)` corrupts a batch x (N, C, H, W), float in [0, 1], C = 1 or 3, H, W >= 8,
and returns float32 images of the same shape, **quantised to 8 bits** (k / 255, rounded to the nearest level), as
CIFAR-10-C is stored as uint8 images (its generator truncated with `np.uint8`; rounding differs by under one level).
The severity constants are CIFAR-10-C's (``make_cifar_c.py`` of github.com/hendrycks/robustness), in pixels, and
stay those for any image size (an 8x8 image gets the same blur radii, in pixels, as a 32x32 one).

Randomness: image i's corruption draws only from its own generator, `numpy.random.default_rng([seeds[i],
stream])`, with one stream per corruption, so an image gets the same corruption whatever batch, order or batch
size it comes in (evaluations that resume rely on it). The global RNGs are never touched. The draws do not depend
on the severity either (common random numbers): an image's noise pattern, blur angle or snow flakes are the same
at every severity, scaled by the severity's constants, so the damage grows with severity image by image too.
Everything runs on the CPU in float64 with fixed-order sums (no reduction whose order depends on the batch), and
the result is returned on x's device.

Faithful to the reference algorithms (own code, the benchmark's constants): the three noises, defocus, glass
(including the reference's pixel "swap", which copies the up/left neighbour, see `_glass_blur`), motion (a
re-implementation of ImageMagick's one-sided Gaussian motion-blur kernel, which the reference called through Wand),
zoom (scipy's order-1 zoom, reproduced), fog (the same diamond-square plasma fractal), brightness (HSV value
shift, in closed form), contrast, elastic (the random affine + smoothed displacement field; bilinear sampling
without OpenCV's 1/32-pixel fixed-point grid), pixelate (Pillow's BOX filter weights, down and up) and JPEG (Pillow,
the same quality levels). Snow uses the reference's snow layer with our own motion blur for Wand's.
**Frost is an approximation**: the reference overlays crops of six frost photographs that are not ours to ship;
`_frost_texture` draws a procedural ice texture per image instead (a bluish-white base with low-frequency
thickness variations, random thin bright crystal streaks, and grain), with statistics matched to the photographs'
32x32 crops (mean, contrast, edge energy), blended with CIFAR-10-C's frost coefficients. Numbers on `frost` are
therefore close to, not comparable bit for bit with, CIFAR-10-C's.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import sparse
from torch import Tensor

SEVERITIES = (1, 2, 3, 4, 5)
VERSION = 1  # of these implementations: stored outcomes of another version are not reused
MIN_SIZE = 8
_MASK64 = (1 << 64) - 1

Rngs = list[np.random.Generator]


# ----------------------------------------------------------------------------------------------- helpers

def _fold_t(i: Tensor, n: int, mode: str) -> Tensor:
    """Map integer positions (any range) into 0..n-1 by a boundary rule:
    nearest (a a | a b c | c c), reflect101 (c b | a b c | b a, about the edge pixels' centres: OpenCV's
    default) or symmetric (b a | a b c | c b, about the image edges: scipy's 'reflect')."""
    if mode == "nearest":
        return i.clamp(0, n - 1)
    if mode == "reflect101":
        if n == 1:
            return torch.zeros_like(i)
        j = torch.remainder(i, 2 * n - 2)
        return torch.where(j < n, j, 2 * n - 2 - j)
    if mode == "symmetric":
        j = torch.remainder(i, 2 * n)
        return torch.where(j < n, j, 2 * n - 1 - j)
    raise AssertionError(mode)


def _fold_np(i: np.ndarray, n: int, mode: str) -> np.ndarray:
    """`_fold_t` for a numpy array."""
    return _fold_t(torch.from_numpy(i), n, mode).numpy()


def _taps_matrix(idx: np.ndarray, w: np.ndarray, n_in: int) -> sparse.csr_matrix:
    """A 1-D linear map as a sparse (n_out, n_in) matrix: out[o] = sum_t w[o, t] * in[idx[o, t]]."""
    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    return sparse.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(idx.shape[0], n_in))


def _operator(matrix: sparse.spmatrix, out_hw: tuple[int, int]) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """A linear map on flattened pixels, (H_out W_out, H W) sparse, as padded taps: index and weight (rows, T),
    each output pixel's non-zero inputs in increasing order (padding: index 0, weight 0)."""
    m = sparse.csr_matrix(matrix)
    m.sum_duplicates()
    m.eliminate_zeros()
    m.sort_indices()
    lengths = np.diff(m.indptr)
    taps = max(int(lengths.max()) if len(lengths) else 0, 1)
    row_of = np.repeat(np.arange(m.shape[0]), lengths)
    pos = np.arange(m.nnz) - m.indptr[row_of]
    idx = np.zeros((m.shape[0], taps), dtype=np.int64)
    wts = np.zeros((m.shape[0], taps), dtype=np.float64)
    idx[row_of, pos] = m.indices
    wts[row_of, pos] = m.data
    return torch.from_numpy(idx.T.copy()), torch.from_numpy(wts.T.copy()), out_hw


def _apply_operator(x: Tensor, op: tuple[Tensor, Tensor, tuple[int, int]]) -> Tensor:
    """Apply an `_operator` to (N, C, H, W): a fixed-order sum, over taps, of gathered pixels times weights.

    Elementwise, so each image's result is bit for bit the same whatever else is in the batch (a matrix
    product's blocking, and so its rounding, may depend on the batch size)."""
    idx, wts, (h, w) = op
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    out = None
    for t in range(idx.shape[0]):
        term = flat.gather(2, idx[t].expand(n, c, -1)) * wts[t]
        out = term if out is None else out + term
    return out.reshape(n, c, h, w)


def _separable(rows: sparse.spmatrix, cols: sparse.spmatrix) -> sparse.csr_matrix:
    """The map on flattened (row-major) pixels of a map on rows followed by one on columns."""
    return sparse.kron(sparse.csr_matrix(rows), sparse.csr_matrix(cols), format="csr")


def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's kernel: radius int(truncate * sigma + 0.5), normalised."""
    if sigma <= 0:
        return np.ones(1)
    radius = int(truncate * sigma + 0.5)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return kernel / kernel.sum()


def _pad(x: Tensor, dim: int, r: int, mode: str) -> Tensor:
    """x extended by r positions on both sides of `dim` by the boundary rule `mode`."""
    n = x.shape[dim]
    index = torch.from_numpy(_fold_np(np.arange(-r, n + r), n, mode))
    return x[(slice(None),) * dim + (index,)]


def _shift_filter(x: Tensor, dim: int, kernel: np.ndarray, mode: str) -> Tensor:
    """Correlate along `dim` with an odd-length kernel centred on the pixel; borders by `mode`. A fixed-order
    sum of shifted slices (elementwise: batch-independent to the bit)."""
    r = len(kernel) // 2
    n = x.shape[dim]
    padded = _pad(x, dim, r, mode)
    out = None
    for t, k in enumerate(kernel):
        if k == 0.0:
            continue
        term = padded.narrow(dim, t, n) * float(k)
        out = term if out is None else out + term
    return out


def _gaussian_blur(x: Tensor, sigma: float, truncate: float, mode: str) -> Tensor:
    """Separable Gaussian blur over the last two dimensions (skimage.filters.gaussian of one channel)."""
    kernel = _gaussian_kernel(sigma, truncate)
    return _shift_filter(_shift_filter(x, x.dim() - 2, kernel, mode), x.dim() - 1, kernel, mode)


def _filter2d(x: Tensor, kernel: np.ndarray, mode: str) -> Tensor:
    """Correlate (N, C, H, W) with a small odd-sized 2-D kernel (cv2.filter2D), borders by `mode`."""
    h, w = x.shape[-2:]
    r = kernel.shape[0] // 2
    padded = _pad(_pad(x, 2, r, mode), 3, r, mode)
    out = None
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            k = float(kernel[dy, dx])
            if k == 0.0:
                continue
            term = padded[:, :, dy:dy + h, dx:dx + w] * k
            out = term if out is None else out + term
    return out


def _round8(x: Tensor) -> Tensor:
    """Quantise [0, 1] values to the nearest of 256 levels (an 8-bit image), staying float64."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def _draw(rngs: Rngs, draw: Callable[[np.random.Generator], np.ndarray]) -> np.ndarray:
    """Each image's draw from its own generator, stacked over the batch."""
    return np.stack([np.asarray(draw(r), dtype=np.float64) for r in rngs]) if rngs else np.zeros((0,))


def _gray(x: Tensor) -> Tensor:
    """Luma (N, 1, H, W) as OpenCV's RGB2GRAY weighs it (0.299, 0.587, 0.114); a 1-channel image is its own."""
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _bilinear(img: Tensor, py: Tensor, px: Tensor, mode: str) -> Tensor:
    """Sample (N, C, H, W) at source coordinates py, px (N, H, W) (rows, columns; pixel centres at integers)
    with bilinear interpolation; neighbours outside the image are taken by the boundary rule `mode`."""
    n, c, h, w = img.shape
    y0f, x0f = torch.floor(py), torch.floor(px)
    fy, fx = (py - y0f).unsqueeze(1), (px - x0f).unsqueeze(1)
    y0, x0 = y0f.long(), x0f.long()
    iy0, iy1 = _fold_t(y0, h, mode), _fold_t(y0 + 1, h, mode)
    ix0, ix1 = _fold_t(x0, w, mode), _fold_t(x0 + 1, w, mode)
    flat = img.reshape(n, c, h * w)

    def at(iy: Tensor, ix: Tensor) -> Tensor:
        index = (iy * w + ix).reshape(n, 1, h * w).expand(n, c, h * w)
        return flat.gather(2, index).reshape(n, c, h, w)

    top = at(iy0, ix0) * (1 - fx) + at(iy0, ix1) * fx
    bottom = at(iy1, ix0) * (1 - fx) + at(iy1, ix1) * fx
    return top * (1 - fy) + bottom * fy


def _zoom_matrix(n: int, factor: float) -> sparse.csr_matrix:
    """The reference's `clipped_zoom` along one axis of n pixels, as an (n, n) matrix: crop the central
    ceil(n / factor) pixels, zoom them with scipy.ndimage.zoom(order=1) (output round(crop * factor) pixels,
    corners aligned), and keep the central n: output i reads the crop at top + (i + trim) (crop - 1) / (out - 1)."""
    crop = int(np.ceil(n / factor))
    top = (n - crop) // 2
    size = int(round(crop * factor))
    trim = (size - n) // 2
    pos = top + (np.arange(n) + trim) * ((crop - 1) / (size - 1) if size > 1 else 0.0)
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    return _taps_matrix(np.stack([i0, np.minimum(i0 + 1, n - 1)], 1), np.stack([1 - frac, frac], 1), n)


@functools.lru_cache(maxsize=64)
def _clipped_zoom_op(h: int, w: int, factor: float):
    return _operator(_separable(_zoom_matrix(h, factor), _zoom_matrix(w, factor)), (h, w))


def _clipped_zoom(x: Tensor, factor: float) -> Tensor:
    return _apply_operator(x, _clipped_zoom_op(x.shape[2], x.shape[3], float(factor)))


def _motion_blur(x: Tensor, radius: float, sigma: float, angles: np.ndarray) -> Tensor:
    """ImageMagick's MotionBlurImage(radius, sigma, angle), which the reference called through Wand: a one-sided
    Gaussian over 2 * ceil(radius) + 1 taps, tap i reading the pixel i steps along the angle (rounded to the
    grid: dx = ceil(i cos a - 0.5), dy = ceil(i sin a - 0.5), y pointing down), edges replicated. One angle
    (degrees) per image."""
    n, c, h, w = x.shape
    width = int(2 * math.ceil(radius) + 1)
    kernel = np.exp(-(np.arange(width, dtype=np.float64) ** 2) / (2.0 * sigma * sigma))
    kernel /= kernel.sum()
    steps = np.arange(width)
    # per image, in scalar Python math so an image's offsets never depend on its neighbours in the batch
    cos = np.array([math.cos(math.radians(float(a))) for a in angles], dtype=np.float64).reshape(-1, 1)
    sin = np.array([math.sin(math.radians(float(a))) for a in angles], dtype=np.float64).reshape(-1, 1)
    off_x = torch.from_numpy(np.ceil(steps * cos - 0.5).astype(np.int64))  # (N, width)
    off_y = torch.from_numpy(np.ceil(steps * sin - 0.5).astype(np.int64))
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    flat = x.reshape(n, c, h * w)
    out = None
    for i in range(width):
        iy = (rows + off_y[:, i].view(n, 1, 1)).clamp(0, h - 1)
        ix = (cols + off_x[:, i].view(n, 1, 1)).clamp(0, w - 1)
        index = (iy * w + ix).reshape(n, 1, h * w).expand(n, c, h * w)
        term = flat.gather(2, index) * float(kernel[i])
        out = term if out is None else out + term
    return out.reshape(n, c, h, w)


def _pil_box_matrix(n_in: int, n_out: int) -> sparse.csr_matrix:
    """Pillow's BOX resampling from n_in to n_out pixels as an (n_out, n_in) matrix (its precompute_coeffs with
    the box filter): output pixel o averages the input pixels whose centres fall in its footprint, so
    down-sampling is a box average and up-sampling is nearest."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    rows, cols, vals = [], [], []
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        taps = [i for i in range(lo, hi) if -0.5 < (i - centre + 0.5) / filterscale <= 0.5]
        for i in taps:
            rows.append(o)
            cols.append(i)
            vals.append(1.0 / len(taps))
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n_out, n_in))


# ------------------------------------------------------------------------------------------- corruptions
# Each takes x (N, C, H, W) float64 on the CPU, the severity (1..5) and one generator per image, and returns
# float64 (N, C, H, W); `corrupt` clips to [0, 1] and quantises.

def _gaussian_noise(x: Tensor, severity: int, rngs: Rngs) -> Tensor:
    c = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    z = torch.from_numpy(_draw(rngs, lambda r: r.standard_normal(tuple(x.shape[1:]))).reshape(x.shape))
    return x + c * z


def _shot_noise(x: Tensor, severity: int, rngs: Rngs) -> Tensor:
    c = (500, 250, 100, 75, 50)[severity - 1]
    lam = (x * c).numpy()
    counts = np.stack([r.poisson(lam_i) for r, lam_i in zip(rngs, lam)]) if rngs else lam
    return torch.from_numpy(counts.astype(np.float64) / c)


def _impulse_noise(x: Tensor, severity: int, rngs: Rngs) -> Tensor:
    # skimage's random_noise(mode='s&p'): each value is replaced with probability `amount`, half by 1, half by 0
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]
    u = torch.from_numpy(_draw(rngs, lambda r: r.random((2,) + tuple(x.shape[1:]))).reshape(len(x), 2, *x.shape[1:]))
    flipped, salt = u[:, 0] < amount, u[:, 1] < 0.5
    out = x.clone()
    out[flipped & salt] = 1.0
    out[flipped & ~salt] = 0.0
    return out


_DEFOCUS = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))  # (disk radius, alias blur sigma)


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's `disk`: an aliased disk on a 17x17 grid, normalised, smoothed by a 3x3 Gaussian
    (OpenCV's GaussianBlur with sigma alias_blur), cropped to its non-zero support."""
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-(np.arange(-1, 2) ** 2) / (2.0 * alias_blur ** 2))
    g /= g.sum()
    smooth = np.zeros_like(disk)
    padded = np.pad(disk, 1)
    for dy in range(3):
        for dx in range(3):
            smooth += g[dy] * g[dx] * padded[dy:dy + 17, dx:dx + 17]
    nz = np.nonzero(smooth.sum(0))[0]
    r = max(8 - nz.min(), nz.max() - 8)
    return smooth[8 - r:9 + r, 8 - r:9 + r]


def _defocus_blur(x: Tensor, severity: int, rngs: Rngs) -> Tensor:
    return _filter2d(x, _disk_kernel(*_DEFOCUS[severity - 1]), "reflect101")


_GLASS = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))  # (sigma, max delta, iterations)


def _glass_blur(x: Tensor, severity: int, rngs: Rngs) -> Tensor:
    """Blur, store as 8 bits, shuffle pixels locally, blur again.

    The reference visits (h, w) for h, w from size - delta down to delta + 1 and "swaps" the pixel with
    (h + dy, w + dx), dx, dy uniform in [-delta, delta) (numpy's randint excludes the top: {-1, 0}), writing
    ``x[h, w], x[h2, w2] = x[h2, w2], x[h, w]``. On an RGB array both sides are views, so this copies (h2, w2)
    into (h, w) and leaves (h2, w2) alone; and (h2, w2), up or left of (h, w), is visited later, so it still
    holds its value from before the pass. CIFAR-10-C was made this way, so we do the same, vectorised: one
    pass sets every visited pixel to its original up/left neighbour (dy, dx), all at once."""
    sigma, delta, iterations = _GLASS[severity - 1]
    n, c, h, w = x.shape
    y = _round8(_gaussian_blur(x, sigma, 4.0, "nearest"))
    hs = np.arange(delta + 1, h - delta + 1)  # the rows visited (range(h - delta, delta, -1))
    ws = np.arange(delta + 1, w - delta + 1)
    # two passes' draws always (the same shifts at every severity), (N, pass, row, col, (dx, dy))
    shifts = _draw(rngs, lambda r: r.integers(-delta, delta, size=(2, len(hs), len(ws), 2))).astype(np.int64)
    rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
    cols = np.broadcast_to(np.arange(w)[None, :], (h, w))
    for p in range(iterations):
        src_r = np.broadcast_to(rows, (n, h, w)).copy()
        src_c = np.broadcast_to(cols, (n, h, w)).copy()
        # the draws are in visiting order (rows and columns descending): reverse them onto ascending positions
        src_r[:, hs[0]:hs[-1] + 1, ws[0]:ws[-1] + 1] += shifts[:, p, ::-1, ::-1, 1]
        src_c[:, hs[0]:hs[-1] + 1, ws[0]:ws[-1] + 1] += shifts[:, p, ::-1, ::-1, 0]
        index = torch.from_numpy((src_r * w + src_c).reshape(n, 1, h * w)).expand(n, c, h * w)
        y = y.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)
    return _gaussian_blur(y, sigma, 4.0, "nearest")


_MOTION = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))  # (radius, sigma); angle uniform in (-45, 45) degrees


def _motion_blur_corruption(x: Tensor, severity: int, rngs: Rngs) -> Tensor:
    radius, sigma = _MOTION[severity - 1]
    angles = _draw(rngs, lambda r: r.uniform(-45, 45)).reshape(-1)
    return _motion_blur(x, radius, sigma, angles)


# np.arange as the reference writes it: 7, 12, 16, 21 and 26 factors (1.06 itself falls inside the first)
_ZOOM = tuple(np.arange(1, top, 0.01) for top in (1.06, 1.11, 1.16, 1.21, 1.26))


def _zoom_blur(x: Tensor, severity: int, rngs: Rngs) -> Tensor:
    return _apply_operator(x, _zoom_blur_op(x.shape[2], x.shape[3], severity))


@functools.lru_cache(maxsize=32)
def _zoom_blur_op(h: int, w: int, severity: int):
    """(x + sum of x zoomed by each factor) / (factors + 1), as one map on flattened pixels: each output pixel
    reads a few neighbouring pixels (13 taps at severity 3 on 32x32), cheaper than 16 separate zooms."""
    factors = _ZOOM[severity - 1]
    total = sparse.identity(h * w, format="csr")
    for factor in factors:
        total = total + _separable(_zoom_matrix(h, float(factor)), _zoom_matrix(w, float(factor)))
    return _operator(total / (len(factors) + 1), (h, w))


# (loc, scale, zoom, threshold, blur radius, blur sigma, blend)
_SNOW = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95),
         (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
         (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
         (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
         (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))


def _snow(x: Tensor, severity: int, rngs: Rngs) -> Tensor:
    """A layer of Gaussian flakes, zoomed, thresholded, stored as 8 bits and motion-blurred (our ImageMagick
    kernel in place of Wand's) at an angle in (-135, -45) degrees; added to the image, and to it turned by 180
    degrees, over an image whitened towards 1.5 x its luma + 0.5."""
    loc, scale, zoom, threshold, radius, sigma, blend = _SNOW[severity - 1]
    n, c, h, w = x.shape
    flakes = _draw(rngs, lambda r: r.standard_normal((h, w)))
    angles = _draw(rngs, lambda r: r.uniform(-135, -45)).reshape(-1)
    layer = loc + scale * torch.from_numpy(flakes).reshape(n, 1, h, w)
    layer = _clipped_zoom(layer, float(zoom))
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer = torch.floor(layer.clamp(0, 1) * 255.0) / 255.0  # the reference's uint8 PNG
    layer = _round8(_motion_blur(layer, radius, sigma, angles))  # ImageMagick writes 8 bits back
    x = blend * x + (1 - blend) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + layer + torch.flip(layer, dims=(2, 3))


_FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))  # (image weight, frost weight)


def _frost_texture(rngs: Rngs, c: int, h: int, w: int) -> Tensor:
    """A procedural frost texture (N, c, h, w) in [0, 1], one per image from its generator.

    An approximation of the reference's photographs (not ours to ship): a base level of ice with low-frequency
    thickness variations, thin bright crystal streaks (random segments, 1.5-9.5 px long, at random angles,
    drawn at their brightest and blurred by 0.5 px), and fine grain, tinted bluish white (red and green as a
    fraction of blue). Its 32x32 statistics follow the photographs' (crops after the reference's 0.2x resize):
    blue-channel mean about 0.45-0.85, within-crop standard deviation about 0.06-0.14, mean absolute horizontal
    difference about 0.04-0.12, red/blue 0.5-0.95, green/blue 0.88-0.97."""
    n = len(rngs)
    k = max(8, (h * w + 6) // 12)  # crystals per image: 85 on 32x32
    samples = 24
    params = _draw(rngs, lambda r: np.concatenate([
        r.uniform(0.42, 0.76, 1),  # base ice level
        r.uniform(0.25, 0.45, 1),  # crystal brightness
        r.uniform(0.6, 0.95, 1),  # red / blue
        r.uniform(0.88, 0.97, 1),  # green / blue
        r.uniform(0, 1, 4 * k),  # per crystal: centre x, centre y, length, brightness
        r.standard_normal(2 * k),  # per crystal: direction
        r.uniform(-1, 1, 25),  # 5x5 low-frequency thickness
        r.standard_normal(h * w),  # grain
    ]))
    base, amp, red, green = (params[:, i] for i in range(4))
    seg = params[:, 4:4 + 4 * k].reshape(n, k, 4)
    direction = params[:, 4 + 4 * k:4 + 6 * k].reshape(n, k, 2)
    low = params[:, 4 + 6 * k:4 + 6 * k + 25].reshape(n, 1, 5, 5)
    grain = params[:, 4 + 6 * k + 25:].reshape(n, 1, h, w)

    cx = seg[..., 0] * (w + 4) - 2
    cy = seg[..., 1] * (h + 4) - 2
    length = 1.5 + 8.0 * seg[..., 2]
    bright = 0.2 + 0.8 * seg[..., 3]
    norm = np.sqrt(direction[..., 0] ** 2 + direction[..., 1] ** 2) + 1e-12
    ux, uy = direction[..., 0] / norm, direction[..., 1] / norm
    t = np.linspace(-0.5, 0.5, samples)
    px = np.floor(cx[..., None] + t * (length * ux)[..., None]).astype(np.int64)  # (N, k, samples)
    py = np.floor(cy[..., None] + t * (length * uy)[..., None]).astype(np.int64)
    inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    image_of = np.broadcast_to(np.arange(n)[:, None, None], px.shape)
    flat = (image_of * h * w + py * w + px)[inside]
    values = np.broadcast_to(bright[..., None], px.shape)[inside]
    canvas = torch.zeros(n * h * w, dtype=torch.float64)
    canvas.scatter_reduce_(0, torch.from_numpy(flat), torch.from_numpy(values.copy()), reduce="amax")
    crystals = _gaussian_blur(canvas.reshape(n, 1, h, w), 0.5, 4.0, "nearest")

    thickness = _apply_operator(torch.from_numpy(np.ascontiguousarray(low)), _frost_upsample_op(h, w))

    blue = (torch.from_numpy(base).view(n, 1, 1, 1) + 0.12 * thickness
            + torch.from_numpy(amp).view(n, 1, 1, 1) * crystals + 0.04 * torch.from_numpy(grain))
    blue = blue.clamp(0, 1)
    rgb = torch.cat([blue * torch.from_numpy(red).view(n, 1, 1, 1),
                     blue * torch.from_numpy(green).view(n, 1, 1, 1), blue], 1)
    return rgb if c == 3 else _gray(rgb)


def _corner_aligned_matrix(n_in: int, n_out: int) -> sparse.csr_matrix:
    """Linear interpolation from n_in to n_out samples, first and last aligned."""
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
    i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 1)
    frac = pos - i0
    return _taps_matrix(np.stack([i0, np.minimum(i0 + 1, n_in - 1)], 1), np.stack([1 - frac, frac], 1), n_in)


@functools.lru_cache(maxsize=16)
def _frost_upsample_op(h: int, w: int):
    return _operator(_separable(_corner_aligned_matrix(5, h), _corner_aligned_matrix(5, w)), (h, w))


def _frost(x: Tensor, severity: int, rngs: Rngs) -> Tensor:
    a, b = _FROST[severity - 1]
    return a * x + b * _frost_texture(rngs, x.shape[1], x.shape[2], x.shape[3])


_FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))  # (strength, wibble decay)


def _plasma(u: np.ndarray, size: int, decay: float) -> np.ndarray:
    """Diamond-square plasma fractal (N, size, size), normalised to [0, 1] per image, on a torus (neighbours
    wrap), from pre-drawn uniforms u (N, 3 * sum of squares of the grid sizes) in [-1, 1]; the displacement at
    a level is wibble^2 * u, wibble starting at 100 and divided by `decay` per level (the reference's)."""
    n = u.shape[0]
    m = np.zeros((n, size, size))
    step, wibble, used = size, 100.0, 0

    def noise(shape: tuple[int, ...]) -> np.ndarray:
        nonlocal used
        count = int(np.prod(shape))
        out = u[:, used:used + count].reshape((n,) + shape) * (wibble * wibble)
        used += count
        return out

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        m[:, half::step, half::step] = square / 4 + noise(square.shape[1:])
        centres, corners = m[:, half::step, half::step], m[:, 0::step, 0::step]
        edge = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=2))
        m[:, 0::step, half::step] = edge / 4 + noise(edge.shape[1:])
        edge = (centres + np.roll(centres, 1, axis=2)) + (corners + np.roll(corners, -1, axis=1))
        m[:, half::step, 0::step] = edge / 4 + noise(edge.shape[1:])
        step //= 2
        wibble /= decay
    m = m - m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


def _plasma_draws(size: int) -> int:
    count, grid = 0, 1
    while grid <= size // 2:
        count += 3 * grid * grid
        grid *= 2
    return count


def _fog(x: Tensor, severity: int, rngs: Rngs) -> Tensor:
    strength, decay = _FOG[severity - 1]
    n, c, h, w = x.shape
    size = 1 << (max(h, w) - 1).bit_length()
    u = _draw(rngs, lambda r: r.uniform(-1, 1, _plasma_draws(size))).reshape(n, -1)
    plasma = torch.from_numpy(np.ascontiguousarray(_plasma(u, size, decay)[:, :h, :w])).unsqueeze(1)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * plasma) * peak / (peak + strength)


def _brightness(x: Tensor, severity: int, rngs: Rngs) -> Tensor:
    # HSV value + c, clipped: with hue and saturation fixed, RGB scales by V' / V (a black pixel becomes grey V')
    c = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    value = x.amax(dim=1, keepdim=True)
    new = (value + c).clamp(max=1.0)
    scaled = x * (new / torch.where(value > 0, value, torch.ones_like(value)))
    return torch.where(value > 0, scaled, new.expand_as(x))


def _contrast(x: Tensor, severity: int, rngs: Rngs) -> Tensor:
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    # each image's channel means, one image at a time (a batched reduction's order may depend on the batch)
    arr = x.numpy()
    means = torch.from_numpy(np.stack([a.reshape(a.shape[0], -1).mean(axis=1) for a in arr]) if len(arr)
                             else np.zeros((0, x.shape[1]))).view(len(x), x.shape[1], 1, 1)
    return (x - means) * c + means


_IMSIZE = 32  # the reference's constants are in CIFAR pixels; they stay so for other sizes
# (displacement scale alpha, displacement smoothing sigma, affine jitter), in pixels
_ELASTIC = ((_IMSIZE * 0, _IMSIZE * 0, _IMSIZE * 0.08),
            (_IMSIZE * 0.05, _IMSIZE * 0.2, _IMSIZE * 0.07),
            (_IMSIZE * 0.08, _IMSIZE * 0.06, _IMSIZE * 0.06),
            (_IMSIZE * 0.1, _IMSIZE * 0.04, _IMSIZE * 0.05),
            (_IMSIZE * 0.1, _IMSIZE * 0.03, _IMSIZE * 0.03))


def _elastic_transform(x: Tensor, severity: int, rngs: Rngs) -> Tensor:
    """A random affine map (three points around the centre each moved by up to `jitter` px; OpenCV's warpAffine
    semantics, mirrored borders) followed by a displacement field of uniform noise smoothed by a Gaussian
    (truncate 3) and scaled by alpha, sampled bilinearly with symmetric borders (scipy's map_coordinates)."""
    alpha, sigma, jitter = _ELASTIC[severity - 1]
    n, c, h, w = x.shape
    draws = _draw(rngs, lambda r: np.concatenate([r.uniform(-1, 1, 6), r.uniform(-1, 1, 2 * h * w)]))
    cx, cy, s = float(w // 2), float(h // 2), float(min(h, w) // 3)
    src = np.array([[cx + s, cy + s], [cx + s, cy - s], [cx - s, cy - s]])
    # per image: the affine M with M [p; 1] = p + jitter * u, inverted (warpAffine samples src at M^-1 dst)
    inverse = np.zeros((n, 2, 3))
    system = np.concatenate([src, np.ones((3, 1))], 1)
    for i in range(n):
        moved = src + jitter * draws[i, :6].reshape(3, 2)
        m = np.linalg.solve(system, moved).T  # (2, 3)
        a, b, cc, d = m[0, 0], m[0, 1], m[1, 0], m[1, 1]
        det = a * d - b * cc
        ia, ib, ic, id_ = d / det, -b / det, -cc / det, a / det
        inverse[i] = [[ia, ib, -(ia * m[0, 2] + ib * m[1, 2])], [ic, id_, -(ic * m[0, 2] + id_ * m[1, 2])]]
    inv = torch.from_numpy(inverse)
    yy = torch.arange(h, dtype=torch.float64).view(1, h, 1).expand(1, h, w)
    xx = torch.arange(w, dtype=torch.float64).view(1, 1, w).expand(1, h, w)
    sx = inv[:, 0, 0].view(n, 1, 1) * xx + inv[:, 0, 1].view(n, 1, 1) * yy + inv[:, 0, 2].view(n, 1, 1)
    sy = inv[:, 1, 0].view(n, 1, 1) * xx + inv[:, 1, 1].view(n, 1, 1) * yy + inv[:, 1, 2].view(n, 1, 1)
    x = _bilinear(x, sy, sx, "reflect101")
    if alpha == 0:
        return x
    fields = torch.from_numpy(np.ascontiguousarray(draws[:, 6:])).reshape(n, 2, h, w)
    fields = _gaussian_blur(fields, sigma, 3.0, "symmetric") * alpha
    dx, dy = fields[:, 0], fields[:, 1]
    return _bilinear(x, yy + dy, xx + dx, "symmetric")


_PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)


def _pixelate(x: Tensor, severity: int, rngs: Rngs) -> Tensor:
    # Pillow's BOX resize to int(size * c) and back: box down-sampling, nearest up-sampling
    c = _PIXELATE[severity - 1]
    return _apply_operator(x, _pixelate_op(x.shape[2], x.shape[3], c))


@functools.lru_cache(maxsize=32)
def _pixelate_op(h: int, w: int, c: float):
    sh, sw = int(h * c), int(w * c)
    rows = _pil_box_matrix(sh, h) @ _pil_box_matrix(h, sh)
    cols = _pil_box_matrix(sw, w) @ _pil_box_matrix(w, sw)
    return _operator(_separable(rows, cols), (h, w))


_JPEG = (80, 65, 58, 50, 40)  # Pillow JPEG quality


def _jpeg_compression(x: Tensor, severity: int, rngs: Rngs) -> Tensor:
    quality = _JPEG[severity - 1]
    n, c, h, w = x.shape
    u8 = torch.round(x.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.empty((n, h, w, c), dtype=np.uint8)
    for i in range(n):
        img = Image.fromarray(np.ascontiguousarray(u8[i]) if c == 3 else np.ascontiguousarray(u8[i, :, :, 0]))
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        decoded = np.asarray(Image.open(buffer).convert("RGB" if c == 3 else "L"))
        out[i] = decoded.reshape(h, w, c)
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(torch.float64) / 255.0


# --------------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Corruption:
    """One CIFAR-10-C corruption: its family, a one-line summary, the function (x float64 (N, C, H, W), severity,
    one generator per image) -> float64 images before clipping and quantising, and, where it is not the
    benchmark's algorithm, how it differs."""

    name: str
    family: str
    summary: str
    fn: Callable[[Tensor, int, Rngs], Tensor]
    approximation: str = ""


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("gaussian_noise", "noise", "additive Gaussian noise, std 0.04-0.10", _gaussian_noise),
    Corruption("shot_noise", "noise", "Poisson photon noise, 500-50 photons at full intensity", _shot_noise),
    Corruption("impulse_noise", "noise", "salt-and-pepper noise on 1-7% of the values", _impulse_noise),
    Corruption("defocus_blur", "blur", "blur by an anti-aliased disk of radius 0.3-1.5 px", _defocus_blur),
    Corruption("glass_blur", "blur", "blur, local pixel shuffling (1-2 passes), blur", _glass_blur),
    Corruption("motion_blur", "blur", "one-sided Gaussian motion blur at a random angle, sigma 1-2.5 px",
               _motion_blur_corruption,
               "ImageMagick's motion-blur kernel re-implemented (the reference called it through Wand)"),
    Corruption("zoom_blur", "blur", "the mean of the image zoomed in by factors 1 to 1.06-1.25", _zoom_blur),
    Corruption("snow", "weather", "motion-blurred snow flakes over a whitened image", _snow,
               "the snow layer's motion blur is our ImageMagick-kernel re-implementation (reference: Wand)"),
    Corruption("frost", "weather", "a frost texture blended over the image", _frost,
               "procedural frost texture in place of the reference's frost photographs"),
    Corruption("fog", "weather", "a diamond-square plasma fractal added as haze", _fog),
    Corruption("brightness", "weather", "HSV value raised by 0.05-0.3", _brightness),
    Corruption("contrast", "digital", "deviations from each channel's mean scaled by 0.75-0.15", _contrast),
    Corruption("elastic_transform", "digital", "a random affine warp plus a smoothed random displacement field",
               _elastic_transform),
    Corruption("pixelate", "digital", "box down-sampling to 95-65% of the size and nearest up-sampling", _pixelate),
    Corruption("jpeg_compression", "digital", "JPEG at quality 80-40", _jpeg_compression),
)}

CORRUPTION_NAMES: tuple[str, ...] = tuple(CORRUPTIONS)
FAMILIES: dict[str, tuple[str, ...]] = {
    family: tuple(n for n, c in CORRUPTIONS.items() if c.family == family)
    for family in ("noise", "blur", "weather", "digital")}


# ------------------------------------------------------------------------------------------ entry points

def _check_name(name: str) -> Corruption:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; the CIFAR-10-C corruptions are: {', '.join(CORRUPTION_NAMES)}")
    return CORRUPTIONS[name]


def _check_severity(severity: int) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or int(severity) not in SEVERITIES:
        raise ValueError(f"severity must be an integer from 1 to 5 (CIFAR-10-C's levels); got {severity!r}")
    return int(severity)


def _check_images(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"corrupt expects images (N, C, H, W) with C = 1 or 3; got {shape}")
    if x.shape[2] < MIN_SIZE or x.shape[3] < MIN_SIZE:
        raise ValueError(f"corrupt needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels; got "
                         f"{x.shape[2]}x{x.shape[3]}")
    if not x.is_floating_point():
        raise ValueError(f"corrupt expects float images in [0, 1]; got dtype {x.dtype} (divide uint8 by 255)")
    if x.numel() and not (bool(torch.isfinite(x).all()) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0):
        raise ValueError("corrupt expects float images in [0, 1]; got values outside it (or NaN/inf)")


def _check_seeds(seeds: Tensor, n: int) -> list[int]:
    if not isinstance(seeds, Tensor) or seeds.dim() != 1 or len(seeds) != n or seeds.is_floating_point() \
            or seeds.dtype == torch.bool or seeds.is_complex():
        desc = f"{seeds.dtype} {tuple(seeds.shape)}" if isinstance(seeds, Tensor) else type(seeds).__name__
        raise ValueError(f"seeds must be an integer tensor of shape ({n},), one seed per image; got {desc}")
    return [int(s) & _MASK64 for s in seeds.tolist()]


def corrupt(name: str, x: Tensor, severity: int, seeds: Tensor) -> Tensor:
    """Corrupt each image of x (N, C, H, W), float in [0, 1], with CIFAR-10-C's corruption `name` at `severity`
    (1-5). `seeds` (N,) int64: image i's randomness comes only from seeds[i] (and the corruption's name), so an
    image gets the same result in any batch. Returns float32 (N, C, H, W) in [0, 1], quantised to 8 bits
    (multiples of 1/255, as CIFAR-10-C's uint8 images), on x's device. See the module docstring for what is
    reproduced exactly and what (frost) is approximated."""
    entry = _check_name(name)
    severity = _check_severity(severity)
    _check_images(x)
    seed_list = _check_seeds(seeds, len(x))
    if len(x) == 0:
        return torch.empty(x.shape, dtype=torch.float32, device=x.device)
    stream = CORRUPTION_NAMES.index(name)
    rngs = [np.random.default_rng([s, stream]) for s in seed_list]
    with torch.no_grad():
        x64 = x.detach().to("cpu", torch.float64).contiguous()
        y = entry.fn(x64, severity, rngs)
        levels = torch.round(y.clamp(0.0, 1.0) * 255.0).to(torch.float32)
    return (levels / 255.0).to(x.device)


def corruption_grid(x: Tensor, seeds: Tensor | int) -> Tensor:
    """Every corruption at every severity of one image x (C, H, W) or (1, C, H, W), with one seed (an int or a
    one-element tensor): (15, 5, C, H, W), rows in `CORRUPTION_NAMES` order, columns severities 1-5."""
    if isinstance(x, Tensor) and x.dim() == 3:
        x = x.unsqueeze(0)
    if not isinstance(x, Tensor) or x.dim() != 4 or len(x) != 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"corruption_grid takes one image (C, H, W) or (1, C, H, W); got {shape}")
    seed = torch.as_tensor(seeds, dtype=torch.int64).reshape(-1)
    if seed.numel() != 1:
        raise ValueError(f"corruption_grid takes one seed; got {seed.numel()}")
    rows = [torch.cat([corrupt(name, x, s, seed) for s in SEVERITIES]) for name in CORRUPTION_NAMES]
    return torch.stack(rows)


__all__ = ["CORRUPTIONS", "CORRUPTION_NAMES", "FAMILIES", "SEVERITIES", "Corruption", "corrupt", "corruption_grid"]
