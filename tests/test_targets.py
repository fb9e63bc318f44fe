import math

import pytest
import torch

from pagrob.config import PagConfig
from pagrob.data import load_dataset
from pagrob.targets import build_source
from pagrob.targets.exact import class_posterior_gradients
from pagrob.data import toy2d


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_one_image_and_class_mean_point_from_x_to_a_class_reference(digits):
    classes = torch.tensor([[0, 3], [5, 9]])
    x = digits.x_test[:2]
    for name in ("oi", "cm"):
        src = build_source(name, PagConfig(), digits)
        g = src(x, classes)
        assert g.shape == (2, 2, 1, 8, 8)
        assert torch.allclose(g[0, 1] + x[0], src.refs[3])
    cm = build_source("cm", PagConfig(), digits)
    mean_norm = digits.x_train.flatten(1).norm(dim=1).mean()
    assert torch.allclose(cm.refs.flatten(1).norm(dim=1), mean_norm.expand(10), rtol=1e-5)
    raw_mean = digits.x_train[digits.y_train == 3].mean(0)
    assert torch.nn.functional.cosine_similarity(cm.refs[3].flatten(), raw_mean.flatten(), dim=0) > 0.9999


def test_nearest_neighbour_is_the_closest_sample_of_the_class_and_never_the_image_itself(digits):
    src = build_source("nn", PagConfig(nn_sample=30), digits)
    sample = src.sample.view(10, 30, 1, 8, 8)
    image_index = int(src.sample_index[4, 0])  # x is itself in the sample of its class
    x = digits.x_train[image_index:image_index + 1]
    classes = torch.tensor([[4, 7]])
    g = src(x, classes, torch.tensor([image_index]))
    ref4 = g[0, 0] + x[0]
    assert not torch.equal(ref4, x[0])
    dists = (sample[4, 1:] - x).flatten(1).norm(dim=1)
    assert (ref4 - x[0]).norm().item() == pytest.approx(dists.min().item(), rel=1e-5)
    assert (g[0, 1]).norm().item() == pytest.approx((sample[7] - x).flatten(1).norm(dim=1).min().item(), rel=1e-5)


def test_exact_toy_gradients_match_autograd_of_the_mixture_log_posterior():
    sigma = 4.0
    x = torch.tensor([[-40.0, -80.0], [3.0, 1.0], [25.0, 60.0]], dtype=torch.float64, requires_grad=True)
    centers = toy2d.mode_centers().double()
    u = toy2d.DIRECTION.double()
    cov = toy2d.SPREAD ** 2 * torch.outer(u, u) + sigma ** 2 * torch.eye(2, dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(centers.reshape(-1, 2), covariance_matrix=cov)
    log_comp = dist.log_prob(x[:, None, :]).view(3, 2, 3)  # (B, C, M)
    log_class = log_comp.logsumexp(2) - math.log(3)
    log_post = log_class - log_class.logsumexp(1, keepdim=True)
    want = torch.stack([torch.autograd.grad(log_post[:, t].sum(), x, retain_graph=True)[0] for t in (0, 1)], 1)
    got = class_posterior_gradients(x.detach(), sigma)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)


def test_exact_toy_gradients_keep_their_direction_where_the_posterior_saturates():
    """With two classes grad log p(0|x) = -p(1|x) grad l and grad log p(1|x) = p(0|x) grad l (l the log-odds),
    so the two always point in opposite directions. At sigma = 5 p(y|x) rounds to 1 near every mode's centre,
    where a subtraction of two nearly equal gradients gives noise of either sign; this catches it."""
    x = toy2d.load().x_train
    g = class_posterior_gradients(x, 5.0)
    assert (g[:, 0].norm(dim=1) < 1e-12).float().mean() > 0.3, "the test must cover saturated points"
    cos = torch.nn.functional.cosine_similarity(g[:, 0] / g[:, 0].norm(dim=1, keepdim=True),
                                                g[:, 1] / g[:, 1].norm(dim=1, keepdim=True), dim=1)
    torch.testing.assert_close(cos, torch.full_like(cos, -1.0), rtol=0, atol=1e-9)


def test_exact_source_refuses_other_datasets(digits):
    with pytest.raises(ValueError, match="only for toy2d"):
        build_source("exact", PagConfig(), digits)
