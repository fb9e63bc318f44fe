"""pagrob: train classifiers with perceptually aligned gradients (PAG) and measure their robustness honestly."""

from pagrob.runs import Run, load_run

__version__ = "0.1.0"
__all__ = ["Run", "load_run", "__version__"]
