"""Rollouts and PPO with the score action head: the action is sampled from the candidate distribution, the
number of candidates changes from step to step, and the update's first ratio is 1 (sampling is scoring)."""

from pathlib import Path

import pytest
import torch
from lightning.fabric import seed_everything

from agentrl.algorithms import ppo
from agentrl.algorithms.advantage import GAE
from agentrl.commands.fit import fit
from agentrl.config import load_config
from agentrl.envs.base import EnvObs
from agentrl.envs.gym_cards import NumberLineModule
from agentrl.training.build import build

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["env.num_envs=4", "rollout.steps_per_update=16", "ppo.minibatch_size=8", "ppo.micro_batch_size=4",
         "rollout.max_new_tokens=24", "trainer.num_threads=1", "trainer.image_log_every=0"]
SCORE = ["policy.action_head=score", "prompt.cot=false"]
EXTRA = ["wait here", "stay where you are for now", "look at the number line"]


class ChangingActions(NumberLineModule):
    """NumberLine whose legal list grows and shrinks: "-", "+" and 0-3 extra phrases that act as "-"."""

    def _with_extras(self, obs: list[EnvObs]) -> list[EnvObs]:
        self.t += 1
        for i, o in enumerate(obs):
            o.legal_actions = ["-", "+", *EXTRA[: (self.t + i) % 4]]
        return obs

    def reset(self, seed):
        self.t = 0
        return self._with_extras(super().reset(seed))

    def step(self, actions):
        out = super().step(["-" if a in EXTRA else a for a in actions])
        out.obs = self._with_extras(out.obs)
        return out


def test_a_legal_list_that_changes_size_between_steps(tiny_path):
    cfg = load_config(ROOT / "conf/numberline.yaml", [*SMALL, *SCORE])
    seed_everything(0)
    policy, data = build(cfg)
    data.envs.close()
    envs = ChangingActions(cfg.env)
    data.connect(policy, envs, data.template, data.parser)
    data._obs = data._prompts = None  # build() had started the old envs: start these
    legal = []
    real_step = envs.step

    def spy(actions):
        legal.append([list(o.legal_actions) for o in data._obs])
        for a, o in zip(actions, data._obs):
            assert a in o.legal_actions
        return real_step(actions)

    envs.step = spy
    rollout = data.collect()
    sizes = [len(c.ids) for c in rollout.candidates]
    assert sizes == [len(actions) for step in legal for actions in step]
    assert len(set(sizes)) == 4  # 2 to 5 candidates
    assert rollout.parse_failures == 0
    for c, text in zip(rollout.candidates, rollout.texts):  # the chosen candidate is the answer kept
        assert 0 <= c.chosen < len(c.ids) and data.parser.parse(text, c.actions).action == c.actions[c.chosen]
    # old log-probs are the log-softmax over each step's candidates: every distribution sums to 1
    with torch.no_grad():
        logp, _ = policy.score_candidates(rollout.prompts, rollout.candidates)
    assert all(abs(float(x.exp().sum()) - 1) < 1e-5 for x in logp)
    torch.testing.assert_close(rollout.logp, torch.stack([x[c.chosen] for x, c in zip(logp, rollout.candidates)]),
                               rtol=0, atol=1e-5)
    adv, ret = GAE(0.9, 0.95)(rollout)
    rollout.advantages, rollout.returns = ppo.whiten(adv, adv.mean(), adv.var(unbiased=False)), ret
    micro = next(data.loader(rollout).minibatch(torch.arange(8)).micro_batches())
    policy.train()
    terms = policy.training_step(micro)
    terms.total.backward()
    torch.testing.assert_close(terms.ratio, torch.ones(4), rtol=0, atol=1e-5)
    envs.close()


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_first_minibatch_ratio_is_one_with_the_score_head(tmp_path, tiny_path, precision):
    bf16 = ["model.dtype=bfloat16"] if precision == "bf16-mixed" else []
    result = fit(load_config(ROOT / "conf/numberline.yaml", [
        *SMALL, *SCORE, *bf16, f"trainer.precision={precision}", "trainer.max_updates=1",
        f"trainer.out_dir={tmp_path}"]))
    assert result.metrics["losses/start_ratio_error"] < 1e-6
    assert result.metrics["parse/failure_rate"] == 0.0
