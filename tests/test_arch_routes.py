"""Library networks as architectures: `model.arch=torchvision:NAME` and `timm:NAME` build, train with PAG, reload,
import weights and refuse bad names in one line, all offline (no weights are ever downloaded)."""

import importlib.util
import json
import socket
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pagrob.cli import main
from pagrob.config import load_config
from pagrob.errors import ConfigError, RunError
from pagrob.models import ARCH_ROUTES, build_model
from pagrob.models.library import LibraryVersionWarning
from pagrob.runs import load_run
from pagrob.train import train

import torchvision

timm = importlib.import_module("timm") if importlib.util.find_spec("timm") else None
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install timm)")

# A timm ConvNeXt shrunk through model.args: small enough to train with PAG in seconds on 8x8 images.
TINY_CONVNEXT = "{dims: [8, 16, 32, 64], depths: [1, 1, 1, 1], patch_size: 1}"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Any attempt to reach the network (a weights download) fails the test."""
    def refuse(*args, **kwargs):
        raise OSError("a test of library architectures tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _npz(path, channels: int, size: int, n_train: int = 100, n_test: int = 40):
    """Ten classes of noisy fixed patterns, uint8 NHWC."""
    rng = np.random.default_rng(0)
    patterns = rng.uniform(0.2, 0.8, (10, size, size, channels))

    def images(n):
        y = np.arange(n) % 10
        return (np.clip(patterns[y] + rng.normal(0, 0.1, (n, size, size, channels)), 0, 1) * 255).astype(np.uint8), y

    (x_tr, y_tr), (x_te, y_te) = images(n_train), images(n_test)
    np.savez(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return torch.from_numpy(x_te).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(y_te).long()


@pytest.mark.parametrize("arch,shape,args", [
    ("torchvision:resnet18", (3, 32, 32), {}),
    pytest.param("timm:resnet18", (3, 32, 32), {}, marks=needs_timm),
    pytest.param("timm:resnet18", (1, 16, 16), {}, marks=needs_timm),  # in_chans follows the data
    pytest.param("timm:vit_tiny_patch16_224", (3, 32, 32), {"img_size": 32, "patch_size": 4}, marks=needs_timm),
])
def test_library_networks_answer_pixels_with_logits(arch, shape, args):
    model = build_model(arch, shape, 10, args=args).eval()
    with torch.no_grad():
        logits = model(torch.rand(3, *shape))
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    if args:  # model.args reached the library: 4x4 patches, 8x8 of them on a 32x32 image
        assert model.net.patch_embed.proj.kernel_size == (4, 4) and model.net.pos_embed.shape[1] == 64 + 1


def test_model_args_reach_torchvision():
    plain = build_model("torchvision:resnet18", (3, 32, 32), 10).net
    zeroed = build_model("torchvision:resnet18", (3, 32, 32), 10, args={"zero_init_residual": True}).net
    assert plain.layer1[0].bn2.weight.abs().sum() > 0 and zeroed.layer1[0].bn2.weight.abs().sum() == 0


@pytest.mark.parametrize("arch,close", [
    ("torchvision:resnt18", "resnet18"),
    pytest.param("timm:resnt18", "resnet18", marks=needs_timm),
    pytest.param("timm:vit_tiny_patch16", "vit_tiny_patch16_224", marks=needs_timm),
])
def test_an_unknown_name_is_one_error_naming_close_matches_when_the_config_is_read(arch, close):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"model.arch={arch}"])
    message = str(err.value)
    assert "did you mean" in message and close in message and "\n" not in message
    with pytest.raises(ConfigError, match="did you mean"):
        build_model(arch, (3, 32, 32), 10)


@pytest.mark.parametrize("arch,shape,args,message", [
    ("torchvision:fasterrcnn_resnet50_fpn", (3, 32, 32), {}, "not an image classifier"),
    ("torchvision:resnet18", (1, 32, 32), {}, "takes 3-channel images"),
    pytest.param("timm:resnet18", (2,), {}, "takes images", marks=needs_timm),
    pytest.param("timm:resnet18", (3, 32, 32), {"num_classes": 5}, "must not set num_classes", marks=needs_timm),
    pytest.param("timm:resnet18", (3, 32, 32), {"pretrained": True}, "never downloads", marks=needs_timm),
    ("torchvision:resnet18", (3, 32, 32), {"no_such_arg": 1}, "unexpected keyword argument 'no_such_arg'"),
])
def test_what_a_library_cannot_build_is_one_config_error(arch, shape, args, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_model(arch, shape, 10, args=args)
    assert "\n" not in str(err.value)


def test_missing_timm_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    for attempt in (lambda: build_model("timm:resnet18", (3, 32, 32), 10),
                    lambda: load_config(None, ["model.arch=timm:resnet18"])):
        with pytest.raises(ConfigError, match=r"needs timm, which is not installed: pip install timm$"):
            attempt()
    with pytest.raises(RunError, match=r"pip install timm==1\.2\.3$"):
        ARCH_ROUTES["timm"].check_unchanged("resnet18", {"library": "timm", "version": "1.2.3"}, "runs/r")


@needs_timm
def test_a_timm_network_trains_with_pag_and_its_run_folder_reloads(tmp_path):
    x_test, _ = _npz(tmp_path / "gray.npz", channels=1, size=8)
    cfg = load_config(None, [f"data.name=npz:{tmp_path / 'gray.npz'}", "model.arch=timm:convnext_atto",
                             f"model.args={TINY_CONVNEXT}", "pag.source=cm", "pag.k=1", "optim.epochs=1",
                             "optim.batch_size=50", "name=t"])
    trained = train(cfg, tmp_path / "run", progress=False)
    spec = json.loads((tmp_path / "run" / "model.json").read_text())
    assert spec["arch"] == "timm:convnext_atto" and spec["input_shape"] == [1, 8, 8]
    assert spec["source"] == {"library": "timm", "version": timm.__version__, "name": "convnext_atto"}
    assert spec["args"] == {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "patch_size": 1}
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics and np.isfinite(metrics[-1]["train_pag"])

    run = load_run(tmp_path / "run")
    with torch.no_grad():
        expected = trained.model.eval()(x_test)
        assert torch.equal(run.model(x_test), expected)

    # Another timm version: a warning naming both, and the same weights loaded (they still fit).
    spec["source"]["version"] = "0.9.0"
    (tmp_path / "run" / "model.json").write_text(json.dumps(spec))
    with pytest.warns(LibraryVersionWarning, match=f"built by timm 0.9.0; timm {timm.__version__} is installed"):
        again = load_run(tmp_path / "run")
    with torch.no_grad():
        assert torch.equal(again.model(x_test), expected)


def test_torchvision_weights_are_imported_with_their_own_predictions(tmp_path, capsys):
    x_test, y_test = _npz(tmp_path / "rgb.npz", channels=3, size=16)
    reference = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():  # weights that are not the fresh initialisation, batch norm statistics included
        for p in reference.parameters():
            p.add_(0.01 * torch.randn_like(p))
        reference.train()(torch.rand(64, 3, 16, 16))
    reference.eval()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "resnet18.safetensors"))

    code = main(["--quiet", "import-checkpoint", str(tmp_path / "resnet18.safetensors"), "--model",
                 "torchvision:resnet18", "--dataset", f"npz:{tmp_path / 'rgb.npz'}", "--out", str(tmp_path / "imp")])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    with torch.no_grad():
        own = reference(x_test)
    results = json.loads((tmp_path / "imp" / "results.json").read_text())
    assert results["clean_accuracy"] == pytest.approx((own.argmax(1) == y_test).float().mean().item())
    assert results["imported_from"]["model"] == "torchvision:resnet18"
    run = load_run(tmp_path / "imp")
    with torch.no_grad():
        assert torch.allclose(run.model(x_test), own, atol=1e-5)
    assert json.loads((tmp_path / "imp" / "model.json").read_text())["source"]["library"] == "torchvision"


@needs_timm
def test_a_library_vision_transformer_takes_the_pag_term():
    """Fused attention has no double backward; the PAG step computes attention by its formula instead."""
    from pagrob.losses import pag_loss

    model = build_model("timm:vit_tiny_patch16_224", (1, 8, 8), 10,
                        args={"img_size": 8, "patch_size": 4, "depth": 1, "embed_dim": 16, "num_heads": 2})
    x = torch.rand(4, 1, 8, 8)
    classes = torch.randint(10, (4, 2))
    loss = pag_loss(model, x, torch.randn(4, 2, 1, 8, 8), classes)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
