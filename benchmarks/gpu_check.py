"""One prepared check for a first GPU: everything pagrob needs to know about the card, in under 8 minutes.

    python benchmarks/gpu_check.py --out DIR [--data CIFAR10.npz]      # on one GPU (make gpu-check)
    python benchmarks/gpu_check.py --device cpu --tiny --out DIR       # the rehearsal: every section, tiny sizes

Sections, in order, each within its budget (BUDGET_S) and all within DEADLINE_S (`--deadline` scales them all):
  environment  card, driver, torch, CUDA, cuDNN and NCCL versions, TF32 switches
  pag_step     benchmarks/pag_step.py's table at ResNet-18 width 64, B 64 128, k 1 10, float32 and bf16 autocast:
               time and peak memory of the PAG step against repeating the batch k times, time against a vanilla
               and a 7-step PGD-AT step; first its float32 loss check (pag against repeat, to 1e-5)
  auto_rows    the PAG step at k 10 with 1, 2, 5, 10 classes per backward pass: the rows per pass
               (losses.AUTO_ROWS) that pag.step=auto should use on this device
  cifar10      vanilla, PAG CM (k 1) and 2-step L2 PGD-AT trained on all 50,000 CIFAR-10 images (from --data,
               resident on the device, bf16 + channels_last) by pagrob's own train/evaluate, then the evaluation
               PGD (with its guards) on 1,000 test images; epochs per minute
  ddp          `pagrob train --nproc 1`: one torchrun process, DistributedDataParallel on NCCL (gloo on a CPU)
Each item's result (with `item_seconds`, its wall time) is written to DIR/gpu_check.json and DIR/gpu_check.md as
soon as it is measured, so a run cut short keeps what it measured. An item starts only while its section has more
time left than the section's longest item so far took; the others are listed as skipped, with the reason. An item
that fails is recorded with its error and the check goes on. Without the npz at --data (a device machine receives
the working tree only) the cifar10 runs train on random images of CIFAR-10's shape: their times hold, their
accuracies mean nothing, and the report says so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from unittest import mock

import torch

import pag_step
import pagrob
from pagrob import distributed, losses
from pagrob.config import load_config
from pagrob.data import Dataset, load_dataset
from pagrob.files import atomic_write, write_json
from pagrob.pipeline import train_and_evaluate

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10.npz"
DEADLINE_S = 450  # the whole check; a device session's command limit is 600 s
BUDGET_S = {"environment": 10, "pag_step": 120, "auto_rows": 40, "cifar10": 190, "ddp": 50}  # seconds each


@dataclass(frozen=True)
class Sizes:
    """What the check measures: the real sizes for a GPU, tiny ones for the CPU rehearsal."""

    width: int  # ResNet-18's first-stage channels (64: the real network)
    batches: tuple[int, ...]
    ks: tuple[int, ...]
    rounds: int  # timed rounds per configuration (median)
    classes_per_pass: tuple[int, ...]  # auto_rows candidates, at k = max(ks)
    train_n: int  # CIFAR-10 training images (0: all 50,000)
    test_n: int  # CIFAR-10 test images for clean accuracy (0: all 10,000)
    batch_size: int
    epochs: int
    eval_n: int  # test images under the evaluation PGD
    pgd_steps: int
    pgd_restarts: int
    ddp_train_n: int
    ddp_cifar: bool  # the DDP run on CIFAR-10 (when --data is there) or on digits (loads in no time)


FULL = Sizes(64, (64, 128), (1, 10), 3, (1, 2, 5, 10), 0, 0, 128, 1, 1000, 50, 2, 1024, True)
TINY = Sizes(4, (4,), (2,), 1, (1, 2), 64, 64, 32, 1, 4, 5, 1, 64, False)
# the three CIFAR-10 runs: the same network, optimiser and budget, only the objective differs
RUNS = {"vanilla": [], "pag-cm": ["pag.source=cm", "pag.k=1"],
        "at-l2": ["adv.method=pgd", "adv.norm=l2", "adv.eps=0.5", "adv.steps=2"]}
Work = Callable[[float], dict]  # seconds left for the item -> its measurements


def pag_args(device: torch.device, sizes: Sizes, bf16: bool) -> argparse.Namespace:
    """benchmarks/pag_step.py's options for one precision."""
    argv = ["--device", str(device), "--width", str(sizes.width), "--rounds", str(sizes.rounds)]
    return pag_step.parse_args(argv + ["--bf16"] * bf16)


def environment(device: torch.device) -> dict:
    """Versions and switches that decide what the figures mean (TF32 changes float32 convolutions on a GPU)."""
    env = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
           "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(card=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                   driver=_driver(), nccl=_nccl(),
                   bf16_supported=torch.cuda.is_bf16_supported())
    return env


def _nccl() -> str:
    version = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older ones
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def _driver() -> str:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
        return done.stdout.strip().splitlines()[0] if done.returncode == 0 else f"nvidia-smi failed: {done.stderr}"
    except (OSError, subprocess.SubprocessError, IndexError) as err:
        return f"unknown ({err})"


def loss_check(device: torch.device, sizes: Sizes) -> dict:
    """pag_step's check: pag's float32 loss equals repeat's to 1e-5 (batch norm on running statistics)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ok = pag_step.check_loss(pag_args(device, sizes, False), min(sizes.batches), max(sizes.ks), device)
    return {"ok": ok, "lines": out.getvalue().splitlines()}


def pag_row(device: torch.device, sizes: Sizes, b: int, k: int, bf16: bool) -> dict:
    """One row of pag_step's table, with its ratios."""
    row = pag_step.one_configuration(pag_args(device, sizes, bf16), b, k, 1, device)
    t, mb = row["seconds"], row["mb"]
    return {**row, "precision": "bf16" if bf16 else "fp32",
            "ratios": {"time_vs_repeat": t["pag"] / t["repeat"], "memory_vs_repeat": mb["pag"] / mb["repeat"],
                       "time_vs_vanilla": t["pag"] / t["vanilla"], "time_vs_at7": t["pag"] / t["at7"]}}


def pag_step_items(device: torch.device, sizes: Sizes) -> list[tuple[str, Work]]:
    def row(b: int, k: int, bf16: bool) -> tuple[str, Work]:
        return f"B {b}, k {k}, {'bf16' if bf16 else 'fp32'}", lambda _: pag_row(device, sizes, b, k, bf16)

    rows = [row(b, k, bf16) for bf16 in (False, True) for b in sizes.batches for k in sizes.ks]
    return [("loss check", lambda _: loss_check(device, sizes)), *rows]


def auto_row(device: torch.device, sizes: Sizes, b: int, c: int) -> dict:
    """Seconds of the PAG step (float32, pag_step's clock) with AUTO_ROWS set to B * c rows per pass: c classes
    per pass."""
    args, k = pag_args(device, sizes, False), max(sizes.ks)
    with mock.patch.dict(losses.AUTO_ROWS, {device.type: b * c}):
        ran = losses.classes_per_pass("auto", torch.empty(b, device=device), k)
        seconds = pag_step.time_methods(args, b, k, device, methods=("pag",))["pag"]
    clock = pag_step.clock_for(device, 1)
    return {"B": b, "k": k, "classes_per_pass": ran, "rows": b * c, "seconds": seconds[clock], "clock": clock}


def best_rows(rows: list[dict]) -> dict | None:
    """The AUTO_ROWS value whose choice of classes per pass is fastest over every B measured (the sum of each B's
    time over its best), among the row counts measured; ties go to fewer rows (less memory). Row counts that
    would pick a classes-per-pass not measured for some B are left out."""
    seconds = {(r["B"], r["classes_per_pass"]): r["seconds"] for r in rows}
    batches, k = sorted({r["B"] for r in rows}), rows[0]["k"]
    fastest = {b: min(s for (bb, _), s in seconds.items() if bb == b) for b in batches}

    def cost(cap: int) -> float | None:
        picks = [(b, losses.auto_classes(cap, b, k)) for b in batches]
        return None if any(p not in seconds for p in picks) else sum(seconds[p] / fastest[b] for b, p in
                                                                      zip(batches, picks))

    costs = {cap: c for cap in sorted({r["rows"] for r in rows}) if (c := cost(cap)) is not None}
    if not costs:
        return None
    best = min(costs, key=lambda cap: (round(costs[cap], 3), cap))
    return {"recommended_rows": best, "slowdown_vs_each_fastest": costs[best] / len(batches),
            "per_batch": {b: losses.auto_classes(best, b, k) for b in batches}}


def auto_rows_items(device: torch.device, sizes: Sizes) -> list[tuple[str, Work]]:
    k = max(sizes.ks)
    return [(f"B {b}, {c} classes per pass", lambda _, b=b, c=c: auto_row(device, sizes, b, c))
            for b in sizes.batches for c in sizes.classes_per_pass if c <= k]


def auto_rows_summary(device: torch.device, items: list[dict]) -> dict:
    """The row count to set, against today's AUTO_ROWS for this device type."""
    measured = [i for i in items if "classes_per_pass" in i]
    best = best_rows(measured) if measured else None
    if best is None:
        return {}
    now, k = losses.AUTO_ROWS.get(device.type, 0), measured[0]["k"]
    same = all(losses.auto_classes(now, b, k) == c for b, c in best["per_batch"].items())
    where = f"AUTO_ROWS['{device.type}'] in src/pagrob/losses.py"
    return {**best, "current_rows": now,
            "advice": f"{where} = {now} already picks the fastest" if same else
            f"set {where} to {best['recommended_rows']} (now {now})"}


def cifar_settings(device: torch.device, sizes: Sizes, data: Path) -> list[str]:
    return [f"device={device}", "data.name=cifar10", f"data.data_dir={data}", "model.arch=resnet18",
            f"model.width={sizes.width}", f"optim.epochs={sizes.epochs}", f"optim.batch_size={sizes.batch_size}",
            "optim.lr=0.05", "optim.precision=bf16", "optim.memory_format=channels_last", f"eval.n={sizes.eval_n}",
            "eval.norms=[l2]", "eval.eps_l2=[0.5]", f"eval.pgd_steps={sizes.pgd_steps}",
            f"eval.pgd_restarts={sizes.pgd_restarts}"]


def cifar_run(name: str, sets: list[str], data, out: Path) -> dict:
    """Train and evaluate one run by pagrob's own pipeline; epochs per minute of training."""
    cfg = load_config(None, sets + [f"name={name}"])
    shutil.rmtree(out / name, ignore_errors=True)  # a fresh run, whatever an earlier check left
    start = time.perf_counter()
    results = json.loads((train_and_evaluate(cfg, out / name, progress=False, data=data) / "results.json").read_text())
    worst = results["worst_case"][0]
    train_s = results["train_seconds"]
    return {"run": name, "method": results["method"], "train_images": len(data.x_train), "epochs": cfg.optim.epochs,
            "train_seconds": train_s, "epochs_per_minute": cfg.optim.epochs * 60 / train_s,
            # the wall time beyond training: evaluation, and the set-up around training
            "evaluate_seconds": time.perf_counter() - start - train_s, "clean_accuracy": results["clean_accuracy"],
            "n_test": results["n_test"], "robust_accuracy": worst["accuracy"], "robust_n": worst["n_examples"],
            "robust_eps_l2": worst["eps"], "verdict": worst["verdict"],
            "pgd": f"{cfg.eval.pgd_steps} steps x {cfg.eval.pgd_restarts} restarts x {'+'.join(cfg.eval.pgd_losses)}"}


def synthetic_cifar(train_n: int, test_n: int) -> Dataset:
    """Random images of CIFAR-10's shape and number: a run's times hold on them, its accuracies mean nothing."""
    g = torch.Generator().manual_seed(0)
    def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)

    return Dataset("cifar10", *images(train_n or 50_000), *images(test_n or 10_000), 10)


def cifar_items(device: torch.device, sizes: Sizes, data: Path, out: Path) -> list[tuple[str, Work]]:
    """The three runs on CIFAR-10 from `data`, or, where the npz is missing (a device machine receives the working
    tree only), on random images of its shape, for the times."""
    source = str(data) if data.is_file() else f"synthetic: no CIFAR-10 npz at {data}, times only"
    loaded: list[Dataset] = []

    def dataset() -> Dataset:
        """Loaded once, by the first run (so its time is that item's)."""
        if not loaded and not data.is_file():
            loaded.append(synthetic_cifar(sizes.train_n, sizes.test_n))
        if not loaded:
            full = load_dataset("cifar10", data, train_n=sizes.train_n)
            n = sizes.test_n or len(full.x_test)
            loaded.append(dataclasses.replace(full, x_test=full.x_test[:n], y_test=full.y_test[:n]))
        return loaded[0]

    def run(name: str, sets: list[str]) -> tuple[str, Work]:
        base = cifar_settings(device, sizes, data)
        return name, lambda _: {"data": source, **cifar_run(name, base + sets, dataset(), out / "cifar10")}

    return [run(name, sets) for name, sets in RUNS.items()]


def run_group(argv: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """`argv` in a session of its own; past `timeout`, the whole session (torchrun's workers too) is killed."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def ddp_run(device: torch.device, sizes: Sizes, data: Path, out: Path, left: float) -> dict:
    """`pagrob train --nproc 1` in a subprocess (killed when the section's time is up): DDP under torchrun."""
    cifar = ["data.name=cifar10", f"data.data_dir={data}", "model.arch=resnet18", f"model.width={sizes.width}"]
    sets = [f"device={device}", *(cifar if sizes.ddp_cifar and data.is_file() else ["data.name=digits"]),
            f"data.train_n={sizes.ddp_train_n}", "data.holdout=256", "pag.source=cm", "pag.k=1", "optim.epochs=1",
            f"optim.batch_size={sizes.batch_size}", "eval.eps_l2=[0]"]
    argv = [sys.executable, "-m", "pagrob", "--quiet", "train", "--nproc", "1", "--out", str(out / "ddp")]
    shutil.rmtree(out / "ddp", ignore_errors=True)  # a fresh run, whatever an earlier check left
    src = str(Path(pagrob.__file__).resolve().parents[1])  # this pagrob, not another install
    path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    # DDP's own log names the backend it was built on: measured, not assumed
    env = {**os.environ, "TORCH_CPP_LOG_LEVEL": "INFO", "TORCH_DISTRIBUTED_DEBUG": "INFO", "PYTHONPATH": path}
    start = time.perf_counter()
    done = run_group(argv + [a for s in sets for a in ("--set", s)], env, max(1.0, left))
    wall = time.perf_counter() - start
    if done.returncode:
        return {"error": f"exit code {done.returncode}", "stderr_tail": done.stderr[-2000:]}
    results = json.loads((out / "ddp" / "results.json").read_text())
    steps = -(-sizes.ddp_train_n // sizes.batch_size)
    ddp = re.search(r"DDP Initialized with:.*?backend_name: (\w+)", done.stderr, re.S)
    return {"ddp_backend": ddp.group(1) if ddp else None, "expected_backend": distributed.backend(device),
            "processes": 1, "steps": steps, "wall_seconds": wall, "train_seconds": results["train_seconds"],
            "steps_per_second": steps / results["train_seconds"], "dataset": results["dataset"]}


@dataclass
class Check:
    """The report being written: its sections, where it goes, and the deadline."""

    out: Path
    report: dict  # holds deadline_s, the seconds the whole check may take
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def budget(self, name: str) -> float:
        """The section's seconds: BUDGET_S's share of this check's deadline."""
        return BUDGET_S[name] * self.report["deadline_s"] / DEADLINE_S

    def write(self) -> None:
        self.report["elapsed_s"] = time.perf_counter() - self.start
        write_json(self.out / "gpu_check.json", self.report)
        atomic_write(self.out / "gpu_check.md", markdown(self.report).encode())

    def section(self, name: str, items: list[tuple[str, Work]],
                summary: Callable[[list[dict]], dict] | None = None) -> None:
        """Run `items` within the section's budget and the deadline; write after each one."""
        entry = self.report["sections"][name] = {"budget_s": self.budget(name), "items": []}
        start = time.perf_counter()
        end, longest = min(start + self.budget(name), self.start + self.report["deadline_s"]), 0.0
        for label, work in items:
            left = end - time.perf_counter()
            if left <= longest:
                entry["items"].append({"item": label, "skipped": f"{max(left, 0):.0f} s left of the section's "
                                                                 f"budget and the deadline; its longest item took "
                                                                 f"{longest:.0f} s"})
                continue
            began = time.perf_counter()
            try:
                result = work(left)
            except (Exception, SystemExit) as err:  # (pag_step's children exit) recorded, and the check goes on
                result = {"error": f"{type(err).__name__}: {err}"}
            seconds = time.perf_counter() - began
            longest = max(longest, seconds)
            entry["items"].append({"item": label, "item_seconds": seconds, **result})
            print(f"gpu_check {name}: {label}: {seconds:.1f} s{' ' + result['error'] if 'error' in result else ''}",
                  flush=True)
            self.write()
        if summary is not None:
            entry.update(summary(entry["items"]))
        bad = [i for i in entry["items"] if "error" in i or "skipped" in i]
        entry.update(seconds=time.perf_counter() - start, status="partial" if bad else "done")
        self.write()


def _f(v: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}"


def markdown(report: dict) -> str:
    """The report as Markdown tables, one per section."""
    s = report["sections"]
    lines = [f"# GPU check: {report['device']}{' (tiny rehearsal)' if report['tiny'] else ''}", "",
             f"Started {report['started']}, {report['elapsed_s']:.0f} s of the {report['deadline_s']:.0f} s deadline "
             "used.", ""]
    if "environment" in s:
        env = next((i for i in s["environment"]["items"] if "torch" in i), {})
        lines += ["## Environment", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in env.items() if k not in ("item", "item_seconds")] + [""]
    if "pag_step" in s:
        rows = [i for i in s["pag_step"]["items"] if "ratios" in i]
        check = next((i for i in s["pag_step"]["items"] if "ok" in i), None)
        lines += ["## PAG step (ResNet-18, training mode)", ""]
        if check:
            lines += [f"Loss check (float32, pag against repeat): {'ok' if check['ok'] else 'FAIL'}", ""]
            lines += [f"    {line}" for line in check["lines"]] + [""]
        lines += ["| B | k | precision | step | pag s | repeat s | pag MB | repeat MB | time / repeat "
                  "| memory / repeat | time / vanilla | time / 7-step PGD-AT |", "|---" * 12 + "|"]
        for r in rows:
            t, mb, q = r["seconds"], r["mb"], r["ratios"]
            lines.append(f"| {r['B']} | {r['k']} | {r['precision']} | {r['step']} | {_f(t['pag'], 4)} | "
                         f"{_f(t['repeat'], 4)} | {mb['pag']:.0f} | {mb['repeat']:.0f} | {_f(q['time_vs_repeat'])} | "
                         f"{_f(q['memory_vs_repeat'])} | {_f(q['time_vs_vanilla'])} | {_f(q['time_vs_at7'])} |")
        lines.append("")
    if "auto_rows" in s:
        a = s["auto_rows"]
        lines += ["## Rows per backward pass for pag.step=auto (float32)", "",
                  "| B | k | classes per pass | rows | pag s |", "|---|---|---|---|---|"]
        lines += [f"| {i['B']} | {i['k']} | {i['classes_per_pass']} | {i['rows']} | {_f(i['seconds'], 4)} |"
                  for i in a["items"] if "rows" in i]
        if "advice" in a:
            lines += ["", f"Recommended: {a['advice']} ({a['slowdown_vs_each_fastest']:.2f} x each B's fastest)."]
        lines.append("")
    if "cifar10" in s:
        runs = [i for i in s["cifar10"]["items"] if "run" in i]
        lines += ["## CIFAR-10, full width", "", f"Data: {runs[0]['data'] if runs else 'none'}", "",
                  "| run | train images | epochs | train s | epochs / min | evaluate (+ set-up) s | clean % "
                  "| PGD L2 0.5 % (n) | guards |", "|---" * 9 + "|"]
        lines += [f"| {i['run']} | {i['train_images']} | {i['epochs']} | {i['train_seconds']:.1f} | "
                  f"{_f(i['epochs_per_minute'])} | {i['evaluate_seconds']:.1f} | {100 * i['clean_accuracy']:.1f} | "
                  f"{100 * i['robust_accuracy']:.1f} ({i['robust_n']}, {i['pgd']}) | {i['verdict']} |"
                  for i in runs]
        lines.append("")
    if "ddp" in s:
        lines += ["## DistributedDataParallel, one torchrun process", "",
                  "| DDP built on | expected | steps | steps / s | wall s |", "|---|---|---|---|---|"]
        lines += [f"| {i['ddp_backend']} | {i['expected_backend']} | {i['steps']} | {_f(i['steps_per_second'])} | "
                  f"{i['wall_seconds']:.1f} |" for i in s["ddp"]["items"] if "ddp_backend" in i]
        lines.append("")
    problems = [f"- {name}: {i['item']}: {i.get('error') or i['skipped']}" for name, sec in s.items()
                for i in sec["items"] if "error" in i or "skipped" in i]
    return "\n".join(lines + (["## Skipped or failed", "", *problems, ""] if problems else []))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md and the runs")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the rehearsal)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"CIFAR-10 npz (default {DEFAULT_DATA})")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: every section in under a minute on a CPU")
    parser.add_argument("--deadline", type=float, default=DEADLINE_S,
                        help=f"seconds for the whole check (default {DEADLINE_S}); the sections' budgets scale with it")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but PyTorch sees no GPU; rehearse with --device cpu --tiny")
    return args


def main() -> None:
    args = parse_args()
    device, sizes, out = torch.device(args.device), TINY if args.tiny else FULL, Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu":
        torch.set_num_threads(1)  # pag_step's rows at one thread take CPU time, which other programs disturb less
    check = Check(out, {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": str(device),
                        "tiny": args.tiny, "deadline_s": args.deadline, "sizes": dataclasses.asdict(sizes),
                        "sections": {}})
    check.section("environment", [("versions", lambda _: environment(device))])
    check.section("pag_step", pag_step_items(device, sizes))
    check.section("auto_rows", auto_rows_items(device, sizes), lambda items: auto_rows_summary(device, items))
    print(f"gpu_check auto_rows: {check.report['sections']['auto_rows'].get('advice', 'nothing measured')}")
    check.section("cifar10", cifar_items(device, sizes, args.data, out))
    check.section("ddp", [("pagrob train --nproc 1", lambda left: ddp_run(device, sizes, args.data, out, left))])
    print(f"gpu_check: {out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
