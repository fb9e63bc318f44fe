"""pagrob: train classifiers with perceptually aligned gradients (PAG) and measure their robustness honestly."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Run", "load_run", "__version__"]

if TYPE_CHECKING:
    from pagrob.runs import Run, load_run


def __getattr__(name: str):
    """`pagrob.Run` and `pagrob.load_run` load torch on first use only, so `pagrob --help` stays fast."""
    if name in ("Run", "load_run"):
        from pagrob import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'pagrob' has no attribute {name!r}")
