"""The commands' console, on stderr: rich's own on a terminal; on a file or pipe (a log) lines are never cut or
wrapped at 80 columns, so tables, log lines and the progress line come out whole."""

from __future__ import annotations

import math
import re
import sys
from typing import Any

from rich.console import Console

LOG_WIDTH = 10_000
"""Columns of a console that writes to a file or pipe: wide enough that no line is cut or wrapped."""


class _Unpadded:
    """``sys.stderr`` (looked up at each write) without the trailing spaces rich pads its lines with."""

    _PADDING = re.compile(r" +(?=\n)")

    def write(self, text: str) -> int:
        return sys.stderr.write(self._PADDING.sub("", text))

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # rich draws ASCII boxes for an ASCII stream
        return getattr(sys.stderr, "encoding", None) or "utf-8"


def make_console(**kwargs: Any) -> Console:
    """The console of the commands, on stderr. On a terminal it is rich's own; on a file or pipe (a log) lines
    are never cut or wrapped at 80 columns: tables, log lines and the progress line come out whole."""
    console = Console(stderr=True, **kwargs)
    if console.is_terminal:
        return console
    return Console(file=_Unpadded(), width=LOG_WIDTH, log_path=False, **kwargs)  # type: ignore[arg-type]


def percent(x: float) -> str:
    """``x`` (a share, 0..1) as "12.3%" in tables and log lines; "-" for NaN (nothing measured)."""
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def number(x: float, digits: int = 2) -> str:
    """``x`` with ``digits`` decimals in tables and log lines; "-" for NaN (nothing measured)."""
    return "-" if math.isnan(x) else f"{x:.{digits}f}"
