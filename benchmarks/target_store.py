"""Build a CIFAR-100-shaped target store (N images x 100 classes x 3x32x32, fp16) and stream it in shuffled order.

    python benchmarks/target_store.py N [--dir DIR] [--batch 128] [--k 0] [--keep]

Peak memory must not depend on N: building writes one batch at a time, reading copies out only the rows a
batch needs. Every row's value is known (class pattern x (image + 1)), so the stream is checked as it is read.
Last line: `peak RSS MB: X, rows/s: Y`.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pagrob.data import Dataset
from pagrob.losses import sample_target_classes
from pagrob.targets.base import TargetSource
from pagrob.targets.store import build_store, open_store

CLASSES, SHAPE = 100, (3, 32, 32)


class Synthetic(TargetSource):
    """g(x_i, t) = pattern[t] * (i + 1): cheap to make, and every row read back can be checked."""

    name = "synthetic"

    def __init__(self):
        self.pattern = torch.randn(CLASSES, *SHAPE, generator=torch.Generator().manual_seed(0))

    def __call__(self, x, classes, index=None):
        return self.pattern[classes] * (index.float() + 1).view(-1, 1, 1, 1, 1)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", type=int, help="images in the store")
    parser.add_argument("--dir", help="parent folder of the temporary store (default: the system temp dir)")
    parser.add_argument("--batch", type=int, default=128, help="images per training batch")
    parser.add_argument("--k", type=int, default=0, help="classes read per image; 0: all 100")
    parser.add_argument("--keep", action="store_true", help="keep the store instead of deleting it")
    args = parser.parse_args()
    torch.set_num_threads(1)

    need = args.n * CLASSES * (2 * 3 * 32 * 32 + 4)
    root = Path(tempfile.mkdtemp(prefix="pagrob-store-", dir=args.dir))
    free = shutil.disk_usage(root).free
    if free < 1.1 * need:
        shutil.rmtree(root)
        raise SystemExit(f"the store needs {need / 1e9:.1f} GB and {root.parent} has {free / 1e9:.1f} GB free")
    # Images are never read by this source: one zero image broadcast to N keeps them out of memory.
    x = torch.zeros(1, *SHAPE).expand(args.n, *SHAPE)
    data = Dataset("synthetic-cifar100", x, torch.arange(args.n) % CLASSES, x[:1], torch.zeros(1).long(), CLASSES)
    source = Synthetic()
    try:
        start = time.perf_counter()
        build_store(root / "store", data, source, {"name": "synthetic", "params": {}}, splits=("train",))
        build_s = time.perf_counter() - start
        print(f"N = {args.n}: built {need / 1e9:.2f} GB in {build_s:.0f} s; peak RSS so far {peak_rss_mb():.0f} MB")

        store = open_store(root / "store", data)
        order = torch.randperm(args.n, generator=torch.Generator().manual_seed(1))
        generator = torch.Generator().manual_seed(2)
        rows, worst, stream_s = 0, 0.0, 0.0
        for i in range(0, args.n, args.batch):
            idx = order[i:i + args.batch]
            classes = sample_target_classes(len(idx), CLASSES, args.k, generator)
            start = time.perf_counter()
            g = store(x[idx], classes, idx)
            stream_s += time.perf_counter() - start  # the read alone, not the check below
            want = source(None, classes[:4], idx[:4])  # check a few images of every batch
            err = (g[:4] - want).flatten(2).abs().amax(2) / want.flatten(2).abs().amax(2)
            worst = max(worst, float(err.max()))
            del g
            rows += classes.numel()
    finally:
        if not args.keep:
            shutil.rmtree(root)
    if worst > 1e-3:
        raise SystemExit(f"read-back error {worst:.2e} exceeds fp16 precision: the store returned wrong rows")
    print(f"streamed {rows} (image, class) rows in {stream_s:.1f} s in shuffled order, batch {args.batch}; "
          f"largest read-back error {worst:.1e} of a row's max")
    print(f"peak RSS MB: {peak_rss_mb():.0f}, rows/s: {rows / stream_s:.0f}")


if __name__ == "__main__":
    main()
