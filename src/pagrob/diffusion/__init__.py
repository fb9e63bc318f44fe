"""Class-conditional score models for score-based PAG targets (SBG): training and loading.

`load_score_model(path)` opens one; `train_score_model(dataset, out)` trains one with a null label, so the
same network gives the conditional and the unconditional score.
"""

from pagrob.diffusion.models import ScoreModel, ScoreModelError, ToyScoreMLP, UNetScore, load_score_model
from pagrob.diffusion.train import ScoreTrainConfig, build_score_model, train_score_model

__all__ = ["ScoreModel", "ScoreModelError", "ToyScoreMLP", "UNetScore", "load_score_model", "ScoreTrainConfig",
           "build_score_model", "train_score_model"]
