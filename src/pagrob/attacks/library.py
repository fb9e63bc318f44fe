"""AutoAttack's components from torchattacks behind our interface, `attack(x, y) -> x_adv`.

AutoAttack (Croce & Hein, ICML 2020) runs APGD-CE, APGD-T (targeted DLR loss), FAB-T (minimum-norm,
targeted) and Square (black-box, score-based) one after the other. We take the implementations from
torchattacks rather than rewrite them, and set the budgets of the reference code's "standard" version
(100 iterations, 9 target classes, 5,000 Square queries): torchattacks' own `AutoAttack` class runs
only 10 iterations, which is not the standard.

torchattacks assumes (N, C, H, W) images in [0, 1]. `UnitBoxModel` maps any input onto that box with
one affine change of variables x = low + scale * u. The scale is shared by all coordinates, so L2
and L-inf distances only shrink by `scale` (eps becomes eps / scale) and the attack is unchanged. For
unbounded inputs (toy2d points) the box is chosen to hold every eps-ball of the batch, so its walls
never bind. Vectors (N, D) are shown to the library as (N, D, 5, 5) images, each coordinate copied over
a 5x5 tile and read back as the tile's mean: Square's L2 search needs images at least 5 pixels high.
Averaging 25 pixels shrinks L2 changes by 5 and L-inf changes not at all, so the radius is scaled to
match and the attack on the tiles is the attack on the points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr")
MIN_CLASSES = {"apgd-t": 4, "apgd-dlr": 3}  # DLR losses read the 3rd (and 4th) largest logit


@dataclass(frozen=True)
class Version:
    """One AutoAttack recipe: which components, in which order, with which budget."""

    components: tuple[str, ...]
    steps: int  # APGD and FAB iterations
    targets: int  # target classes tried by APGD-T and FAB-T (at most classes - 1)
    queries: int  # Square's query budget per image
    eot: int = 1  # gradient samples averaged per APGD step (expectation over transformation)
    shares: str | None = None  # a version whose outcome files serve this one's components run at the same budget
    guard_images: int = 0  # Square as the black-box guard: on the first this many evaluated images only (0: all)


VERSIONS = {
    # The reference code's "standard": what RobustBench reports.
    "standard": Version(("apgd-ce", "apgd-t", "fab-t", "square"), steps=100, targets=9, queries=5000),
    # For randomised defences: APGD with CE and DLR losses, each step averaging 20 gradients.
    "rand": Version(("apgd-ce", "apgd-dlr"), steps=100, targets=9, queries=5000, eot=20),
    # Same components on a smaller budget, for quick looks; not comparable with published numbers.
    "custom-fast": Version(("apgd-ce", "apgd-t", "fab-t", "square"), steps=20, targets=3, queries=1000),
    # custom-fast's gradient attacks alone, for studies of many runs on a CPU (FAB-T rarely fools an image they
    # leave); Square still runs, as the black-box guard, on what they leave standing among the first 500 images, at
    # 300 queries (on a CPU 1,000 queries cost 0.7 s per standing CIFAR image with a width-16 ResNet-18; masking
    # shows on many images, so half of 1,000 still shows it, and Square was a fifth of the minutes study's time).
    "apgd-fast": Version(("apgd-ce", "apgd-t"), steps=20, targets=3, queries=300, shares="custom-fast",
                         guard_images=500),
}
BUDGET_FIELDS = {"apgd-ce": ("steps", "eot"), "apgd-dlr": ("steps", "eot"), "apgd-t": ("steps", "targets", "eot"),
                 "fab-t": ("steps", "targets"), "square": ("queries",)}  # what sets each component's strength


def get_version(name: str) -> Version:
    if name not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version '{name}': use {', '.join(VERSIONS)}")
    return VERSIONS[name]


def budget_label(version: str, component: str) -> str:
    """The name a component's outcomes are stored under: the version it `shares` with when the component's budget
    is the same there (apgd-fast's APGD-CE is custom-fast's), else the version itself."""
    v = get_version(version)
    fields = BUDGET_FIELDS[component]
    if v.shares and all(getattr(v, f) == getattr(get_version(v.shares), f) for f in fields):
        return v.shares
    return version


def components_for(version: str, num_classes: int) -> tuple[list[str], list[str]]:
    """(components to run, reasons for the ones skipped) of a version for a problem with `num_classes`."""
    run, skipped = [], []
    for name in get_version(version).components:
        need = MIN_CLASSES.get(name, 2)
        if num_classes < need:
            skipped.append(f"{name} needs at least {need} classes, the data has {num_classes}")
        else:
            run.append(name)
    return run, skipped


@dataclass(frozen=True)
class Box:
    """x = low + scale * u: the unit box [0, 1]^d that torchattacks works in, placed over the inputs."""

    low: Tensor  # broadcasts against one input
    scale: float

    def to_unit(self, x: Tensor) -> Tensor:
        return (x - self.low) / self.scale


def unit_box(x: Tensor, eps: float, bounds: tuple[float, float] | None) -> Box:
    """The valid range when there is one; otherwise a box holding every eps-ball around the batch."""
    if bounds is not None:
        lo, hi = bounds
        return Box(torch.tensor(lo, dtype=x.dtype, device=x.device), float(hi - lo))
    low = x.amin(0) - eps  # an L2 or L-inf ball moves no coordinate by more than eps
    high = x.amax(0) + eps
    return Box(low, float((high - low).max()))


TILE = 5  # vectors become TILE x TILE images per coordinate


def as_images(u: Tensor) -> Tensor:
    """torchattacks indexes (N, C, H, W): vectors (N, D) become (N, D, TILE, TILE) tiles of copies."""
    if u.dim() == 4:
        return u
    if u.dim() == 2:
        return u[:, :, None, None].expand(-1, -1, TILE, TILE).contiguous()
    raise ValueError(f"library attacks take images (N, C, H, W) or vectors (N, D), got shape {tuple(u.shape)}")


def from_images(u: Tensor, input_shape: tuple[int, ...]) -> Tensor:
    """Inverse of `as_images` (a tile reads as its mean)."""
    return u.mean((2, 3)) if len(input_shape) == 1 else u


def unit_eps(eps: float, norm: str, box: Box, input_shape: tuple[int, ...]) -> float:
    """The radius in the library's coordinates: eps / scale, times 5 for L2 on tiled vectors."""
    return eps / box.scale * (TILE if norm == "l2" and len(input_shape) == 1 else 1)


class UnitBoxModel(nn.Module):
    """The model seen from the unit box, optionally reporting each forward pass (for progress bars)."""

    def __init__(self, model: nn.Module, box: Box, input_shape: tuple[int, ...],
                 on_forward: Callable[[int], None] | None = None):
        super().__init__()
        self.model, self.box, self.input_shape, self.on_forward = model, box, input_shape, on_forward

    def forward(self, u: Tensor) -> Tensor:
        if self.on_forward is not None:
            self.on_forward(len(u))
        return self.model(self.box.low + self.box.scale * from_images(u, self.input_shape))


class LibraryAttack:
    """One AutoAttack component (`apgd-ce`, `apgd-t`, `fab-t`, `square`, `apgd-dlr`) at the budget of `version`.

    Images that it cannot fool come back unchanged; the others come back inside the eps-ball and the
    valid range. Seeded, and the global random state is left as it was.
    """

    def __init__(self, model: nn.Module, name: str, norm: str, eps: float, num_classes: int,
                 bounds: tuple[float, float] | None = (0.0, 1.0), version: str = "standard", seed: int = 0,
                 on_forward: Callable[[int], None] | None = None):
        if name not in COMPONENTS:
            raise ValueError(f"unknown library attack '{name}': use {', '.join(COMPONENTS)}")
        if norm not in ("l2", "linf"):
            raise ValueError(f"norm must be l2 or linf, got '{norm}'")
        if num_classes < MIN_CLASSES.get(name, 2):
            raise ValueError(f"{name} needs at least {MIN_CLASSES[name]} classes, the data has {num_classes}: "
                             "use apgd-ce, fab-t or square")
        self.model, self.name, self.norm, self.eps = model, name, norm, eps
        self.num_classes, self.bounds, self.budget, self.seed = num_classes, bounds, get_version(version), seed
        self.on_forward = on_forward

    def _build(self, model: nn.Module, eps: float):
        import torchattacks

        b, norm = self.budget, {"l2": "L2", "linf": "Linf"}[self.norm]
        # torchattacks derives the number of targets from n_classes (targets = n_classes - 1).
        n_classes = min(self.num_classes, b.targets + 1)
        if self.name in ("apgd-ce", "apgd-dlr"):
            return torchattacks.APGD(model, norm=norm, eps=eps, steps=b.steps, n_restarts=1, seed=self.seed,
                                     loss=self.name[5:], eot_iter=b.eot)
        if self.name == "apgd-t":
            return torchattacks.APGDT(model, norm=norm, eps=eps, steps=b.steps, n_restarts=1, seed=self.seed,
                                      eot_iter=b.eot, n_classes=n_classes)
        if self.name == "fab-t":
            return torchattacks.FAB(model, norm=norm, eps=eps, steps=b.steps, n_restarts=1, seed=self.seed,
                                    multi_targeted=True, n_classes=n_classes)
        return torchattacks.Square(model, norm=norm, eps=eps, n_queries=b.queries, n_restarts=1, seed=self.seed)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        if self.eps == 0 or len(x) == 0:
            return x.clone()
        shape = tuple(x.shape[1:])
        box = unit_box(x, self.eps, self.bounds)
        u = as_images(box.to_unit(x)).detach()
        # torchattacks puts the model in eval mode to attack and afterwards back in the mode the wrapper it was
        # given had; a new nn.Module is in training mode, which would leave batch norm updating its running
        # statistics (and predicting from batch statistics) after every attack. The wrapper takes the model's mode.
        wrapped = UnitBoxModel(self.model, box, shape, self.on_forward).train(self.model.training)
        attack = self._build(wrapped, unit_eps(self.eps, self.norm, box, shape))
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            u_adv = attack(u, y)
        # Adding the scaled change to x (not mapping u_adv back) keeps untouched images bit-identical.
        return (x + box.scale * from_images(u_adv.to(x.dtype) - u, shape)).detach()
