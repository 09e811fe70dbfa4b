"""The rollout: the parser's span decides the weighted tokens; episode memory in the prompt."""

from pathlib import Path

import torch

from agentrl.config import load_config
from agentrl.decoding import Generation
from agentrl.envs.base import EnvObs
from agentrl.fit import build
from agentrl.parsing import action_span_start
from agentrl.prompts import AlfworldTemplate, GymCardsTemplate
from agentrl.rollout import EpisodeMemory
from agentrl.sft import expert_examples

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["env.num_envs=2", "rollout.steps_per_update=4", "ppo.minibatch_size=4", "ppo.micro_batch_size=2",
         "rollout.max_new_tokens=8", "trainer.num_threads=1", "policy.thought_coef=0.3"]


def test_weighted_action_tokens_are_those_of_the_executed_action(tiny_path):
    """The text mentions an action key before the JSON object the parser reads: only the object's key on is action."""
    policy, data = build(load_config(ROOT / "conf/numberline.yaml", SMALL))
    tok = policy.tokenizer
    text = 'I think "action": "-" is wrong. {"thoughts": "up", "action": "+"}'
    ids = torch.tensor(tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id])
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert action_span_start(decoded) < decoded.index("{")  # a plain search finds the prose key first

    def fake_generate(prompts, greedy=False, score=False):
        n = len(prompts)
        return Generation(ids=[ids] * n, texts=[decoded] * n, token_logp=[torch.zeros(len(ids))] * n,
                          values=torch.zeros(n))

    policy.generate = fake_generate
    rollout = data.collect()
    data.envs.close()
    for w in rollout.weights:
        first = int((w == 1.0).nonzero()[0])
        assert torch.all(w[:first] == 0.3) and torch.all(w[first:] == 1.0)
        thoughts, action = tok.decode(ids[:first]), tok.decode(ids[first:], skip_special_tokens=True)
        assert '"action": "-"' in thoughts and action.lstrip(' "').startswith('action": "+"')
    assert rollout.parse_failures == 0


def test_episode_memory_keeps_the_last_k_steps_and_forgets_at_episode_end():
    memory = EpisodeMemory(num_envs=2, keep=2)
    obs = [EnvObs(image=None, text=f"s{k}", legal_actions=["a"], env_id="x") for k in range(4)]
    for k in range(3):
        memory.record(0, obs[k], f"a{k}")
    memory.record(1, obs[3], "b")
    assert memory.history(0) == [("s1", "a1"), ("s2", "a2")] and memory.history(1) == [("s3", "b")]
    again = EpisodeMemory(2, 2)
    again.load_state_dict(memory.state_dict())
    assert again.history(0) == memory.history(0)
    memory.clear(0)
    assert memory.history(0) == [] and memory.history(1) == [("s3", "b")]
    nothing = EpisodeMemory(num_envs=1, keep=0)
    nothing.record(0, obs[0], "a")
    assert nothing.history(0) == []


def test_templates_render_history():
    obs = EnvObs(image=None, text="You see a fridge 1.", legal_actions=["open fridge 1"], env_id="alfworld",
                 task="cool an apple")
    text = AlfworldTemplate().prompt(obs, [("You are in a room.", "go to fridge 1")])
    assert 'Your last 1 steps' in text and '- You are in a room. -> "go to fridge 1"' in text
    assert text.index("Your last") < text.index("Admissible actions")
    image_obs = EnvObs(image=torch.zeros(4, 4, 3).numpy(), text="Target: 3, Current: 1", legal_actions=["-", "+"],
                       env_id="numberline")
    image_only = GymCardsTemplate().prompt(image_obs, [("Target: 3, Current: 0", "+")])
    assert '- "+"' in image_only and "Current: 0" not in image_only  # the state is in the image, not the text
    assert "Current: 0" in GymCardsTemplate(text_state=True).prompt(image_obs, [("Target: 3, Current: 0", "+")])
    assert GymCardsTemplate().prompt(image_obs) == GymCardsTemplate().prompt(image_obs, [])


def test_rollout_prompts_carry_the_episodes_earlier_actions(tiny_path):
    cfg = load_config(ROOT / "conf/numberline.yaml", [*SMALL, "prompt.history=2", "rollout.steps_per_update=8"])
    policy, data = build(cfg)
    rollout = data.collect()
    data.envs.close()
    T, N = rollout.rewards.shape
    ended = (rollout.terminated | rollout.truncated).tolist()
    prompts = [policy.tokenizer.decode(p["input_ids"][0]) for p in rollout.prompts]
    for i in range(N):
        seen = 0  # steps of the current episode before step t
        for t in range(T):
            text = prompts[t * N + i]
            if seen == 0:
                assert "Your last" not in text
            else:
                assert f"Your last {min(seen, 2)} steps" in text
            seen = 0 if ended[t][i] else seen + 1
    assert any("Your last 2 steps" in p for p in prompts)
    state = data.state_dict()["memory"]
    assert len(state) == N and all(len(s) <= 2 for s in state)


def test_expert_sft_examples_carry_the_same_history(tiny_path):
    cfg = load_config(ROOT / "conf/numberline.yaml", ["prompt.history=1", "env.num_envs=1", "sft.explore=0"])
    examples = expert_examples(cfg, 3)
    texts = [ex.messages[0]["content"][-1]["text"] for ex in examples]
    assert "Your last" not in texts[0] and "Your last 1 steps" in texts[1]
