"""Recipe search: short SFT on NumberLine, then greedy readout of the digits on held-out (eval-split) states.

python experiments/tiny_vision/readout.py [--spec key=value ...] [config overrides ...]
e.g. python experiments/tiny_vision/readout.py --spec patch_size=56 sft.examples=1024 sft.epochs=3
Prints SFT time and the share of held-out states whose current number, target number and action
the greedy answer gets right (chance ~1/6 per number, 1/2 for the action).
"""

import json
import sys
import tempfile
import time

import torch

torch.set_num_threads(1)

from agentrl.commands import sft as S  # noqa: E402
from agentrl.config import load_config  # noqa: E402
from agentrl.data.sft import expert_examples  # noqa: E402
from agentrl.policy.tiny.build import build_tiny_vlm, default_corpus  # noqa: E402
from agentrl.policy.tiny.spec import TinySpec  # noqa: E402


def readout(policy, examples, batch=20):
    """Share of examples whose greedy answer has the right current number, target number, action."""
    hits = {"current number": 0, "target number": 0, "action": 0}
    results = S.answers(policy, examples, batch=batch)
    for want, got, _ in results:
        for k in hits:
            hits[k] += bool(got) and got.get(k) == want.get(k)
    return {k: v / len(examples) for k, v in hits.items()}, results[-1][2]


if __name__ == "__main__":
    args = sys.argv[1:]
    spec_kw = {}
    while args and args[0] == "--spec":
        k, v = args[1].split("=")
        spec_kw[k] = float(v) if "." in v else int(v)
        args = args[2:]
    if spec_kw:
        path = tempfile.mkdtemp(prefix="tinyspec-")
        build_tiny_vlm(path, default_corpus(), spec=TinySpec(**spec_kw))
        args.append(f"model.path={path}")
    cfg = load_config("conf/sft/numberline.yaml", args)
    torch.manual_seed(cfg.seed)
    policy = S.build_policy(cfg)
    t = time.time()
    examples = S.load_examples(cfg)
    data = S.encode(policy, examples)
    warmup = S.encode(policy, [S.perception(e) for e in examples]) if cfg.sft.perception_epochs else None
    metrics = S.train(policy, data, cfg, warmup=warmup)
    held_out = expert_examples(cfg, 60, split="eval", seed=1)
    policy.decoder.max_new_tokens = 48
    acc, last = readout(policy, held_out)
    print(json.dumps({"spec": spec_kw, "args": args, "total_s": round(time.time() - t, 1),
                      "train": {k: round(v, 4) for k, v in metrics.items()}, "readout": acc}), flush=True)
    print("last answer:", last, flush=True)
