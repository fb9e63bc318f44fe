"""Time and memory of one PAG training step against repeating the batch, and against vanilla and 7-step PGD-AT.

    python benchmarks/pag_step.py                     # the whole table: B 16 128, k 1 2 10, threads 1 2
    python benchmarks/pag_step.py --batch 16 --k 10 --threads 2 [--step serial|batched]
    python benchmarks/pag_step.py --batch 16 --k 1 --threads 1 --profile
    python benchmarks/pag_step.py --device cuda --width 64 --batch 64 128 --k 1 10 [--bf16] [--channels-last]

Every method is one training step (forward, loss, backward, SGD step) of a ResNet-18 layout (CIFAR stem,
`--width` channels in the first stage, 64 is the real one) in training mode (batch norm on batch
statistics) on random 3x32x32 images, 10 classes:
  pag      pagrob's step: `pag_objective` (`--step`, default auto; the table says which step ran: serial,
           batched, or `batched c`: c classes per backward pass)
           + cross-entropy on the same forward pass
  repeat   the obvious algorithm (the authors' code): each image repeated k times, one forward pass and a
           create_graph backward on B*k images, cross-entropy on the first copies
  vanilla  cross-entropy only
  at7      7-step L2 PGD (eps 0.5, model in eval mode), then cross-entropy at the adversary
Each configuration (B, k, threads) runs in a fresh process with torch.set_num_threads(threads).
Times: all methods interleaved, one warm-up round, median of `--rounds`. With one CPU thread the ratios use
the process's CPU time, which other programs on a shared machine disturb far less than wall time; with more
threads, and on GPUs, wall time. Memory: pag and repeat, one step each in a fresh process: the growth of the
resident set over the step (VmHWM after it, the high-water mark having been reset through
/proc/self/clear_refs, minus VmRSS before it; the ~0.6 GB that every process holds for torch itself would
otherwise hide the step); on a GPU, the growth of max_memory_allocated over the step, in the timing process.
Check (first configuration, float32): pag's loss equals repeat's to 1e-5 (relative) with batch norm on running
statistics. In training mode the two differ by design: pag's k gradients of an image see the statistics of the
B images (one forward pass), repeat's see statistics over B*k rows; that difference is printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import itertools
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
from pagrob.losses import STEPS, classes_per_pass, pag_objective, sample_target_classes
from pagrob.models import build_model

CLASSES, SHAPE, LAM, TOLERANCE = 10, (3, 32, 32), 1.0, 1e-5
METHODS = ("pag", "repeat", "vanilla", "at7")
MEMORY_OF = ("pag", "repeat")


@dataclass
class Batch:
    x: Tensor
    y: Tensor
    classes: Tensor  # (B, k)
    targets: Tensor  # (B, k, 3, 32, 32)


def make_batch(args: argparse.Namespace, b: int, k: int, device: torch.device) -> Batch:
    """Random images; one-image targets (a random reference image per class minus the image)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, *SHAPE, generator=g)
    y = torch.randint(0, CLASSES, (b,), generator=g)
    classes = sample_target_classes(b, CLASSES, k, g)
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


def step_fn(name: str, model: nn.Module, batch: Batch, args: argparse.Namespace) -> Callable[[], None]:
    """One training step of method `name` on its own model and optimiser, the model in training mode."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    attack = PGD(model, "l2", 0.5, steps=7)
    device_type = batch.x.device.type

    def loss() -> Tensor:
        if name == "pag":
            terms = pag_objective(model, batch.x, batch.targets, batch.classes, args.step)
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
        autocast = torch.autocast(device_type, torch.bfloat16) if args.bf16 else contextlib.nullcontext()
        with autocast:
            value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(args: argparse.Namespace, b: int, k: int, device: torch.device, methods: tuple[str, ...] = METHODS
                 ) -> dict[str, dict[str, float]]:
    """Median CPU and wall seconds per step, all `methods` interleaved, after one warm-up round."""
    batch = make_batch(args, b, k, device)
    base = make_model(args, device)
    steps = {name: step_fn(name, copy.deepcopy(base), batch, args) for name in methods}
    times: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "wall": []} for name in methods}
    for r in range(args.rounds + 1):
        for name in methods:
            sync(device)
            cpu, wall = time.process_time(), time.perf_counter()
            steps[name]()
            sync(device)
            if r:
                times[name]["cpu"].append(time.process_time() - cpu)
                times[name]["wall"].append(time.perf_counter() - wall)
    return {name: {clock: statistics.median(v) for clock, v in t.items()} for name, t in times.items()}


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status (peak memory is measured on Linux only)")


def measure_memory(args: argparse.Namespace, name: str, b: int, k: int, device: torch.device) -> float:
    """MB that one step of `name` adds to the resident set (CPU: call it in a fresh process) or to the allocated
    memory (GPU)."""
    step = step_fn(name, make_model(args, device), make_batch(args, b, k, device), args)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    step()
    return (_status_kb("VmHWM") - before) / 1024


def common_argv(args: argparse.Namespace) -> list[str]:
    """The options every child process shares."""
    argv = ["--width", str(args.width), "--rounds", str(args.rounds), "--device", args.device, "--step", args.step]
    return argv + ["--bf16"] * args.bf16 + ["--channels-last"] * args.channels_last


def child(argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"benchmarks/pag_step.py {' '.join(argv)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def clock_for(device: torch.device, threads: int) -> str:
    """Which of time_methods' clocks a ratio uses: CPU time at one CPU thread, else wall time."""
    return "cpu" if device.type == "cpu" and threads == 1 else "wall"


def one_configuration(args: argparse.Namespace, b: int, k: int, threads: int, device: torch.device) -> dict:
    """Times (this process) and memory (one fresh process per method) of one configuration."""
    times = time_methods(args, b, k, device)
    clock = clock_for(device, threads)
    t = {m: times[m][clock] for m in METHODS}
    config = ["--batch", str(b), "--k", str(k), "--threads", str(threads)]
    if device.type == "cuda":  # the allocator's peak resets per step: no fresh process needed
        memory = {m: measure_memory(args, m, b, k, device) for m in MEMORY_OF}
    else:
        memory = {m: child([*common_argv(args), *config, "--memory-of", m])["mb"] for m in MEMORY_OF}
    c = classes_per_pass(args.step, make_batch(args, b, k, device).x, k)
    step = "serial" if c == 1 else "batched" if c == k else f"batched {c}"
    return {"B": b, "k": k, "threads": threads, "step": step, "clock": clock, "seconds": t, "mb": memory}


def check_loss(args: argparse.Namespace, b: int, k: int, device: torch.device) -> bool:
    """pag's loss, cosines and parameter gradients against repeat's, float32, no autocast, for the serial and the
    batched step (or `--step`)."""
    batch = make_batch(args, b, k, device)
    ok = True
    for step, mode in itertools.product(("serial", "batched") if args.step == "auto" else (args.step,),
                                        ("eval", "train")):
        ours_model, ref_model = make_model(args, device), make_model(args, device)
        ours_model.train(mode == "train")
        ref_model.train(mode == "train")
        ours = pag_objective(ours_model, batch.x, batch.targets, batch.classes, step)
        ours_grads = torch.autograd.grad(ours.loss, list(ours_model.parameters()))
        _, ref_loss, ref_cos = repeat_terms(ref_model, batch.x, batch.targets, batch.classes)
        ref_grads = torch.autograd.grad(ref_loss, list(ref_model.parameters()))
        rel = abs(ours.loss.item() - ref_loss.item()) / abs(ref_loss.item())
        cos_diff = (ours.cos - ref_cos.detach()).abs().max().item()
        scale = max(g.abs().max().item() for g in ref_grads)
        grad_diff = max((a - b).abs().max().item() for a, b in zip(ours_grads, ref_grads)) / scale
        if mode == "eval":
            ok = ok and rel <= TOLERANCE
            print(f"loss check, {step} step (B {b}, k {k}), batch norm on running statistics: pag "
                  f"{ours.loss.item():.7f} repeat {ref_loss.item():.7f}, relative difference {rel:.1e} "
                  f"({'ok' if rel <= TOLERANCE else 'FAIL'}: <= {TOLERANCE:g}); max |cosine difference| "
                  f"{cos_diff:.1e}; parameter gradients differ by {grad_diff:.1e} of their largest entry")
        else:
            print(f"  {step} step, batch norm on batch statistics (pag: the B images' statistics; repeat: over B*k "
                  f"rows): relative difference {rel:.1e}, max |cosine difference| {cos_diff:.1e}, gradients "
                  f"{grad_diff:.1e}")
    return ok


def profile_pag(args: argparse.Namespace, b: int, k: int, device: torch.device, rows: int = 15) -> None:
    """The operators that dominate the PAG step, by self time."""
    from torch.profiler import ProfilerActivity, profile

    step = step_fn("pag", make_model(args, device), make_batch(args, b, k, device), args)
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"top operators of the pag step (B {b}, k {k}, 3 steps, by {key}):")
    print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=44))


def print_row(r: dict) -> None:
    t, mb = r["seconds"], r["mb"]
    print(f"{r['B']:4d} {r['k']:3d} {r['threads']:7d}  {r['step']:8s} {t['pag']:8.3f} {t['repeat']:8.3f} "
          f"{mb['pag']:7.0f} {mb['repeat']:7.0f}  {t['pag'] / t['repeat']:9.2f} {mb['pag'] / mb['repeat']:8.2f} "
          f"{t['pag'] / t['vanilla']:11.1f} {t['pag'] / t['at7']:7.2f}  {r['clock']}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage (64: real ResNet-18)")
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 128], help="images per step (B)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 10], help="target classes per image")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU threads for torch")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (median); one warm-up round before")
    parser.add_argument("--step", choices=STEPS, default="auto", help="pag_objective's step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for every method")
    parser.add_argument("--channels-last", action="store_true", help="channels_last model and images")
    parser.add_argument("--profile", action="store_true", help="print the PAG step's top operators, first config")
    parser.add_argument("--memory-of", choices=MEMORY_OF, help=argparse.SUPPRESS)  # internal: one fresh process
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: one configuration
    args = parser.parse_args(argv)
    if not all(1 <= k <= CLASSES for k in args.k):
        raise SystemExit(f"--k must be between 1 and {CLASSES}, got {args.k}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but PyTorch sees no GPU; leave --device out to run on the CPU")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads[0])
    if args.memory_of:
        print(json.dumps({"mb": measure_memory(args, args.memory_of, args.batch[0], args.k[0], device)}))
        return
    if args.one:
        print(json.dumps(one_configuration(args, args.batch[0], args.k[0], args.threads[0], device)))
        return

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"ResNet-18 layout (CIFAR stem), width {args.width}, training mode, {where}, "
          f"{'bf16 autocast' if args.bf16 else 'float32'}{', channels_last' if args.channels_last else ''}, "
          f"torch {torch.__version__}, pag step {args.step}; median of {args.rounds} interleaved rounds")
    ok = check_loss(args, min(args.batch), max(args.k), device)
    if args.profile:
        profile_pag(args, args.batch[0], args.k[0], device)
    print("   B   k threads  pag step   pag s  repeat s  pag MB  rep MB  pag/repeat  pag/rep  pag/vanilla "
          "pag/at7  clock\n" + " " * 51 + "time   memory")
    for b, k, threads in itertools.product(args.batch, args.k, args.threads):
        config = ["--batch", str(b), "--k", str(k), "--threads", str(threads)]
        print_row(child([*common_argv(args), *config, "--one"]))
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
