"""What long work prints: progress bars on a terminal, one plain line per unit of work in a log file.

A bar's carriage-return redraws turn a log file into megabytes of noise, so bars draw only when stderr is a
terminal; `line` messages (one per epoch, attack component or long step) go out either way. Both are silent
when the caller passes `enabled=False` (the CLI's --quiet).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def interactive() -> bool:
    """True when stderr is a terminal a person watches."""
    return sys.stderr.isatty()


def bar(iterable: Iterable[T] | None = None, *, enabled: bool = True, **tqdm_kwargs) -> tqdm:
    """A tqdm bar that draws only on a terminal (and only when enabled); updating a silent bar is free."""
    return tqdm(iterable, disable=not (enabled and interactive()), file=sys.stderr, **tqdm_kwargs)


def line(message: str, enabled: bool = True) -> None:
    """One plain line on stderr, printed above any live bar."""
    if enabled:
        tqdm.write(message, file=sys.stderr)


def lines(iterable: Iterable[T], every: int, message: str, enabled: bool = True) -> Iterator[T]:
    """Yield from `iterable`; off a terminal, print `message.format(done=i, total=...)` every `every` items."""
    items = list(iterable)
    for i, item in enumerate(items, 1):
        yield item
        if enabled and not interactive() and (i % every == 0 or i == len(items)):
            line(message.format(done=i, total=len(items)))
