"""Data-parallel training on PyTorch's own engine: torchrun's environment, DistributedDataParallel, gloo or NCCL.

Every process draws the same global permutation from the same seed and takes its contiguous slice of each
global batch (`optim.batch_size` is the global batch), so the optimiser sees what one process would see:
DDP averages the ranks' gradients, and each rank's loss is weighted by its share of the batch.
Rank 0 alone writes checkpoints, metrics, the model and the results.

`launch(nproc, argv)` is `pagrob train --nproc N`: torchrun's launcher, in this process, running
`python -m pagrob <argv>` N times. A process torchrun started joins a process group and trains under DDP even
alone (N = 1), so one GPU exercises NCCL and DDP as N would.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import sys
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from pagrob.errors import ConfigError
from pagrob.errors import RunError


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among `world` processes and the device it computes on."""

    device: torch.device
    rank: int = 0
    world: int = 1
    grouped: bool = False  # in a process group (started by torchrun), however many processes

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.grouped


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def start(device: torch.device) -> Context:
    """Join the process group torchrun described in the environment (a no-op for one process torchrun did not
    start).

    On CUDA each process takes GPU LOCAL_RANK and NCCL; on CPU the processes talk over gloo.
    """
    world, rank, local = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun sets it, even for one process
        return Context(device)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"{world} processes on this machine need {local + 1}+ GPUs, but PyTorch sees "
                              f"{torch.cuda.device_count()}; use --nproc {torch.cuda.device_count()} or device=cpu")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend(device), rank=rank, world_size=world)
    return Context(device, rank, world, grouped=True)


def backend(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def stop(ctx: Context, failed: bool = False) -> None:
    """Leave the process group: together (a barrier) unless this rank failed, whose peers may never get there.

    Unreachable DDP wrappers still hold the group; collecting them first lets its gloo threads end now rather
    than during interpreter shutdown, where a still-joinable thread aborts the process ("terminate called
    without an active exception").
    """
    if not (ctx.active and dist.is_initialized()):
        return
    if not failed:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """DDP around `model` in a process group (even of one process), the model itself outside one.

    No static_graph: AT + PAG calls the model twice in a step, which a static graph silently gets wrong.
    No buffer broadcast: it overwrites buffers in place between those two calls, which autograd refuses;
    the only buffers that change (batch-norm running statistics) serve evaluation, which rank 0 does.
    """
    if not ctx.active:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters  # torch >= 2.14
    no_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=ids, **no_sync)


def local_slice(batch: Tensor, ctx: Context) -> Tensor:
    """This rank's contiguous part of a global batch of indices (sizes differ by at most one)."""
    return batch.tensor_split(ctx.world)[ctx.rank] if ctx.active else batch


def _comm(t: Tensor, ctx: Context) -> Tensor:
    return t.to(ctx.device) if ctx.device.type == "cuda" else t


def any_rank(flag: bool, ctx: Context) -> bool:
    """True on every rank when `flag` is true on any of them."""
    if not ctx.active:
        return flag
    t = _comm(torch.tensor([int(flag)]), ctx)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather(t: Tensor, ctx: Context) -> Tensor:
    """(world, *t.shape) stack of every rank's `t` (same shape on all ranks), on the CPU."""
    if not ctx.active:
        return t.unsqueeze(0).cpu()
    parts = [torch.empty_like(_comm(t, ctx)) for _ in range(ctx.world)]
    dist.all_gather(parts, _comm(t.contiguous(), ctx))
    return torch.stack(parts).cpu()


def mean_over_ranks(values: dict[str, float], ctx: Context) -> dict[str, float]:
    """Each value averaged over the ranks (the keys are the same on every rank)."""
    if not ctx.active or not values:
        return values
    keys = list(values)  # the same order on every rank: the same code inserted them
    rows = gather(torch.tensor([values[k] for k in keys], dtype=torch.float64), ctx)
    return dict(zip(keys, rows.mean(0).tolist()))


def parameter_spread(model: nn.Module, ctx: Context) -> float:
    """Largest difference of any parameter between ranks: 0 unless the ranks diverged."""
    if not ctx.active:
        return 0.0
    flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    high, low = _comm(flat.clone(), ctx), _comm(flat.clone(), ctx)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).max())


def launch(nproc: int, argv: list[str]) -> None:
    """Run `python -m pagrob <argv>` in `nproc` processes under torchrun's launcher on this machine.

    Raises RunError naming the failed ranks; each rank has already printed its own message.
    """
    # torchrun's launcher is needed only by `--nproc N`
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun does: N processes must not each take every core
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, sys.executable)("-m", "pagrob", *argv)
    except ChildFailedError as err:
        codes = ", ".join(f"rank {rank}: exit code {f.exitcode}" for rank, f in sorted(err.failures.items()))
        raise RunError(f"distributed training failed ({codes}); the ranks' own messages are above") from None
