"""The smoothed-training-set score source: its two limits, a brute-force reference, toy2d's closed form, the store."""

import pytest
import torch

from pagrob.cli import main
from pagrob.config import PagConfig
from pagrob.data import load_dataset
from pagrob.targets import build_source
from pagrob.targets.exact import class_posterior_gradients
from pagrob.targets.smoothed import SmoothedTrainingSet
from pagrob.targets.store import open_store


def small_set(n_per_class: int = 6, classes: int = 4, dim: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.randn(len(y), dim, generator=g, dtype=torch.float64) + y[:, None].double()
    order = torch.randperm(len(y), generator=g)  # classes interleaved, so the source's sort by class is exercised
    return x[order], y[order]


def brute_force(x_train, y_train, classes, sigma, q, leave_out=None):
    """(B, C, D) straight from the definition, one image at a time, float64."""
    out = []
    for b, point in enumerate(q):
        keep = torch.ones(len(x_train), dtype=torch.bool)
        if leave_out is not None:
            keep[leave_out[b]] = False
        xs, ys = x_train[keep], y_train[keep]
        w = torch.softmax(-((xs - point) ** 2).sum(1) / (2 * sigma ** 2), 0)
        m = (w[:, None] * xs).sum(0)
        m_t = torch.stack([(w[ys == t, None] * xs[ys == t]).sum(0) / w[ys == t].sum() for t in range(classes)])
        out.append((m_t - m) / sigma ** 2)
    return torch.stack(out)


def test_matches_the_definition_with_and_without_leaving_out():
    x, y = small_set()
    src = SmoothedTrainingSet(x, y, 4, sigma=1.3, chunk=5, dtype=torch.float64)  # chunks smaller than the batch
    q = torch.cat([x[:7], x[:3] + 0.2])
    index = torch.arange(7)
    g = torch.cat([src.all_classes(q[:7], index), src.all_classes(q[7:])])
    want = torch.cat([brute_force(x, y, 4, 1.3, q[:7], index), brute_force(x, y, 4, 1.3, q[7:])])
    assert torch.allclose(g, want, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(src.all_classes(q[:7]), want[:7], rtol=1e-3)  # leaving out matters


def test_small_sigma_points_from_the_nearest_image_to_the_nearest_class_image():
    x, y = small_set()
    sigma = 1e-3
    src = SmoothedTrainingSet(x, y, 4, sigma, dtype=torch.float64)
    for i in range(len(x)):
        dist = ((x - x[i]) ** 2).sum(1)
        dist[i] = float("inf")  # a training image is left out of its own targets
        nearest = x[dist.argmin()]
        nearest_t = torch.stack([x[torch.where(y == t, dist, torch.inf).argmin()] for t in range(4)])
        g = src.all_classes(x[i:i + 1], torch.tensor([i]))[0]
        assert torch.allclose(g * sigma ** 2, nearest_t - nearest, atol=1e-9)


def test_large_sigma_points_from_the_data_mean_to_the_class_mean():
    x, y = small_set()
    sigma = 1e4
    src = SmoothedTrainingSet(x, y, 4, sigma, dtype=torch.float64)
    q = torch.randn(3, x.shape[1], dtype=torch.float64)
    means = torch.stack([x[y == t].mean(0) for t in range(4)])
    assert torch.allclose(src.all_classes(q) * sigma ** 2, means - x.mean(0), atol=1e-6)
    keep = torch.arange(len(x)) != 2  # leave-one-out: the means without image 2
    means_2 = torch.stack([x[keep & (y == t)].mean(0) for t in range(4)])
    got = src.all_classes(x[2:3], torch.tensor([2]))[0] * sigma ** 2
    assert torch.allclose(got, means_2 - x[keep].mean(0), atol=1e-6)
    assert not torch.allclose(got, means - x.mean(0), atol=1e-3)


def test_float32_at_photo_scale_is_finite_and_close_to_float64_at_any_sigma():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(60, 3, 8, 8, generator=g)  # distances ~ 4-6, squared norms ~ 64
    y = torch.arange(60) % 3
    q, classes = x[:8], torch.arange(3).expand(8, -1)
    for sigma in (1e-3, 0.3, 1.0, 30.0):
        a = SmoothedTrainingSet(x, y, 3, sigma)(q, classes, torch.arange(8))
        b = SmoothedTrainingSet(x.double(), y, 3, sigma, dtype=torch.float64)(q.double(), classes, torch.arange(8))
        assert torch.isfinite(a).all()
        scale = b.abs().max()
        assert (a.double() - b).abs().max() <= 2e-3 * scale, sigma


def test_toy2d_agrees_with_the_exact_source_of_the_same_noisy_mixture():
    """The smoothed training set is the empirical version of `exact`'s mixture convolved with N(0, sigma^2 I).

    sigma = 10 spans the modes' spread (1) and their gaps (20 along the line): there 6,000 samples pin the
    smoothed densities down to ~1%, and the exact targets of a sigma 10 % off already differ by ~25 %, so the
    check tells the right noise level from a near miss.
    """
    data = load_dataset("toy2d")
    sigma = 10.0
    src = SmoothedTrainingSet(data.x_train.double(), data.y_train, 2, sigma, dtype=torch.float64)
    along = torch.linspace(-60, 60, 97, dtype=torch.float64)
    line = torch.stack([along, 2 * along], 1)
    across = torch.tensor([-2.0, 1.0], dtype=torch.float64) / 5 ** 0.5
    q = torch.cat([line, line + 3 * across, line - 6 * across])

    def errors(exact_sigma: float) -> tuple[float, float]:
        exact = class_posterior_gradients(q, exact_sigma)
        gap = (src.all_classes(q) - exact).norm(dim=-1)
        size = exact.norm(dim=-1)
        large = size > 0.1 * size.max()
        return (gap / size.max()).max().item(), (gap / size)[large].max().item()

    worst, worst_relative = errors(sigma)
    assert worst < 0.05 and worst_relative < 0.05, (worst, worst_relative)
    for wrong in (0.9 * sigma, 1.1 * sigma):
        assert min(errors(wrong)) > 0.15


def test_refuses_classes_too_small_to_leave_one_out():
    with pytest.raises(ValueError, match="at least 2 training images in each"):
        SmoothedTrainingSet(torch.rand(5, 2), torch.tensor([0, 0, 1, 1, 2]), 3, 1.0)


def test_store_build_from_the_cli_reads_back_what_the_source_gives(tmp_path):
    store = tmp_path / "store"
    assert main(["--quiet", "targets", "build", "--dataset", "digits", "--source", "smooth", "--set",
                 "pag.sigma=0.8", "--splits", "train", "--out", str(store), "--device", "cpu"]) == 0
    data = load_dataset("digits")
    src = build_source("smooth", PagConfig(sigma=0.8), data)
    index = torch.tensor([0, 5, 700, 1400])
    classes = torch.tensor([[0, 3], [9, 1], [2, 2], [4, 7]])
    want = src(data.x_train[index], classes, index)
    got = open_store(store, data)(data.x_train[index], classes, index)
    scale = want.flatten(2).abs().amax(2)[..., None, None, None]
    assert ((got - want).abs() <= 1e-3 * scale).all()  # fp16 rows scaled to their max
    assert float(want.abs().max()) > 0
