"""Run by tests/training/test_sharding.py as `python checkpoint_failure.py OUT`; Fabric relaunches it for rank 1.

A sharded checkpoint's folder is made by rank 0 and broadcast; here rank 0 cannot make it (the disk is full).
Each rank writes the error it ended with to OUT/rank<r>.json: every rank must stop with rank 0's reason,
not wait in the broadcast until trainer.collective_timeout_s.
"""

import errno
import json
import os
import sys
from collections import deque
from pathlib import Path
from types import SimpleNamespace

from lightning.fabric import Fabric

from agentrl.config import load_config
from agentrl.training import resume
from agentrl.training.distributed import make_strategy


def full_disk(ckpt_dir: Path) -> Path:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(ckpt_dir.parent))


def main(out: Path) -> None:
    cfg = load_config(None, ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
                             "trainer.collective_timeout_s=60"])
    fabric = Fabric(accelerator="cpu", devices=2, strategy=make_strategy(cfg.trainer))
    fabric.launch()
    if fabric.global_rank == 0:
        resume.begin_checkpoint = full_disk
    learner = SimpleNamespace(sharded=True, cfg=SimpleNamespace(trainer=SimpleNamespace(checkpoint_format="sharded")))
    try:
        resume.save_update(fabric, out / "checkpoints" / "update_000001", policy=None, learner=learner,
                           data=SimpleNamespace(state_dict=dict, shuffle=SimpleNamespace(get_state=dict)), run=resume.RunState(window=deque()),
                           config_yaml="", meta={})
        seen = {"type": None, "message": "saved"}
    except Exception as e:
        seen = {"type": type(e).__name__, "message": str(e)}
    (out / f"rank{fabric.global_rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
