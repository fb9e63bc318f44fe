"""The score models and SBG store the demo's PAG-SBG runs use, made once under the demo's folder and reused.

Both steps resume or return at once when their output is complete, so a second `pagrob demo` costs nothing here.
Sizes are set for the demo's CPU budget: measured on this 2-core CPU, about 30 s (toy2d) + 70 s (digits score model)
+ 4 s (digits store) of one core.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pagrob.config import PagConfig
from pagrob.data import load_dataset
from pagrob.diffusion.models import load_score_model
from pagrob.diffusion.train import ScoreTrainConfig, small_model_threads, train_score_model
from pagrob.targets import source_spec
from pagrob.targets.score_based import ScoreBased
from pagrob.targets.store import build_store

TOY_T = 199  # noise level 20 (see benchmarks/sbg_toy.py for why not 5)
DIGITS_T = 300  # DDPM timestep: noise std 0.62 in pixel units; targets that move a digit into class t
TOY_SCORE = ScoreTrainConfig(steps=2000, batch_size=512, width=128, label_dropout=0.4, t_min=TOY_T, t_max=TOY_T,
                             reference=1024)
DIGITS_SCORE = ScoreTrainConfig(steps=800, batch_size=128, width=16, t_min=200, t_max=400)

# Overrides of the demo runs, with {assets} for the folder `prepare` fills.
TOY_SBG = ["pag.source=sbg", "pag.score_model={assets}/score-toy2d", f"pag.sbg_t={TOY_T}", "pag.sbg_draws=0"]
DIGITS_SBG = ["pag.source=store:{assets}/sbg-digits"]


def prepare(assets: Path, dataset: str, device: torch.device | str = "cpu", progress: bool = True) -> None:
    """Train the score model of `dataset` (toy2d or digits) and, for digits, build its SBG store (draws = 0)."""
    data = load_dataset(dataset)
    if dataset == "toy2d":
        train_score_model(data, assets / "score-toy2d", TOY_SCORE, device, progress)
        return
    folder = train_score_model(data, assets / "score-digits", DIGITS_SCORE, device, progress)
    pag = PagConfig(source="sbg", score_model=str(folder), sbg_t=DIGITS_T, sbg_draws=0)
    model = load_score_model(folder)
    with small_model_threads(model, device):
        build_store(assets / "sbg-digits", data, ScoreBased(model, DIGITS_T, draws=0).to(device),
                    source_spec("sbg", pag), device=device, progress=progress)
