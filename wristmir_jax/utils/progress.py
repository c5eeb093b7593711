"""Progress bars (rich) that degrade to nothing when output is not a terminal or in tests."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def enabled() -> bool:
    if os.environ.get("WRISTMIR_NO_PROGRESS"):
        return False
    return sys.stderr.isatty()


def track(it: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    """Wraps an iterable with a progress bar on stderr (only when stderr is a terminal)."""
    if not enabled():
        yield from it
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), transient=False) as p:
        task = p.add_task(desc, total=total)
        for x in it:
            yield x
            p.advance(task)
