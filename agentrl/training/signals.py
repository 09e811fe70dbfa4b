"""Preemption: SIGTERM (what a cluster sends before it kills a job) and SIGINT (Ctrl-C) stop a run cleanly.

The first signal only sets a flag. ``fit`` checks it between env steps (one
process: the update being collected is abandoned and its data state restored)
or between updates (several processes, where every rank must agree, so the
flag is all-reduced once per update), writes a checkpoint of the last
completed update, says which one to resume from, and exits 128 + the signal
number (143 for SIGTERM, 130 for SIGINT). A second signal ends the process at
once; the checkpoint on disk is then the previous one.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(RuntimeError):
    """The run stopped on a signal after checkpointing; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, checkpoint: Path | None, update: int) -> None:
        self.signum, self.checkpoint, self.update = signum, checkpoint, update
        self.exit_code = 128 + signum
        where = (f"checkpoint {checkpoint} holds update {update}; continue with trainer.resume={checkpoint}"
                 if checkpoint else "no update had completed, nothing to resume")
        super().__init__(f"{signal.Signals(signum).name} received: {where}")


class StopSignals:
    """Context manager: while open, SIGTERM and SIGINT set :attr:`received` instead of killing the process."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # the second one: stop now, the previous checkpoint stays
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum

    def local(self) -> bool:
        """Whether this process was asked to stop (checked between env steps of a single-process run)."""
        return self.received is not None

    def agreed(self, fabric: Any) -> int | None:
        """The signal any rank received, the same answer on every rank (one all-reduce when several)."""
        if fabric.world_size == 1:
            return self.received
        got = fabric.all_reduce(torch.tensor(float(self.received or 0)), reduce_op="max")
        return int(got) or None
