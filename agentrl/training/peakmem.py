"""Peak memory of one process over a phase (a rollout, an update), for ``perf/peak_mem_*_gb``.

On a GPU it is what the caching allocator handed out (``torch.cuda.max_memory_allocated``:
weights, gradients, optimizer state, activations, KV cache); the card must also fit the
allocator's cached blocks and the communication buffers, so leave it a margin. On a CPU
it is the process's peak resident set (Linux ``VmHWM``, reset per phase through
``/proc/self/clear_refs``): everything the process holds, the Python
interpreter and the torch libraries included (~0.5 GB), which is what a machine's RAM must
fit; memory freed before the phase is first handed back to the OS (glibc ``malloc_trim``),
so a phase's peak is what it holds, not what an earlier phase left in the allocator.
Without ``/proc`` (not Linux) it is ``ru_maxrss``, the peak since the process started.
"""

from __future__ import annotations

import ctypes
import resource
import sys
import warnings
from pathlib import Path

import torch

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (macOS, musl)
        return None


_LIBC = _glibc()


class PeakMemory:
    """``reset()`` before a phase, ``gb()`` after it: the most this process held in between, in GiB."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.warned = False

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        if _LIBC is not None:  # hand memory freed earlier back to the OS first, or it stays in this phase's RSS
            _LIBC.malloc_trim(0)
        try:
            _CLEAR.write_text("5")  # 5: reset the peak resident set size to the current one
        except OSError as e:
            if not self.warned:
                warnings.warn(f"peak memory: cannot reset the resident-set peak ({e}); perf/peak_mem_*_gb are "
                              f"the peak since the process started", stacklevel=2)
                self.warned = True

    def gb(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        try:
            line = next(x for x in _STATUS.read_text().splitlines() if x.startswith("VmHWM:"))
        except (OSError, StopIteration):
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak / (2**30 if sys.platform == "darwin" else 2**20)  # bytes on macOS, KiB elsewhere
        return int(line.split()[1]) / 2**20  # kB
