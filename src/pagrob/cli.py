"""The `pagrob` command: demo | train | targets | evaluate | visualize | report | sweep | study | import-checkpoint."""

# Each verb imports its library module (and so torch) when it runs, not before: `pagrob --help` stays fast.
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pagrob.errors import USER_ERRORS, ConfigError, RunError

if TYPE_CHECKING:
    from pagrob.config import Config


class _Registry:
    """An option's choices read from a registry when argparse first needs them (to parse or to print this
    option's help), so building the parser imports no torch. Give the option a metavar: argparse would
    otherwise list the choices while building the parser."""

    def __init__(self, module: str, name: str, accepts: str | None = None):
        self.module, self.name, self.accepts = module, name, accepts  # attributes of `module`

    def _names(self) -> list[str]:
        names = getattr(importlib.import_module(self.module), self.name)
        return list(names() if callable(names) else names)

    def __contains__(self, value: object) -> bool:
        if self.accepts is not None:  # a test of its own (datasets: `npz:PATH` matches any path)
            return bool(getattr(importlib.import_module(self.module), self.accepts)(value))
        return value in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


def cmd_demo(args: argparse.Namespace) -> None:
    from pagrob.demo import run_demo

    report = run_demo(Path(args.out), progress=not args.quiet, only=args.only)
    print(f"report: {report}")


def _train_config(args: argparse.Namespace) -> Config:
    """The config to train with; `--resume` alone reads the run's own config.yaml. With `--init RUN_DIR` the model
    and data keys the config leaves out are RUN_DIR's, and training starts from its weights."""
    from pagrob.config import load_config
    from pagrob.runs import inherited_settings

    if args.resume and args.config is None and not args.set and not args.init:
        saved = Path(args.out) / "config.yaml"
        if not saved.is_file():
            raise RunError(f"nothing to resume in {args.out}: it has no config.yaml (start the run without "
                           "--resume, or repeat its --config/--set)")
        return load_config(saved)
    if args.init:
        return load_config(args.config, args.set + [f"init={args.init}"], start=inherited_settings(args.init))
    return load_config(args.config, args.set)


def _launch_train(args: argparse.Namespace, cfg: Config) -> None:
    """`train --nproc N`: check what can be checked here, then run N DDP processes of the same command."""
    import torch

    from pagrob.distributed import launch
    from pagrob.devices import resolve_device

    if "WORLD_SIZE" in os.environ:
        raise ConfigError("--nproc starts the processes itself; under torchrun leave it out")
    device = resolve_device(cfg.device)
    if device.type == "cuda" and args.nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc {args.nproc} needs {args.nproc} GPUs, PyTorch sees {torch.cuda.device_count()}")
    argv = ["--quiet"] if args.quiet else []
    argv += ["train", "--out", args.out] + (["--config", args.config] if args.config else [])
    argv += [a for item in args.set for a in ("--set", item)] + (["--resume"] if args.resume else [])
    argv += ["--init", args.init] if args.init else []
    launch(args.nproc, argv)


def cmd_train(args: argparse.Namespace) -> None:
    from pagrob.config import Config
    from pagrob.pipeline import train_and_evaluate

    if args.dry_run:
        from pagrob.dryrun import dry_run, format_dry_run

        print(format_dry_run(dry_run(_train_config(args), batch=args.dry_run_batch)))
        return
    if args.out is None:
        raise ConfigError("train needs --out RUN_DIR (or --dry-run to check the config without training)")
    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
    cfg = _train_config(args)
    if cfg.name == Config.name:  # not named by the config or --set: the run is called what its folder is
        cfg.name = Path(args.out).name
    if args.nproc is not None:
        _launch_train(args, cfg)
        return
    out = train_and_evaluate(cfg, Path(args.out), progress=not args.quiet, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(json.loads((out / "results.json").read_text()), indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from pagrob.devices import resolve_device
    from pagrob.evaluate import evaluate_run, summary_line
    from pagrob.runs import load_run

    if args.profile:
        _profile(args)
        return
    if args.threats or args.radii or args.reference:
        raise ConfigError("--threats, --radii and --reference belong to --profile")
    run = load_run(args.run_dir)
    device = resolve_device(args.device or run.config.device)
    try:
        entries = evaluate_run(run, args.attack, args.norm, args.eps, args.n, args.version or "standard",
                               args.alignment, device, progress=not args.quiet, survivors=args.survivors)
    except ValueError as err:  # an attack that does not fit the data (e.g. apgd-t on two classes)
        raise ConfigError(str(err)) from None
    for entry in entries:
        print(f"{run.config.name}: {summary_line(entry)}")
    for source, score in run.results.get("alignment_scores", {}).items():
        print(f"{run.config.name}: alignment with {source}: {score['cosine']:.3f} ({score['n_images']} images)")
    print(f"results: {run.path / 'results.json'}")


def _profile(args: argparse.Namespace) -> None:
    """`evaluate --profile`: every threat, the union; RUN/profile.json and one line per threat."""
    from pagrob.devices import resolve_device
    from pagrob.runs import load_run
    from pagrob.threats.profile import DEFAULT_VERSION, check_request, parse_radii, profile_run, summary_row

    if args.eps or args.attack != "autoattack" or args.survivors or args.norm != "l2" or args.alignment is not None:
        raise ConfigError("--profile attacks every norm over its own grid of radii: leave out --attack, --norm, --eps, "
                          "--survivors and --alignment (choose radii with --radii NORM=E1,E2,...)")
    radii = parse_radii(args.radii or [])
    reference = Path(args.reference) if args.reference else None
    check_request(args.threats, radii, reference)  # before any model is loaded
    run = load_run(args.run_dir)
    device = resolve_device(args.device or run.config.device)
    profile = profile_run(run, args.n, args.threats, radii, args.version or DEFAULT_VERSION, reference, device,
                          progress=not args.quiet)
    for name, value in summary_row(profile).items():
        print(f"{run.config.name}: {name} {'–' if value is None else f'{100 * value:.1f}%'}")
    print(f"profile: {run.path / 'profile.json'}")


def cmd_visualize(args: argparse.Namespace) -> None:
    from pagrob.visualize import make_figures

    for caption, path in make_figures([Path(d) for d in args.run_dirs], Path(args.out), args.images, args.eps):
        print(f"{caption}: {path}")


def cmd_report(args: argparse.Namespace) -> None:
    if args.robustbench_json:
        from pagrob.robustbench import TO_FILL, write_robustbench_json

        if len(args.run_dirs) != 1:
            raise ConfigError("--robustbench-json describes one run: give one RUN_DIR")
        path = write_robustbench_json(args.run_dirs[0], args.robustbench_json, args.threat_model)
        print(f"RobustBench model info: {path} (fill in {', '.join(TO_FILL)} before submitting)")
    elif args.out is None:
        raise ConfigError("report needs --out DIR (or --robustbench-json FILE)")
    if args.out is not None:
        from pagrob.report import write_report

        print(f"report: {write_report([Path(d) for d in args.run_dirs], Path(args.out))}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from pagrob.sweep import run_sweep

    path = run_sweep(args.config, args.set, args.grid, args.extra, Path(args.out), progress=not args.quiet,
                     align_source=args.align_source)
    print(f"sweep report: {path}")


def cmd_study(args: argparse.Namespace) -> None:
    from pagrob.study import dry_run_study, load_study, run_study, select_runs, steps_from

    study = load_study(args.preset, Path(args.out), args.data, args.set)
    if args.runs:
        study = select_runs(study, [n for item in args.runs for n in item.split(",") if n])
    if args.steps_from:
        study = steps_from(study, Path(args.steps_from))
    if args.dry_run:
        print(dry_run_study(study, Path(args.out)))
        return
    print(f"report: {run_study(study, Path(args.out), progress=not args.quiet)}")


def _model_args(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        args = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--model-args must be a JSON object, e.g. '{{\"num_classes\": 10}}': {err}") from None
    if not isinstance(args, dict):
        raise ConfigError(f"--model-args must be a JSON object of keyword arguments, got {text}")
    return args


def cmd_import_checkpoint(args: argparse.Namespace) -> None:
    from pagrob.checkpoint_import import import_checkpoint, import_model

    if args.model:
        if not args.dataset:
            raise ConfigError("import-checkpoint --model needs --dataset NAME (the data its clean accuracy is "
                              "measured on, e.g. cifar10 with --set data.data_dir=PATH)")
        sets = args.set + ([f"name={args.name}"] if args.name else [])
        out = import_model(args.file, args.model, args.out, args.dataset, _model_args(args.model_args),
                           args.normalize, sets)
        accuracy = json.loads((out / "results.json").read_text())["clean_accuracy"]
        print(f"clean accuracy {100 * accuracy:.2f}% on the test split")
    elif args.arch:
        out = import_checkpoint(args.file, args.arch, args.out, args.format, args.dataset, args.name)
    else:
        raise ConfigError("import-checkpoint needs --model PATH.py:FACTORY (your network) or --format pag-rob "
                          "--arch resnet18|vit (the PAG authors' checkpoints)")
    print(f"run folder: {out} (evaluate it with: pagrob evaluate {out})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagrob", description=__doc__)
    parser.add_argument("--quiet", action="store_true",
                        help="neither progress bars (drawn on a terminal) nor progress lines (written to a log)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train and evaluate the offline demo runs, write a report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--only", nargs="*", help="run only these demo runs (names from pagrob.demo.RUNS)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train (and evaluate) one run from a YAML config")
    p.add_argument("--config", help="YAML file; defaults are used where it is silent")
    p.add_argument("--out", help="run folder to write (not needed with --dry-run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config offline: build the model, run one step on a synthetic batch, print the plan")
    p.add_argument("--dry-run-batch", type=int, metavar="N",
                   help="images in the dry run's synthetic batch, the step is timed on it (default: the pixels "
                        "of two 32x32 images, at least 1)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest good checkpoint (alone: with its config.yaml)")
    p.add_argument("--init", metavar="RUN_DIR",
                   help="fine-tune: start from this run folder's weights (trained or imported); the model and data "
                        "keys the config leaves out are taken from it")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train on N processes with DDP (one per GPU, or gloo on CPU), N = 1 included; the same as "
                        "torchrun --nproc_per_node=N -m pagrob train ... (default: this process, no DDP)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="attack a trained run (AutoAttack by default), run the gradient-masking "
                                        "guards, score alignment; update its results.json")
    p.add_argument("run_dir")
    p.add_argument("--attack", choices=_Registry("pagrob.attacks.settings", "ATTACKS"), default="autoattack",
                   metavar="ATTACK", help="%(choices)s. autoattack: APGD-CE, APGD-T, FAB-T, Square in sequence "
                                          "(torchattacks); pgd: ours (100 steps, restarts, CE and margin losses)")
    p.add_argument("--norm", choices=_Registry("pagrob.attacks.checks", "NORMS"), default="l2", metavar="NORM",
                   help="%(choices)s")
    p.add_argument("--eps", type=float, nargs="+",
                   help="radii (default: RobustBench's L2 0.5, L-inf 8/255; toy2d: the run's eval.eps_*)")
    p.add_argument("--n", type=int, help="attack the first N test images (default: the run's eval.n; 0: all)")
    p.add_argument("--version", choices=_Registry("pagrob.attacks.library", "VERSIONS"), metavar="VERSION",
                   help="AutoAttack budget (default: standard; apgd-fast with --profile), one of %(choices)s: standard "
                        "(RobustBench's), rand (randomised defences), "
                        "custom-fast (20 iterations, 3 targets, 1000 Square queries; not comparable with published "
                        "numbers), apgd-fast (custom-fast's APGD-CE and APGD-T only; Square, 300 queries, runs as the "
                        "guard on the first 500 images)")
    p.add_argument("--survivors", action="store_true",
                   help="attack only the images no earlier attack on this run fooled at that radius (AutoAttack's "
                        "own chaining: the same worst case in a fraction of the time; the entry's accuracy is then "
                        "the whole chain's)")
    p.add_argument("--profile", action="store_true",
                   help="the whole robustness profile into RUN_DIR/profile.json: L1, L2 and L-inf curves over a grid "
                        "of radii (FMN, then the --version's APGD and our PGD at every radius on the images still "
                        "undecided, guarded at every point), 15 corruptions at 5 severities, rotations and "
                        "translations, and the union per image; resumes when run again (default --n: the run's "
                        "eval.n, or 1000)")
    p.add_argument("--threats", nargs="+", choices=_Registry("pagrob.threats.registry", "THREATS"), metavar="THREAT",
                   help="with --profile: only these, of %(choices)s (default: all that apply to the data)")
    p.add_argument("--radii", nargs="+", metavar="NORM=E1,E2",
                   help="with --profile: a norm's radii, e.g. l2=0.25,0.5,1 (default: multiples of the headline "
                        "radius L1 12, L2 0.5, L-inf 8/255 on CIFAR-sized images; the headline is always included)")
    p.add_argument("--reference", metavar="RUN_DIR",
                   help="with --profile: a profiled run whose corruption errors are the mCE's denominator")
    p.add_argument("--alignment", nargs="*", metavar="SOURCE",
                   help="target sources to score alignment against (default: the run's own and the dataset's "
                        "reference source)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the run's config, auto = GPU when there is one)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("visualize", help="pictures: targeted attacks toward every class (the paper's Figure 1), "
                                         "input-gradients, toy2d regions, accuracy vs eps")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.add_argument("--images", type=int, default=4, help="test images per picture (rows)")
    p.add_argument("--eps", type=float, help="radius of the targeted L2 attacks (default: 0.3 x the range's "
                                             "L2 diameter)")
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("report", help="write report.md and a self-contained report.html for one or more run folders")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", help="folder for report.md and report.html")
    p.add_argument("--robustbench-json", metavar="FILE",
                   help="write the run's AutoAttack (standard) result as RobustBench's model-info JSON")
    p.add_argument("--threat-model", choices=["L2", "Linf"],
                   help="with --robustbench-json, when the run has both: which one to write")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sweep", help="train a grid of runs from one config; report robustness vs alignment and compute")
    p.add_argument("--config", help="base YAML file; defaults are used where it is silent")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base config key")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values of one key; several --grid give their product")
    p.add_argument("--extra", action="append", nargs="+", default=[], metavar="NAME KEY=VALUE",
                   help="one more run beside the grid, e.g. --extra at adv.method=pgd pag.source=none")
    p.add_argument("--align-source", help="target source every run's alignment is scored against "
                                          "(default: the dataset's reference source)")
    p.add_argument("--out", required=True, help="folder for the runs and sweep.md")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("study", help="train every method on one shared budget, evaluate, draw and report "
                                      "(continues where it stopped when started again)")
    p.add_argument("dataset", choices=["cifar10"])
    p.add_argument("--out", required=True, help="study folder: runs/, stores/, report.md, report.html")
    p.add_argument("--data", metavar="PATH", help="CIFAR-10 as an npz file (x_train, y_train, x_test, y_test, uint8 "
                                                  "NHWC) or torchvision's folder (default: the preset's data.data_dir)")
    p.add_argument("--preset", default="cpu", help="cpu (default: sized for ~2 h on a 2-core CPU), cpu_profile (its "
                                                   "seven runs, each profiled on 1,000 test images), paper (the "
                                                   "paper's recipes, for a GPU), minutes (every objective at "
                                                   "equal minutes, from scratch and fine-tuned, ~90 min on a 2-core "
                                                   "CPU), minutes_tuning (its validation tuning), minutes_gpu (an "
                                                   "untuned draft for a GPU), or a preset YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key in every run")
    p.add_argument("--runs", nargs="+", metavar="NAME,NAME", help="train and report only these runs of the preset, "
                                                                 "with the runs (init) and stores they need")
    p.add_argument("--steps-from", metavar="DIR|FILE", help="repeat a study step for step: every run budgeted in "
                   "minutes trains the steps it planned in the study folder DIR, or those a steps file lists "
                   "(configs/study/cifar10_minutes_steps.json: the README table's)")
    p.add_argument("--dry-run", action="store_true",
                   help="check every run offline with one synthetic step; print files needed and estimated cost")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("import-checkpoint", help="turn a classifier's weights (your network, or a released "
                                                 "checkpoint) into a run folder that every verb accepts")
    p.add_argument("file", metavar="WEIGHTS", help=".safetensors, or a state dict (.pt, .pth, .ckpt) read with "
                                                    "weights_only=True")
    p.add_argument("--model", metavar="PATH.py:FACTORY|torchvision:NAME|timm:NAME",
                   help="your network: FACTORY(**model-args) from the Python file PATH.py returns the nn.Module; or "
                        "a torchvision or timm classifier by name (built without downloading weights)")
    p.add_argument("--model-args", metavar="JSON", help="keyword arguments of FACTORY, e.g. '{\"num_classes\": 10}'")
    p.add_argument("--normalize", metavar="MEAN/STD",
                   help="the per-channel normalisation the network expects, e.g. 0.4914,0.4822,0.4465/0.2470,0.2435,"
                        "0.2616 (default: none, the network sees pixels in [0, 1])")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config key as pagrob train takes it, e.g. data.data_dir=PATH")
    p.add_argument("--format", default="pag-rob", choices=["pag-rob"],
                   help="without --model: pag-rob, the PAG authors' CIFAR checkpoints (github.com/royg27/PAG-ROB)")
    p.add_argument("--arch", choices=["resnet18", "vit"], help="without --model: the PAG-ROB network")
    p.add_argument("--dataset", help="dataset the model was trained on (--model: required; pag-rob: default cifar10, "
                                     "or cifar100 for 100 classes)")
    p.add_argument("--name", help="run name (default: the --out folder's name)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.set_defaults(func=cmd_import_checkpoint)

    _add_targets_parser(sub)
    return parser


def cmd_train_score_model(args: argparse.Namespace) -> None:
    from pagrob.diffusion.commands import train_score_model_command

    print(f"score model: {train_score_model_command(args)}")


def cmd_build(args: argparse.Namespace) -> None:
    from pagrob.diffusion.commands import build_store_command

    print(f"target store: {build_store_command(args)}")


def cmd_compare(args: argparse.Namespace) -> None:
    from pagrob.diffusion.commands import compare_command

    print(f"comparison: {compare_command(args)}")


def _add_targets_parser(sub: argparse._SubParsersAction) -> None:
    """`pagrob targets train-score-model | build | compare`."""
    datasets = _Registry("pagrob.data", "dataset_choices", accepts="known_dataset")
    group = sub.add_parser("targets", help="score models and precomputed target stores")
    targets = group.add_subparsers(dest="targets_command", required=True)

    p = targets.add_parser("train-score-model", help="train a class-conditional score model (with a null label)")
    p.add_argument("--dataset", required=True, choices=datasets, metavar="DATASET", help="one of %(choices)s")
    p.add_argument("--data-dir", "--data", default="data", help="torchvision's folder, or the CIFAR-10 npz file")
    p.add_argument("--out", required=True, help="folder to write; rerunning continues from its checkpoint")
    p.add_argument("--holdout", type=int, default=0,
                   help="hold out N training images (data.holdout's seeded choice): never trained on")
    p.add_argument("--train-n", type=int, default=0, help="train on the first N of the rest only (data.train_n)")
    p.add_argument("--sigmas", type=float, nargs="+", metavar="SIGMA",
                   help="train our EDM UNet at these noise levels only (pixel units, as pag.sigma; SBG then takes "
                        "pag.sbg_sigma); default: the DDPM UNet over a timestep band")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="stop after this many minutes of training in all (resumed runs add up); 0: --steps only")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=0, help="0: 128 (toy MLP) or 32 (UNet's first level)")
    p.add_argument("--label-dropout", type=float, default=0.2, help="rate of null labels (unconditional score)")
    p.add_argument("--ema", type=float, default=0.999, help="decay of the weights' moving average that is saved")
    p.add_argument("--t-min", type=int, default=0, help="train on timesteps t-min..t-max only (SBG queries one)")
    p.add_argument("--t-max", type=int, default=-1, help="-1: the schedule's last timestep")
    p.add_argument("--reference", type=int, default=0,
                   help="stable (reduced-variance) targets over this many reference images per step; 0: plain DSM")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_train_score_model)

    p = targets.add_parser("build", help="precompute a source's targets for every image and class into a store")
    p.add_argument("--dataset", required=True, choices=datasets, metavar="DATASET", help="one of %(choices)s")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--source", required=True, choices=_Registry("pagrob.targets", "SOURCES"),
                   metavar="SOURCE", help="one of %(choices)s (pagrob.targets.SOURCES)")
    p.add_argument("--out", required=True, help="store folder; rerunning finishes an interrupted build")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="source settings, e.g. pag.score_model=DIR pag.sbg_t=200 pag.sbg_draws=4")
    p.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "test"])
    p.add_argument("--batch-size", type=int, default=64, help="images per source call")
    p.add_argument("--shard-mb", type=float, default=64, help="approximate size of one shard file")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_build)

    p = targets.add_parser("compare", help="a score model's SBG targets against the exact (smooth) ones and CM/NN, "
                                           "per class, on held-out images: JSON, Markdown table, panel PNG per sigma")
    p.add_argument("--dataset", required=True, choices=datasets, metavar="DATASET", help="one of %(choices)s")
    p.add_argument("--data-dir", "--data", default="data", help="torchvision's folder, or the CIFAR-10 npz file")
    p.add_argument("--holdout", type=int, default=0, help="the --holdout the score model was trained with")
    p.add_argument("--score-model", required=True, metavar="DIR", help="a folder of train-score-model --sigmas")
    p.add_argument("--sigma", type=float, nargs="+", required=True, help="noise levels it was trained at")
    p.add_argument("--n", type=int, default=500, help="images compared, the first N of the split")
    p.add_argument("--split", choices=["validation", "test"], default="validation",
                   help="validation: the held-out training images (default); test: the test split")
    p.add_argument("--out", required=True, help="folder for compare.json, compare.md, targets_sigma*.png")
    p.set_defaults(func=cmd_compare)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as err:
        print(f"pagrob: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
