"""`pagrob targets train-score-model | build`: thin wrappers over the score-model trainer and the target store."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from pagrob.config import PagConfig, load_config

SOURCES = ("oi", "cm", "nn", "exact", "sbg", "smooth")


def _weights_sha256(folder: Path) -> str:
    """One checksum over a score model's weight files, so a store remembers exactly which model made it."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


def source_spec(name: str, pag: PagConfig) -> dict:
    """What a store records about its source: the name and every setting that changes its targets."""
    params: dict = {"oi": {"seed": pag.seed}, "cm": {}, "nn": {"nn_sample": pag.nn_sample, "seed": pag.seed},
                    "exact": {"sigma": pag.sigma}, "smooth": {"sigma": pag.sigma}}.get(name, {})
    if name == "sbg":
        folder = Path(pag.score_model).resolve()
        params = {"score_model": str(folder), "score_model_sha256": _weights_sha256(folder), "sbg_t": pag.sbg_t,
                  "sbg_draws": pag.sbg_draws, "seed": pag.seed}
    return {"name": name, "params": params}


def cmd_train_score_model(args: argparse.Namespace) -> None:
    from pagrob.data import load_dataset
    from pagrob.diffusion.train import ScoreTrainConfig, train_score_model
    from pagrob.train import resolve_device

    data = load_dataset(args.dataset, args.data_dir)
    cfg = ScoreTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, width=args.width,
                           label_dropout=args.label_dropout, seed=args.seed, t_min=args.t_min, t_max=args.t_max,
                           reference=args.reference)
    out = train_score_model(data, Path(args.out), cfg, resolve_device(args.device), progress=not args.quiet)
    print(f"score model: {out}")


def cmd_build(args: argparse.Namespace) -> None:
    from pagrob.data import load_dataset
    from pagrob.targets import build_source
    from pagrob.targets.store import build_store
    from pagrob.train import resolve_device

    cfg = load_config(None, [f"data.name={args.dataset}", f"data.data_dir={args.data_dir}", f"pag.source={args.source}",
                             f"device={args.device}"] + args.set)
    data = load_dataset(args.dataset, args.data_dir)
    device = resolve_device(cfg.device)
    source = build_source(args.source, cfg.pag, data).to(device)
    out = build_store(Path(args.out), data, source, source_spec(args.source, cfg.pag), tuple(args.splits),
                      args.batch_size, args.shard_mb, device, progress=not args.quiet)
    print(f"target store: {out}")


def add_targets_parser(sub: argparse._SubParsersAction) -> None:
    """Register `pagrob targets ...` on the main parser's sub-commands."""
    group = sub.add_parser("targets", help="score models and precomputed target stores")
    targets = group.add_subparsers(dest="targets_command", required=True)

    p = targets.add_parser("train-score-model", help="train a class-conditional score model (with a null label)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", required=True, help="folder to write; rerunning continues from its checkpoint")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=0, help="0: 128 (toy MLP) or 32 (UNet's first level)")
    p.add_argument("--label-dropout", type=float, default=0.2, help="rate of null labels (unconditional score)")
    p.add_argument("--t-min", type=int, default=0, help="train on timesteps t-min..t-max only (SBG queries one)")
    p.add_argument("--t-max", type=int, default=-1, help="-1: the schedule's last timestep")
    p.add_argument("--reference", type=int, default=0,
                   help="stable (reduced-variance) targets over this many reference images per step; 0: plain DSM")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_train_score_model)

    p = targets.add_parser("build", help="precompute a source's targets for every image and class into a store")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--out", required=True, help="store folder; rerunning finishes an interrupted build")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="source settings, e.g. pag.score_model=DIR pag.sbg_t=200 pag.sbg_draws=4")
    p.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "test"])
    p.add_argument("--batch-size", type=int, default=64, help="images per source call")
    p.add_argument("--shard-mb", type=float, default=64, help="approximate size of one shard file")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_build)
