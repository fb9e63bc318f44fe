"""Importing the PAG authors' released checkpoints: state dicts of their layout, made here, load into our models
and compute what the authors' networks compute."""

import math

import pytest
import torch
import torch.nn.functional as F

from pagrob.checkpoint_import import import_checkpoint
from pagrob.cli import main
from pagrob.models.nets import resnet18, vit
from pagrob.runs import RunError, load_run


def _authors_layout(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict as their training script saves it: DataParallel's `module.` prefix on every key."""
    return {f"module.{k}": v.clone() for k, v in net.state_dict().items()}


def _reference_vit(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int = 12, patch: int = 4) -> torch.Tensor:
    """The authors' ViT forward written out from their description: patches via unfold/unfold/permute to
    (row, column, channel), class token, pre-norm blocks, attention scores divided by sqrt(width)."""
    w = {k.removeprefix("module."): v for k, v in sd.items()}
    lin = lambda t, name: F.linear(t, w[f"{name}.weight"], w[f"{name}.bias"])  # noqa: E731
    ln = lambda t, name: F.layer_norm(t, t.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"])  # noqa: E731
    b = x.shape[0]
    words = x.unfold(2, patch, patch).unfold(3, patch, patch).permute(0, 2, 3, 4, 5, 1).reshape(b, -1, 3 * patch ** 2)
    out = lin(words, "emb")
    out = torch.cat([w["cls_token"].repeat(b, 1, 1), out], 1) + w["pos_emb"]
    n, f = out.shape[1], out.shape[2]
    for i in range(sum(1 for k in w if k.startswith("enc.") and k.endswith(".la1.weight"))):
        p = f"enc.{i}"
        h = ln(out, f"{p}.la1")
        q, k, v = (lin(h, f"{p}.msa.{t}").view(b, n, heads, f // heads).transpose(1, 2) for t in "qkv")
        score = torch.softmax(torch.einsum("bhif,bhjf->bhij", q, k) / math.sqrt(f), -1)
        out = lin(torch.einsum("bhij,bhjf->bihf", score, v).flatten(2), f"{p}.msa.o") + out
        h = F.gelu(lin(ln(out, f"{p}.la2"), f"{p}.mlp.0"))
        out = F.gelu(lin(h, f"{p}.mlp.3")) + out
    return lin(ln(out[:, 0], "fc.0"), "fc.1")


def test_vit_checkpoint_computes_the_authors_function(tmp_path):
    torch.manual_seed(0)
    authors = vit(3, 10, 32, 384)
    for prm in authors.parameters():  # non-trivial values everywhere, LayerNorm affine included
        prm.data.normal_(0, 0.05)
    sd = _authors_layout(authors)
    torch.save(sd, tmp_path / "vit.pt")
    run_dir = import_checkpoint(tmp_path / "vit.pt", "vit", tmp_path / "run")
    run = load_run(run_dir)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        ours = run.model(x)
        theirs = _reference_vit(sd, (x - 0.5) / 0.5)
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), (ours - theirs).abs().max()
    assert run.config.model.arch == "vit" and run.config.model.width == 384 and run.config.data.name == "cifar10"


def test_resnet_checkpoint_round_trip_and_run_folder(tmp_path):
    torch.manual_seed(0)
    authors = resnet18(3, 100, 16).eval()
    for m in authors.modules():  # trained-looking batch-norm statistics, so eval mode is not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(_authors_layout(authors), tmp_path / "rn.pt")
    assert main(["import-checkpoint", str(tmp_path / "rn.pt"), "--format", "pag-rob", "--arch", "resnet18",
                 "--out", str(tmp_path / "run")]) == 0
    for name in ("config.yaml", "model.json", "model.safetensors", "results.json"):
        assert (tmp_path / "run" / name).is_file()
    run = load_run(tmp_path / "run")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(run.model(x), authors((x - 0.5) / 0.5), atol=1e-5)
    assert run.config.data.name == "cifar100"  # 100 classes
    assert run.results["imported_from"]["format"] == "pag-rob"


def test_wrong_arch_and_pickled_code_are_refused(tmp_path):
    torch.save(_authors_layout(resnet18(3, 10, 8)), tmp_path / "rn.pt")
    with pytest.raises(RunError, match="try the other --arch"):
        import_checkpoint(tmp_path / "rn.pt", "vit", tmp_path / "run")

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"conv1.weight": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(RunError, match="weights_only"):
        import_checkpoint(tmp_path / "evil.pt", "resnet18", tmp_path / "run2")


def test_an_imported_run_gets_its_clean_accuracy_at_its_first_evaluation_and_reports(tmp_path):
    """The import knows no test set result; `evaluate` fills it in, so `report` has its table row."""
    import numpy as np

    from pagrob.evaluate import evaluate_run
    from pagrob.report import write_report

    rng = np.random.default_rng(0)
    arrays = {k: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for k, n in (("x_train", 20), ("x_test", 8))}
    arrays.update(y_train=np.arange(20) % 10, y_test=np.arange(8) % 10)
    np.savez(tmp_path / "tiny.npz", **arrays)
    torch.save(_authors_layout(resnet18(3, 10, 4)), tmp_path / "rn.pt")
    run_dir = import_checkpoint(tmp_path / "rn.pt", "resnet18", tmp_path / "run", dataset=f"npz:{tmp_path / 'tiny.npz'}")
    assert "clean_accuracy" not in load_run(run_dir).results
    evaluate_run(load_run(run_dir), "pgd", "l2", [0.1], n=4, alignment=[], progress=False)
    results = load_run(run_dir).results
    assert 0.0 <= results["clean_accuracy"] <= 1.0 and results["n_test"] == 8
    assert "imported-pag-rob" in write_report([run_dir], tmp_path / "report").read_text()
