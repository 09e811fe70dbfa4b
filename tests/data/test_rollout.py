"""The rollout: the parser's span decides the weighted tokens; episode memory in the prompt."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from agentrl.commands.sft import encode as sft_encode
from agentrl.config import ConfigError, load_config
from agentrl.data.memory import EpisodeMemory
from agentrl.data.sft import expert_examples, perception
from agentrl.envs.base import EnvObs, EnvStep
from agentrl.policy.decoding import Generation
from agentrl.prompting.parsing import ParseResult, action_span_start
from agentrl.prompting.templates import AlfworldTemplate, GymCardsTemplate
from agentrl.training.build import build

ROOT = Path(__file__).resolve().parents[2]
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
    fewer, none = EpisodeMemory(2, 1), EpisodeMemory(2, 0)  # a resume with a lower prompt.history
    fewer.load_state_dict(memory.state_dict())
    none.load_state_dict(memory.state_dict())
    assert fewer.history(0) == [("s2", "a2")] and none.history(0) == [] and none.history(1) == []
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


def spy_steps(data):
    """Record the actions every env step receives."""
    taken, step = [], data.envs.step

    def spy(actions):
        taken.append(list(actions))
        return step(actions)

    data.envs.step = spy
    return taken


def test_rollout_prompts_list_the_episodes_last_actions(tiny_path):
    cfg = load_config(ROOT / "conf/numberline.yaml", [*SMALL, "prompt.history=2", "rollout.steps_per_update=12"])
    policy, data = build(cfg)
    taken = spy_steps(data)
    rollout = data.collect()
    data.envs.close()
    T, N = rollout.rewards.shape
    ended = (rollout.terminated | rollout.truncated).tolist()
    prompts = [policy.tokenizer.decode(p["input_ids"][0]) for p in rollout.prompts]
    longest = 0
    for i in range(N):
        episode: list[str] = []  # actions of slot i's current episode before step t
        for t in range(T):
            text = prompts[t * N + i]
            if not episode:
                assert "Your last" not in text
            else:
                shown = episode[-2:]
                listed = "\n".join(f'- "{a}"' for a in shown)  # image-only prompt: the actions alone
                assert f"Your last {len(shown)} steps in this episode" in text and listed in text, (t, i)
            episode = [] if ended[t][i] else [*episode, taken[t][i]]
            longest = max(longest, len(episode))
    assert longest >= 2  # the window was filled at least once
    assert [list(map(tuple, s)) for s in data.state_dict()["memory"]] == [data.memory.history(i) for i in range(N)]


def test_resumed_data_module_builds_the_same_prompts(tiny_path):
    """The memory travels in the data module's state: a restored module continues with the same prompts."""
    cfg = load_config(ROOT / "conf/numberline.yaml", [*SMALL, "prompt.history=3", "rollout.steps_per_update=8"])
    torch.manual_seed(0)
    policy, data = build(cfg)
    data.collect()
    state = copy.deepcopy(data.state_dict())
    assert any(state["memory"])
    torch.manual_seed(1)
    straight = data.collect()
    data.envs.close()
    _, again = build(cfg)
    again.load_state_dict(state, update=1)
    torch.manual_seed(1)
    resumed = again.collect()
    again.envs.close()
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(straight.prompts, resumed.prompts))
    assert straight.texts == resumed.texts


def test_a_dropped_episodes_last_action_is_not_remembered(tiny_path):
    """A restarted worker never ran the action: the final prompt and the memory must not list it."""
    cfg = load_config(ROOT / "conf/numberline.yaml", [*SMALL, "prompt.history=2", "env.num_envs=2",
                                                      "rollout.steps_per_update=2", "ppo.minibatch_size=2"])
    policy, data = build(cfg)
    obs = data.envs.reset(0)
    data._obs = obs
    data.memory.record(0, obs[0], "+")
    fresh = data.envs.reset(1)
    dropped = EnvStep(obs=fresh, reward=np.zeros(2, np.float32), terminated=np.zeros(2, bool),
                      truncated=np.ones(2, bool), final_obs=list(obs), episodes=[None, None])
    data.envs.step = lambda actions: dropped
    seen = []
    encode_all = data.encode_all

    def spy(batch, slots=None):
        if slots is not None:  # the final observations of the cut episodes
            seen.extend(data.memory.history(i) for i in slots)
        return encode_all(batch, slots)

    data.encode_all = spy
    data.collect()
    data.envs.close()
    assert seen == [[(obs[0].text, "+")], []]  # the step that never ran is not in the history
    assert data.memory.history(0) == [] and data.memory.history(1) == []


def test_envs_without_state_restart_on_fresh_seeds_after_resume(tiny_path):
    cfg = load_config(ROOT / "conf/numberline.yaml", SMALL)
    policy, data = build(cfg)
    state = data.state_dict()
    state["env"] = state["obs"] = None  # what async envs save
    seeds, reset = [], data.envs.reset
    data.envs.reset = lambda seed: seeds.append(seed) or reset(seed)
    data.load_state_dict(state, update=3)
    data.collect()
    data.envs.close()
    assert seeds == [cfg.seed + 3 * 1_000_003]


def test_a_parser_without_spans_falls_back_to_the_first_key(tiny_path):
    policy, data = build(load_config(ROOT / "conf/numberline.yaml", SMALL))
    data.parser.read = lambda text, legal: ParseResult("+")  # a user's parser that reports no span
    tok = policy.tokenizer
    text = '{"thoughts": "up", "action": "+"}'
    ids = torch.tensor(tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id])
    policy.generate = lambda prompts, greedy=False, score=False: Generation(
        ids=[ids] * len(prompts), texts=[text] * len(prompts), token_logp=[torch.zeros(len(ids))] * len(prompts),
        values=torch.zeros(len(prompts)))
    rollout = data.collect()
    data.envs.close()
    first = int((rollout.weights[0] == 1.0).nonzero()[0])
    assert tok.decode(ids[first:], skip_special_tokens=True).lstrip(' "').startswith('action"')
    assert torch.all(rollout.weights[0][:first] == 0.3)


def test_expert_sft_examples_carry_the_same_history(tiny_path):
    cfg = load_config(ROOT / "conf/numberline.yaml", ["prompt.history=1", "env.num_envs=1", "sft.explore=0"])
    examples = expert_examples(cfg, 8)
    texts = [ex.messages[0]["content"][-1]["text"] for ex in examples]
    assert "Your last" not in texts[0]
    with_history = [k for k in range(1, 8) if "Your last 1 steps" in texts[k]]
    assert with_history  # some step followed another of its episode
    for k in with_history:  # explore=0, noise=0: the step taken was the expert's action of the example before
        assert f'- "{examples[k - 1].expert_action}"' in texts[k]


def frame(value: int) -> np.ndarray:
    return np.full((8, 8, 3), value, dtype=np.uint8)


def test_episode_memory_keeps_images_of_the_last_m_steps_only():
    memory = EpisodeMemory(num_envs=1, keep=3, frames=2)
    obs = [EnvObs(image=frame(k), text=f"s{k}", legal_actions=["a"], env_id="x") for k in range(4)]
    for k in range(4):
        memory.record(0, obs[k], f"a{k}")
    steps = memory.history(0)
    assert [s[:2] for s in steps] == [("s1", "a1"), ("s2", "a2"), ("s3", "a3")]
    assert len(steps[0]) == 2 and [int(s[2][0, 0, 0]) for s in steps[1:]] == [2, 3]
    fewer = EpisodeMemory(1, 3, frames=1)  # a resume with a lower prompt.history_images
    fewer.load_state_dict(memory.state_dict())
    assert [len(s) for s in fewer.history(0)] == [2, 2, 3]
    text_only = EpisodeMemory(1, 3, frames=0)
    text_only.load_state_dict(memory.state_dict())
    assert [len(s) for s in text_only.history(0)] == [2, 2, 2]
    memory.clear(0)
    assert memory.history(0) == []


def test_templates_put_each_earlier_image_before_its_action_in_order():
    obs = EnvObs(image=frame(9), text="Target: 3, Current: 2", legal_actions=["-", "+"], env_id="numberline")
    history = [("Target: 3, Current: 0", "+"), ("Target: 3, Current: 0", "+", frame(1)),
               ("Target: 3, Current: 1", "+", frame(2))]
    for position, current_first in (("first", True), ("after_task", True), ("last", False)):
        messages, images = GymCardsTemplate(image_position=position).render(obs, history)
        content = messages[0]["content"]
        assert [c["type"] for c in content].count("image") == 3 and len(images) == 3
        assert [int(im[0, 0, 0]) for im in images] == ([9, 1, 2] if current_first else [1, 2, 9])
        text = "".join(c.get("text", "<IMG>") for c in content)
        assert "\x00" not in text
        assert '- "+"\n- <IMG> -> "+"\n- <IMG> -> "+"' in text  # the oldest step kept no image
    plain = [(s[0], s[1]) for s in history]
    assert GymCardsTemplate().render(obs, plain) == (GymCardsTemplate().messages(obs, plain), obs.image)


def image_prompt_cfg(*extra):
    return load_config(ROOT / "conf/numberline.yaml", [*SMALL, "prompt.history=3", "prompt.history_images=2",
                                                       "rollout.steps_per_update=12", *extra])


def test_rollout_prompts_carry_the_last_steps_images_with_their_tokens(tiny_path):
    """Each earlier image comes with its own image tokens and pixel rows; scoring the prompts matches sampling."""
    policy, data = build(image_prompt_cfg())
    per_image = policy.batcher.image_tokens(data.encode(data.envs.reset(0)[0]))
    rollout = data.collect()
    data.envs.close()
    counts = {(policy.batcher.image_tokens(p), p["pixel_values"].shape[0]) for p in rollout.prompts}
    assert counts == {(per_image * k, k) for k in (1, 2, 3)}  # 0, 1 or 2 earlier images beside the current
    picked = [b for b, p in enumerate(rollout.prompts) if p["pixel_values"].shape[0] > 1][:4]
    inputs = policy.collate_train([rollout.prompts[b] for b in picked], [rollout.gen_ids[b] for b in picked],
                                  [rollout.weights[b] for b in picked])
    policy.eval()
    with torch.no_grad():
        token_logp, _, _ = policy(inputs)
    for k, b in enumerate(picked):  # the update scores what was sampled, images and all
        torch.testing.assert_close(token_logp[k, : len(rollout.gen_ids[b])], rollout.token_logp[b],
                                   atol=2e-4, rtol=1e-4)


def test_a_budget_of_image_tokens_leaves_the_oldest_images_out(tiny_path):
    policy, data = build(image_prompt_cfg())
    obs = data.envs.reset(0)
    data.envs.close()
    per_image = policy.batcher.image_tokens(data.encode(obs[0]))
    history = [("s", "+", frame(1)), ("s", "-", frame(2))]
    data.max_image_tokens = 2 * per_image
    prompt = data.encode(obs[0], history)
    assert policy.batcher.image_tokens(prompt) == 2 * per_image and prompt["pixel_values"].shape[0] == 2
    expected = policy.encode(*data.template.render(obs[0], [("s", "+"), history[1]]))  # the oldest kept as text
    assert torch.equal(prompt["input_ids"], expected["input_ids"])
    assert torch.equal(prompt["pixel_values"], expected["pixel_values"])
    data.max_image_tokens = per_image - 1
    with pytest.raises(ConfigError, match=rf"prompt.max_image_tokens={per_image - 1} is below the {per_image} image"):
        data.encode(obs[0], history)


IMAGES_FIRST = ("{% for m in messages %}{{ m['role'].upper() + ': ' }}"  # as LLaVA-1.5's: every image, then the text
                "{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
                "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
                "\\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def test_a_template_that_puts_every_image_first_is_told_where_each_image_was(tiny_path):
    """LLaVA-1.5's template renders all images before all text: the earlier frames would lose their steps, so
    the text names each image where it stood, "(image k)", in the order the images come; one image keeps its text."""
    policy, data = build(image_prompt_cfg())
    obs = data.envs.reset(0)
    data.envs.close()
    history = [("s", "+", frame(1)), ("s", "-", frame(2))]
    before = data.encode(obs[0], history)
    assert "(image" not in policy.batcher.processor.tokenizer.decode(before["input_ids"][0])
    policy.batcher.processor.chat_template = IMAGES_FIRST
    del policy.batcher.interleaves  # a processor's template is fixed when it loads; this test swaps it
    token = policy.batcher.processor.image_token
    prompt = data.encode(obs[0], history)
    text = policy.batcher.processor.tokenizer.decode(prompt["input_ids"][0])
    messages, images = data.template.render(obs[0], history)
    current = [im is obs[0].image for im in images].index(True) + 1  # the observation's place among the images
    frames = [k for k in (1, 2, 3) if k != current]
    assert text.count(token) > 0 and text.rindex(token) < min(text.index(f"(image {k})") for k in (1, 2, 3))
    assert f'- (image {frames[0]}) -> "+"' in text and f'- (image {frames[1]}) -> "-"' in text  # at their steps
    assert torch.equal(prompt["pixel_values"], before["pixel_values"])  # the images in their order
    single = policy.batcher.processor.tokenizer.decode(data.encode(obs[0])["input_ids"][0])
    assert "(image" not in single and token in single


def test_images_first_marks_adjacent_and_trailing_images_and_leaves_string_turns():
    from agentrl.prompting.batching import images_first

    image, text = {"type": "image"}, lambda t: {"type": "text", "text": t}
    messages = [{"role": "system", "content": "rules"},
                {"role": "user", "content": [text("a"), image, image, text("b"), text(""), image]}]
    assert images_first(messages) == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": [image, image, image, text("a (image 1) (image 2)\nb (image 3)")]}]


def test_history_images_above_history_is_refused():
    with pytest.raises(ConfigError, match=r"prompt.history_images=3 .* prompt.history=2 lists fewer"):
        load_config(ROOT / "conf/numberline.yaml", ["prompt.history=2", "prompt.history_images=3"])


def test_expert_sft_examples_carry_earlier_images_and_resume_keeps_them(tiny_path):
    cfg = image_prompt_cfg("env.num_envs=1", "sft.explore=0")
    examples = expert_examples(cfg, 6)
    sizes = [1 if not isinstance(ex.image, list) else len(ex.image) for ex in examples]
    assert sizes[0] == 1 and max(sizes) == 3
    warm = perception(examples[sizes.index(3)])
    assert warm.image is examples[sizes.index(3)].obs.image and len(warm.messages[0]["content"]) == 1


def test_a_budget_below_the_observation_image_is_refused_on_every_path(tiny_path):
    """Without earlier frames the batched prompt path, eval's and sft's refuse it too, with one message."""
    policy, data = build(image_prompt_cfg("prompt.history_images=0"))
    obs = data.envs.reset(0)
    per_image = policy.batcher.image_tokens(data.encode(obs[0]))
    data.max_image_tokens = per_image - 1
    message = rf"prompt.max_image_tokens={per_image - 1} is below the {per_image} image tokens"
    with pytest.raises(ConfigError, match=message):
        data.collect()  # the first rollout's prompts: policy.encode_many, no earlier frames
    data.envs.close()
    examples = expert_examples(image_prompt_cfg("env.num_envs=1", "sft.explore=0", "prompt.history_images=0"), 2)
    with pytest.raises(ConfigError, match=message):
        sft_encode(policy, examples, data.template, per_image - 1)
    assert len(sft_encode(policy, examples, data.template, per_image)) == 2
