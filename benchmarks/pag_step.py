"""Time and memory of one PAG training step, against the repeat-batch algorithm, vanilla and 10-step PGD-AT.

    python benchmarks/pag_step.py [--width 16] [--batch 16] [--k 10] [--rounds 5] [--threads 1] [--profile]
    python benchmarks/pag_step.py --device cuda --width 64 --batch 64 [--bf16] [--channels-last]

Every method is one training step (forward, loss, backward, SGD step) of a ResNet-18 layout (CIFAR stem,
`--width` channels in the first stage, 64 is the real one) on random 3x32x32 images, 10 classes:
  pag      pagrob's step: `pag_objective` (one forward pass, one class's double-backward graph at a time)
           + cross-entropy on the same forward pass
  repeat   the obvious algorithm (the authors' code): each image repeated k times, one forward pass and a
           create_graph backward on B*k images, cross-entropy on the first copies
  vanilla  cross-entropy only
  at10     10-step L2 PGD (eps 0.5, model in eval mode as in training), then cross-entropy at the adversary
Times: all methods interleaved, one warm-up round, median of `--rounds`. On the CPU the ratios use the
process's CPU time, which other programs on a shared machine disturb far less than wall time (with
`--threads 1`; with more threads, and on GPUs, wall time). Both are printed.
Memory: one step per method in a fresh process: the growth of the resident set over the step (VmHWM after
it, the high-water mark having been reset through /proc/self/clear_refs, minus VmRSS before it; the
~0.6 GB that every process holds for torch itself would otherwise hide the step); on a GPU, the growth of
max_memory_allocated.
Check: pag's loss equals repeat's to 1e-5 (relative) on the same inputs, with batch norm on its running
statistics (in training mode both couple images through the batch statistics, differently; printed too).
Last line: `pag/repeat time X, pag/repeat memory Y, pag/vanilla Z, pag/at10 W`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pagrob.attacks import PGD
from pagrob.losses import pag_objective, sample_target_classes
from pagrob.models import build_model

CLASSES, SHAPE, LAM, TOLERANCE = 10, (3, 32, 32), 1.0, 1e-5
METHODS = ("pag", "repeat", "vanilla", "at10")


@dataclass
class Batch:
    x: Tensor
    y: Tensor
    classes: Tensor  # (B, k)
    targets: Tensor  # (B, k, 3, 32, 32)


def make_batch(args: argparse.Namespace, device: torch.device) -> Batch:
    """Random images; one-image targets (a random reference image per class minus the image)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, *SHAPE, generator=g)
    y = torch.randint(0, CLASSES, (args.batch,), generator=g)
    classes = sample_target_classes(args.batch, CLASSES, args.k, g)
    refs = torch.rand(CLASSES, *SHAPE, generator=g)
    targets = refs[classes] - x.unsqueeze(1)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    return Batch(x.to(device).contiguous(memory_format=fmt), y.to(device), classes.to(device), targets.to(device))


def make_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet18", SHAPE, CLASSES, width=args.width).to(device)
    return model.to(memory_format=torch.channels_last) if args.channels_last else model


def repeat_terms(model: nn.Module, x: Tensor, targets: Tensor, classes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The repeat-batch reference: (logits of the first copies (B, C), PAG loss, cosines (B, k))."""
    b, k = classes.shape
    x_rep = x.repeat_interleave(k, dim=0).requires_grad_(True)  # (B*k, ...): image b at rows b*k .. b*k+k-1
    logits = model(x_rep)
    log_p = F.log_softmax(logits, dim=1).gather(1, classes.reshape(-1, 1)).sum()
    (grads,) = torch.autograd.grad(log_p, x_rep, create_graph=True)
    cos = F.cosine_similarity(grads.flatten(1), targets.flatten(0, 1).flatten(1).to(grads.dtype), dim=1)
    return logits.view(b, k, -1)[:, 0], (1 - cos).mean(), cos.view(b, k)


def step_fn(name: str, model: nn.Module, batch: Batch, bf16: bool) -> Callable[[], None]:
    """One training step of method `name` on its own model and optimiser."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    attack = PGD(model, "l2", 0.5, steps=10)
    device_type = batch.x.device.type

    def loss() -> Tensor:
        if name == "pag":
            terms = pag_objective(model, batch.x, batch.targets, batch.classes)
            return F.cross_entropy(terms.logits, batch.y) + LAM * terms.loss
        if name == "repeat":
            logits, pag, _ = repeat_terms(model, batch.x, batch.targets, batch.classes)
            return F.cross_entropy(logits, batch.y) + LAM * pag
        if name == "vanilla":
            return F.cross_entropy(model(batch.x), batch.y)
        model.eval()
        x_adv = attack(batch.x, batch.y)
        model.train()
        return F.cross_entropy(model(x_adv), batch.y)

    def step() -> None:
        autocast = torch.autocast(device_type, torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, float]]:
    """Median CPU and wall seconds per step, all methods interleaved, after one warm-up round."""
    batch = make_batch(args, device)
    base = make_model(args, device)
    steps = {name: step_fn(name, copy.deepcopy(base), batch, args.bf16) for name in METHODS}
    times: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "wall": []} for name in METHODS}
    for r in range(args.rounds + 1):
        for name in METHODS:
            sync(device)
            cpu, wall = time.process_time(), time.perf_counter()
            steps[name]()
            sync(device)
            if r:
                times[name]["cpu"].append(time.process_time() - cpu)
                times[name]["wall"].append(time.perf_counter() - wall)
        print(f"round {r}/{args.rounds}" + (" (warm-up)" if r == 0 else ""), file=sys.stderr, flush=True)
    return {name: {clock: statistics.median(v) for clock, v in t.items()} for name, t in times.items()}


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status (peak memory is measured on Linux only)")


def measure_memory(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Run in a fresh process: MB the step adds to the resident set (CPU) or to allocated memory (GPU)."""
    batch = make_batch(args, device)
    step = step_fn(args.memory_of, make_model(args, device), batch, args.bf16)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        return {"step": (torch.cuda.max_memory_allocated(device) - before) / 2**20,
                "peak": torch.cuda.max_memory_allocated(device) / 2**20}
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    step()
    peak = _status_kb("VmHWM")
    return {"step": (peak - before) / 1024, "peak": peak / 1024}


def memory_in_fresh_processes(argv: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for name in METHODS:
        done = subprocess.run([sys.executable, __file__, *argv, "--memory-of", name], capture_output=True,
                              text=True)
        if done.returncode:
            raise SystemExit(f"memory measurement of {name} failed:\n{done.stderr}")
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def check_loss(args: argparse.Namespace, device: torch.device) -> bool:
    """pag's loss, cosines and parameter gradients against repeat's, float32, no autocast."""
    batch = make_batch(args, device)
    ok = True
    for mode in ("eval", "train"):
        ours_model, ref_model = make_model(args, device), make_model(args, device)
        ours_model.train(mode == "train")
        ref_model.train(mode == "train")
        ours = pag_objective(ours_model, batch.x, batch.targets, batch.classes)
        ours_grads = torch.autograd.grad(ours.loss, list(ours_model.parameters()))
        _, ref_loss, ref_cos = repeat_terms(ref_model, batch.x, batch.targets, batch.classes)
        ref_grads = torch.autograd.grad(ref_loss, list(ref_model.parameters()))
        rel = abs(ours.loss.item() - ref_loss.item()) / abs(ref_loss.item())
        cos_diff = (ours.cos - ref_cos.detach()).abs().max().item()
        scale = max(g.abs().max().item() for g in ref_grads)
        grad_diff = max((a - b).abs().max().item() for a, b in zip(ours_grads, ref_grads)) / scale
        if mode == "eval":
            ok = rel <= TOLERANCE
            print(f"loss check, batch norm on running statistics: pag {ours.loss.item():.7f} repeat "
                  f"{ref_loss.item():.7f}, relative difference {rel:.1e} ({'ok' if ok else 'FAIL'}: <= {TOLERANCE:g}); "
                  f"max |cosine difference| {cos_diff:.1e}; parameter gradients differ by {grad_diff:.1e} of "
                  "their largest entry")
        else:
            print(f"training mode (batch statistics couple the images in both, and the k copies in repeat): "
                  f"relative difference {rel:.1e}, max |cosine difference| {cos_diff:.1e}, gradients {grad_diff:.1e}")
    return ok


def profile_pag(args: argparse.Namespace, device: torch.device, rows: int = 12) -> None:
    """The operators that dominate the PAG step, by self time."""
    from torch.profiler import ProfilerActivity, profile

    step = step_fn("pag", make_model(args, device), make_batch(args, device), args.bf16)
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"top operators of the pag step (2 steps, by {key}):")
    print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=44))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage (64: real ResNet-18)")
    parser.add_argument("--batch", type=int, default=16, help="images per step (B)")
    parser.add_argument("--k", type=int, default=10, help="target classes per image")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median); one warm-up round before")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (1: steady figures on a shared machine; 0: torch's default)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for every method")
    parser.add_argument("--channels-last", action="store_true", help="channels_last model and images")
    parser.add_argument("--profile", action="store_true", help="print the PAG step's top operators")
    parser.add_argument("--memory-of", choices=METHODS, help=argparse.SUPPRESS)  # internal: one fresh process
    args = parser.parse_args()
    if not 1 <= args.k <= CLASSES:
        raise SystemExit(f"--k must be between 1 and {CLASSES}, got {args.k}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but PyTorch sees no GPU; leave --device out to run on the CPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(measure_memory(args, device)))
        return

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    print(f"ResNet-18 layout (CIFAR stem), width {args.width}, batch {args.batch}, k {args.k}, {name}, "
          f"{'bf16 autocast' if args.bf16 else 'float32'}{', channels_last' if args.channels_last else ''}, "
          f"torch {torch.__version__}")
    ok = check_loss(args, device)
    if args.profile:
        profile_pag(args, device)
    times = time_methods(args, device)
    argv = [a for a in sys.argv[1:] if a != "--profile"]
    memory = memory_in_fresh_processes(argv)
    clock = "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
    unit = "GPU MB" if device.type == "cuda" else "RSS MB"
    print(f"{'method':8s} {'cpu s/step':>10s} {'wall s/step':>11s} {'step ' + unit:>12s} {'peak ' + unit:>12s}")
    for m in METHODS:
        print(f"{m:8s} {times[m]['cpu']:10.3f} {times[m]['wall']:11.3f} {memory[m]['step']:12.0f} "
              f"{memory[m]['peak']:12.0f}")
    print(f"ratios use {clock} time and the step's {unit}; median of {args.rounds} interleaved rounds")
    t = {m: times[m][clock] for m in METHODS}
    print(f"pag/repeat time {t['pag'] / t['repeat']:.2f}, "
          f"pag/repeat memory {memory['pag']['step'] / memory['repeat']['step']:.2f}, "
          f"pag/vanilla {t['pag'] / t['vanilla']:.1f}, pag/at10 {t['pag'] / t['at10']:.2f}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
