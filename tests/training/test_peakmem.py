"""perf/peak_mem_*_gb on a CPU: the peak resident set of a phase, reset between phases."""

import torch

from agentrl.training.peakmem import PeakMemory


def test_a_phase_sees_its_own_peak_and_the_next_phase_starts_from_the_current_size():
    peak = PeakMemory(torch.device("cpu"))
    peak.reset()
    base = peak.gb()
    big = torch.ones(512 * 2**20 // 4)  # 512 MiB, every page written
    del big
    held = peak.gb()
    assert held - base > 0.45, (base, held)  # freed, but it was held during the phase
    peak.reset()
    assert peak.gb() < held - 0.4  # a new phase: the freed 512 MiB are not in its peak
