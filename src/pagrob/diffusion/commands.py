"""What `pagrob targets train-score-model | build | compare` do (the CLI parses their arguments): train a score
model, precompute a source's targets into a store, compare a score model's targets with the exact ones."""

from __future__ import annotations

import argparse
from pathlib import Path

from pagrob.config import load_config
from pagrob.data import load_dataset
from pagrob.devices import resolve_device
from pagrob.diffusion.compare import compare_targets, comparison_data
from pagrob.diffusion.train import ScoreTrainConfig, train_score_model
from pagrob.targets import build_source, source_spec
from pagrob.targets.store import build_store


def train_score_model_command(args: argparse.Namespace) -> Path:
    data = load_dataset(args.dataset, args.data_dir, holdout=args.holdout, train_n=args.train_n)
    cfg = ScoreTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, width=args.width,
                           label_dropout=args.label_dropout, ema=args.ema, seed=args.seed, t_min=args.t_min,
                           t_max=args.t_max, reference=args.reference, sigmas=args.sigmas or [],
                           minutes=args.minutes, holdout=args.holdout, train_n=args.train_n)
    return train_score_model(data, Path(args.out), cfg, resolve_device(args.device), progress=not args.quiet)


def build_store_command(args: argparse.Namespace) -> Path:
    cfg = load_config(None, [f"data.name={args.dataset}", f"data.data_dir={args.data_dir}", f"pag.source={args.source}",
                             f"device={args.device}"] + args.set)
    data = load_dataset(args.dataset, args.data_dir)
    device = resolve_device(cfg.device)
    source = build_source(args.source, cfg.pag, data).to(device)
    return build_store(Path(args.out), data, source, source_spec(args.source, cfg.pag), tuple(args.splits),
                       args.batch_size, args.shard_mb, device, progress=not args.quiet)


def compare_command(args: argparse.Namespace) -> Path:
    comp = comparison_data(args.dataset, args.data_dir, args.holdout, args.split, args.n, Path(args.score_model))
    return compare_targets(comp, Path(args.score_model), args.sigma, Path(args.out), progress=not args.quiet)
