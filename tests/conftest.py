"""Test-wide settings: one torch thread (two threads on a busy 2-core box run ~100x slower)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_path():
    """The tiny offline VLM, built once into the cache."""
    from agentrl.policy.tiny.build import tiny_model_path

    return tiny_model_path()
