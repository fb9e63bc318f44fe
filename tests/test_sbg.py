"""Score-based targets: sign, scaling and chain rule against a closed form; C + 1 labels per draw; shared noise;
score-model training that resumes exactly; the diffusers UNet path; config errors."""

import json
import math

import pytest
import torch

from pagrob.config import ConfigError, load_config
from pagrob.data import Dataset, load_dataset
from pagrob.diffusion import ScoreModel, ScoreTrainConfig, UNetScore, load_score_model, train_score_model
from pagrob.targets import build_source
from pagrob.targets.score_based import ScoreBased
from fakes import interrupt_after

MEANS = torch.tensor([[0.2, 0.7, 0.4], [0.8, 0.3, 0.5], [0.5, 0.5, 0.9]])  # 3 classes in 3-D, data units
SPREAD = 0.15


class OracleVP(ScoreModel):
    """Exact eps of a Gaussian-per-class dataset under a VP schedule, with an affine model space like images'."""

    kind = "oracle"

    def __init__(self):
        super().__init__(num_classes=3, input_shape=(3,), offset=0.5, scale=0.5)
        self.register_buffer("alphas_cumprod", torch.linspace(0.99, 0.2, 50), persistent=False)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def num_timesteps(self) -> int:
        return 50

    def alpha_sigma(self, t):
        a = self.alphas_cumprod[t]
        return a.sqrt(), (1 - a).sqrt()

    def predict_eps(self, u_t, t, labels):
        self.calls.append((u_t.clone(), labels.clone()))
        alpha, sigma = (s[:, None] for s in self.alpha_sigma(t))
        centres = alpha[:, None] * self.to_model_space(MEANS)[None]  # (N, C, D)
        var = alpha ** 2 * (SPREAD / self.scale) ** 2 + sigma ** 2  # (N, 1)
        log_w = -((u_t[:, None] - centres) ** 2).sum(-1) / (2 * var)  # (N, C)
        w = torch.where(labels[:, None] == self.null_label, torch.softmax(log_w, 1),
                        torch.nn.functional.one_hot(labels.clamp_max(2), 3).float())
        score = -((u_t[:, None] - centres) * w[..., None]).sum(1) / var
        return -sigma * score


def posterior_gradients(x, noise_level):
    """grad_x log p(c | x) for x ~ N(mean_c, (SPREAD^2 + noise_level^2) I), by autograd."""
    x = x.clone().requires_grad_(True)
    var = SPREAD ** 2 + noise_level ** 2
    log_joint = -((x[:, None] - MEANS[None]) ** 2).sum(-1) / (2 * var)
    log_post = torch.log_softmax(log_joint, 1)
    return torch.stack([torch.autograd.grad(log_post[:, c].sum(), x, retain_graph=True)[0] for c in range(3)], 1)


@pytest.mark.parametrize("timestep", [5, 30])
def test_sbg_equals_grad_log_posterior_of_the_noisy_data(timestep):
    model = OracleVP()
    source = ScoreBased(model, timestep, draws=0)
    x = torch.rand(16, 3)
    classes = torch.tensor([[0, 1, 2], [2, 0, 1]]).repeat(8, 1)
    got = source(x, classes)
    want = posterior_gradients(x, source.noise_level).gather(1, classes[..., None].expand(-1, -1, 3))
    a = model.alphas_cumprod[timestep]
    assert source.noise_level == pytest.approx(0.5 * math.sqrt((1 - a) / a), rel=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_one_call_of_k_plus_one_labels_per_draw_with_noise_shared_across_them():
    model = OracleVP()
    source = ScoreBased(model, 20, draws=3)
    x = torch.rand(5, 3)
    classes = torch.tensor([[2, 0]] * 5)
    source(x, classes)
    assert len(model.calls) == 1
    inputs, labels = model.calls[0]
    assert len(inputs) == 5 * 3 * (2 + 1)  # B * draws * (k + 1), not B * draws * 2k
    inputs, labels = inputs.view(5, 3, 3, 3), labels.view(5, 3, 3)
    assert (labels == torch.tensor([2, 0, model.null_label])).all()
    assert (inputs == inputs[:, :, :1]).all()  # one noisy point per (image, draw), shared by its k + 1 labels
    assert not torch.equal(inputs[:, 0], inputs[:, 1])  # different draws differ


def test_noise_is_seeded_by_image_content_not_by_batch():
    source = ScoreBased(OracleVP(), 20, draws=2, seed=3)
    x = torch.rand(6, 3)
    classes = torch.arange(3).expand(6, -1)
    perm = torch.randperm(6)
    torch.testing.assert_close(source(x, classes)[perm], source(x[perm], classes))
    assert not torch.allclose(source(x, classes), ScoreBased(OracleVP(), 20, draws=2, seed=4)(x, classes))


def test_averaging_draws_approaches_the_smoothed_target():
    """With many draws the average is E_eps g(x + s eps); check against a brute-force Monte Carlo of the oracle."""
    model = OracleVP()
    x = torch.rand(4, 3)
    classes = torch.arange(3).expand(4, -1)
    many = ScoreBased(model, 25, draws=400)(x, classes)
    noise = ScoreBased(model, 25, draws=400).noise(x)  # the same draws
    s = model.noise_level(25)
    mc = posterior_gradients((x[:, None] + s * noise).view(-1, 3), s).view(4, 400, 3, 3).mean(1)
    torch.testing.assert_close(many, mc, rtol=1e-3, atol=1e-4)


def test_toy_score_model_trains_resumes_exactly_and_loads(tmp_path, monkeypatch):
    import pagrob.diffusion.train as trainer

    data = load_dataset("toy2d")
    cfg = ScoreTrainConfig(steps=40, batch_size=64, width=32)
    train_score_model(data, tmp_path / "straight", cfg, progress=False)
    interrupt_after(monkeypatch, trainer, "diffusion_loss", 25)
    with pytest.raises(KeyboardInterrupt):
        train_score_model(data, tmp_path / "resumed", cfg, progress=False, save_every=10)
    monkeypatch.undo()
    train_score_model(data, tmp_path / "resumed", cfg, progress=False)  # continues from step 20
    a, b = load_score_model(tmp_path / "straight"), load_score_model(tmp_path / "resumed")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    with pytest.raises(ConfigError, match="other settings"):
        train_score_model(data, tmp_path / "resumed", ScoreTrainConfig(steps=50, batch_size=32, width=32),
                          progress=False)
    assert a.noise_level(49) == pytest.approx(5.0, rel=1e-5) and a.noise_level(199) == pytest.approx(20.0, rel=1e-5)


def _tiny_digits(n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.arange(n) % 4
    return Dataset("tiny", x, y, x[:8], y[:8], num_classes=4)


def test_unet_score_model_is_a_diffusers_folder_and_gives_targets(tmp_path):
    data = _tiny_digits()
    train_score_model(data, tmp_path / "unet", ScoreTrainConfig(steps=2, batch_size=8, width=16), progress=False)
    meta = json.loads((tmp_path / "unet" / "score_model.json").read_text())
    assert meta["kind"] == "unet-ddpm" and (tmp_path / "unet" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    model = load_score_model(tmp_path / "unet")
    assert isinstance(model, UNetScore) and model.unet.config.num_class_embeds == 5 and model.null_label == 4
    classes = torch.tensor([[0, 3], [1, 2], [2, 2]])
    g = ScoreBased(model, 200, draws=2)(data.x_train[:3], classes)
    assert g.shape == (3, 2, 1, 8, 8) and torch.isfinite(g).all()
    (tmp_path / "unet" / "score_model.json").unlink()  # a foreign diffusers folder: defaults apply
    foreign = load_score_model(tmp_path / "unet")
    assert foreign.num_classes == 4 and foreign.input_shape == (1, 8, 8)
    torch.testing.assert_close(ScoreBased(foreign, 200, draws=2)(data.x_train[:3], classes), g)


def test_sbg_config_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="pag.score_model=DIR"):
        load_config(None, ["pag.source=sbg"])
    cfg = load_config(None, ["pag.source=sbg", f"pag.score_model={tmp_path}"])
    with pytest.raises(ConfigError, match="holds no score model"):
        build_source("sbg", cfg.pag, _tiny_digits())
    train_score_model(_tiny_digits(), tmp_path / "m", ScoreTrainConfig(steps=1, batch_size=4, width=16),
                      progress=False)
    cfg = load_config(None, ["pag.source=sbg", f"pag.score_model={tmp_path / 'm'}"])
    with pytest.raises(ConfigError, match="train-score-model --dataset digits"):
        build_source("sbg", cfg.pag, load_dataset("digits"))
    cfg = load_config(None, ["pag.source=sbg", f"pag.score_model={tmp_path / 'm'}", "pag.sbg_t=1000"])
    with pytest.raises(ConfigError, match="outside"):
        build_source("sbg", cfg.pag, _tiny_digits())


def test_stable_target_is_the_posterior_mean_over_the_references():
    from pagrob.diffusion.train import stable_target

    g = torch.Generator().manual_seed(0)
    u, eps = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    alpha, sigma = torch.full((6, 1), 0.8), torch.full((6, 1), 0.6)
    u_t = alpha * u + sigma * eps
    labels = torch.arange(6)  # each sample's label matches only its own source: the target is its own noise
    torch.testing.assert_close(stable_target(u_t, alpha, sigma, labels, 99, u, torch.arange(6)), eps)
    null = torch.full((6,), 99)  # null: every reference counts, weighted by its likelihood of producing u_t
    w = torch.softmax(-((u_t[:, None] - alpha[:, None] * u[None]) ** 2).sum(-1) / (2 * sigma ** 2), dim=1)
    want = (u_t - alpha * (w @ u)) / sigma
    torch.testing.assert_close(stable_target(u_t, alpha, sigma, null, 99, u, torch.arange(6)), want)
