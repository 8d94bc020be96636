"""What every `nas-*` command does with a user mistake: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_or_exit(prog: str, stage: Callable[[], T], errors: tuple[type[Exception], ...] = (ValueError,)) -> T:
    """`stage()`, or `prog: error: <message>` on stderr and exit status 2 when it raises one of `errors`."""
    try:
        return stage()
    except errors as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
