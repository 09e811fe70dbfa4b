"""The rollout fast path: shared prompt prefix, agentrl's decode loop and its sampler, against the plain paths."""

import pytest
import torch

from agentrl.config import load_config
from agentrl.prompting.batching import MIN_SHARED_PREFIX
from agentrl.training.build import build


@pytest.fixture(scope="module")
def setup(tiny_path):
    """A policy and 4 NumberLine prompts of two lengths (left padding), images after the text."""
    torch.manual_seed(0)
    cfg = load_config("conf/numberline.yaml", ["env.num_envs=4", "rollout.max_new_tokens=12",
                                               "rollout.temperature=0.7", "prompt.image_position=last"])
    policy, data = build(cfg)
    obs = data.envs.reset(0)
    prompts = [data.encode(o) for o in obs]
    data.template.text_state = True  # rows 1 and 3 get a longer, different text
    prompts[1], prompts[3] = data.encode(obs[1]), data.encode(obs[3])
    data.template.text_state = False
    assert len({p["input_ids"].shape[1] for p in prompts}) == 2
    yield policy, data, prompts
    data.envs.close()


def run_paths(policy, prompts, own: bool, share: bool, seed: int = 0):
    """Greedy generate, then a teacher-forced forward + backward and values(), on one path."""
    policy.decoder.own_loop = policy.batcher.verified = own
    policy.batcher.share = share
    try:
        gen = policy.generate(prompts, greedy=True, score=True)
        train = policy.collate_train(prompts, gen.ids, [torch.full((len(g),), 0.5) for g in gen.ids])
        assert (train.prefix is not None) == share
        policy.zero_grad(set_to_none=True)
        token_logp, values, _ = policy(train)
        (token_logp.sum() + values.sum()).backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        return gen, token_logp.detach(), values.detach(), grads, policy.values(prompts)
    finally:
        policy.decoder.own_loop = policy.batcher.verified = policy.batcher.share = True
        policy.zero_grad(set_to_none=True)


def test_prefix_is_the_common_text_before_the_image(setup):
    policy, data, prompts = setup
    prefix, rest = policy.batcher.split_prefix(prompts)
    size = prefix["input_ids"].shape[1]
    assert size >= MIN_SHARED_PREFIX
    ids = [p["input_ids"][0] for p in prompts]
    assert all(torch.equal(i[:size], prefix["input_ids"][0]) for i in ids)
    assert len({int(i[size]) for i in ids}) > 1  # it stops where the rows differ (text_state rows)
    for p, r in zip(prompts, rest):
        assert torch.equal(torch.cat([prefix["input_ids"], r["input_ids"]], 1), p["input_ids"])
        assert torch.equal(r["pixel_values"], p["pixel_values"])
    # same text everywhere: the prefix runs up to the first image token, never into it
    same = [data.encode(o) for o in data.envs.reset(0)]
    prefix, _ = policy.batcher.split_prefix(same)
    image_id = policy.model.config.image_token_id
    first_image = int((same[0]["input_ids"][0] == image_id).int().argmax())
    assert prefix["input_ids"].shape[1] == first_image
    # one prompt, or sharing switched off: nothing to share
    assert policy.batcher.split_prefix(prompts[:1])[0] is None and policy.batcher.split_prefix(prompts, share=False)[0] is None


@pytest.mark.parametrize("position", ["first", "after_task", "last"])
def test_the_prefix_ends_where_the_image_starts(setup, position):
    policy, data, _ = setup
    data.template.image_position = position
    try:
        prompts = [data.encode(o) for o in data.envs.reset(0)]
    finally:
        data.template.image_position = "last"
    ids = prompts[0]["input_ids"][0]
    first_image = int((ids == policy.model.config.image_token_id).int().argmax())
    prefix = policy.batcher.split_prefix(prompts)[0]
    if position == "first":  # only the chat template's "<|im_start|>user\n" before the image: not worth it
        assert first_image < 8 and prefix is None
    else:
        assert prefix["input_ids"].shape[1] == first_image
        text = policy.tokenizer.decode(ids[:first_image])
        assert text.endswith("subtracts one.") if position == "after_task" else text.endswith("}")


def test_shared_prefix_and_own_decode_match_transformers_generate(setup):
    """Every path gives the same answers, log-probs, values and gradients as generate + a plain forward."""
    policy, _, prompts = setup
    ref = run_paths(policy, prompts, own=False, share=False)
    for own, share in [(True, False), (False, True), (True, True)]:
        gen, logp, values, grads, boot = run_paths(policy, prompts, own, share)
        path = f"own_decode={own} share_prefix={share}"
        assert all(torch.equal(a, b) for a, b in zip(ref[0].ids, gen.ids)), (own, share)
        for a, b in zip(ref[0].token_logp, gen.token_logp):
            torch.testing.assert_close(a, b, atol=2e-6, rtol=0)
        torch.testing.assert_close(ref[0].values, gen.values, atol=1e-6, rtol=0)
        torch.testing.assert_close(ref[1], logp, atol=2e-6, rtol=0, msg=lambda m, path=path: f"{path}: {m}")
        torch.testing.assert_close(ref[2], values, atol=1e-6, rtol=0)
        torch.testing.assert_close(ref[4], boot, atol=1e-6, rtol=0)
        assert grads.keys() == ref[3].keys()
        total = sum(float(g.norm()) ** 2 for g in ref[3].values()) ** 0.5
        err = sum(float((ref[3][n] - grads[n]).norm()) ** 2 for n in grads) ** 0.5
        assert err < 1e-5 * total, (own, share, err / total)
    # the generated log-probs are those a teacher-forced forward gives (the old log-probs of PPO)
    for i, row in enumerate(ref[0].token_logp):
        torch.testing.assert_close(row, ref[1][i, : len(row)], atol=2e-6, rtol=0)


def test_sampled_answers_score_the_same_under_a_forward(setup):
    policy, _, prompts = setup
    torch.manual_seed(5)
    gen = policy.generate(prompts, score=True)
    with torch.no_grad():
        logp, values, _ = policy(policy.collate_train(prompts, gen.ids, [torch.ones(len(g)) for g in gen.ids]))
    for i, row in enumerate(gen.token_logp):
        torch.testing.assert_close(row, logp[i, : len(row)], atol=2e-6, rtol=0)
    torch.testing.assert_close(values, gen.values, atol=1e-6, rtol=0)
    torch.manual_seed(5)
    again = policy.generate(prompts, score=True)
    assert all(torch.equal(a, b) for a, b in zip(gen.ids, again.ids))  # same seed, same answers


def test_the_image_still_reaches_every_row_after_the_prefix(setup):
    policy, data, _ = setup
    same = [data.encode(o) for o in data.envs.reset(0)]
    assert policy.batcher.split_prefix(same)[0] is not None
    blank = dict(same[0], pixel_values=torch.zeros_like(same[0]["pixel_values"]))
    values = policy.values([same[0], blank, same[0]])
    assert values[0] == pytest.approx(float(values[2]), abs=1e-6) and abs(float(values[0] - values[1])) > 1e-7


def test_pick_draws_from_the_tempered_softmax(setup):
    policy = setup[0]
    sampler = policy.sampler
    old = sampler.temperature, sampler.top_p, sampler.bad_ids
    try:
        sampler.temperature, sampler.top_p, sampler.bad_ids = 0.5, 1.0, [3]
        logits = torch.tensor([[0.0, 0.5, -0.3, 2.0, 0.2]]).repeat(200_000, 1)
        torch.manual_seed(0)
        freq = torch.bincount(sampler.pick(logits), minlength=5).float() / len(logits)
        expect = torch.softmax(logits[0].index_fill(0, torch.tensor([3]), float("-inf")) / 0.5, -1)
        assert freq[3] == 0  # suppressed
        torch.testing.assert_close(freq, expect, atol=4e-3, rtol=0)  # binomial sd <= 1.2e-3
        # nucleus: keep the most likely tokens until their mass reaches top_p
        sampler.top_p = 0.6
        freq = torch.bincount(sampler.pick(logits), minlength=5).float() / len(logits)
        kept = expect.clone()  # expect ~ [0.174, 0.472, 0.095, 0, 0.259]: tokens 1 then 4 reach 0.6
        kept[[0, 2]] = 0
        torch.testing.assert_close(freq, kept / kept.sum(), atol=4e-3, rtol=0)
        assert (sampler.pick(logits[:5], greedy=True) == 1).all()
        eos = sampler.eos_id
        assert not (sampler.pick(torch.zeros(1000, max(eos + 1, 5)), allow_eos=False) == eos).any()
    finally:
        sampler.temperature, sampler.top_p, sampler.bad_ids = old


def test_checkpointing_and_unverified_families_run_unshared(tiny_path):
    cfg = load_config("conf/numberline.yaml", ["env.num_envs=2", "model.gradient_checkpointing=true",
                                               "prompt.image_position=last"])
    policy, data = build(cfg)
    prompts = data.current_prompts()
    policy.train()
    assert policy.decoder.own_loop and policy.batcher.split_prefix(prompts)[0] is None  # checkpointing drops the cache
    with torch.no_grad():  # ... only where there is a backward to replay the layers for
        assert policy.batcher.split_prefix(prompts)[0] is not None
    policy.eval()
    assert policy.batcher.split_prefix(prompts)[0] is not None
    policy.model.config.model_type = "paligemma"  # what from_config sees for a family not verified here
    try:
        from agentrl.policy.module import PolicyModule

        other = PolicyModule(policy.model, policy.processor, thought_coef=0.5, value_hidden=[8], temperature=1.0)
        assert not other.decoder.own_loop and not other.batcher.share
    finally:
        policy.model.config.model_type = "llava"
    data.envs.close()


def test_encode_many_is_encode_one_by_one(setup, tiny_path):
    import dataclasses

    policy, data, _ = setup

    def items(obs):
        out = [(data.template.messages(o), o.image) for o in obs]
        data.template.text_state = True  # two longer prompts: the batched call pads, the split must unpad
        out[0], out[2] = [(data.template.messages(o), o.image) for o in (obs[0], obs[2])]
        data.template.text_state = False
        return out

    obs = data.envs.reset(3)
    for batch in (items(obs), items([dataclasses.replace(o, image=None) for o in obs])):  # images; text only
        many = policy.encode_many(batch)
        one = [policy.encode(m, image) for m, image in batch]
        assert len({p["input_ids"].shape[1] for p in one}) == 2
        for a, b in zip(many, one):
            assert a.keys() == b.keys()
            for k in a:
                assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_growing_cache_layer_is_concatenation():
    from agentrl.policy.decoding import GrowingLayer

    layer, keys, values = GrowingLayer(room=3), [], []
    for n in (5, 1, 1, 4, 1, 1, 1, 1):  # the 4 and the last 1 outgrow the room
        k, v = torch.randn(2, 3, n, 4), torch.randn(2, 3, n, 4)
        keys.append(k)
        values.append(v)
        got_k, got_v = layer.update(k, v)
        assert torch.equal(got_k, torch.cat(keys, 2)) and torch.equal(got_v, torch.cat(values, 2))
        assert layer.get_seq_length() == got_k.shape[2]


# ---------------------------------------------------------------- sampling equals scoring


def test_every_eos_id_stops_a_row(setup):
    """A chat model ends turns with its own token too: each id of the list ends the answer where it appears."""
    policy, _, prompts = setup
    sampler = policy.sampler
    saved = sampler.eos_ids
    weights = {k: v.clone() for k, v in policy.model.state_dict().items()}
    try:
        with torch.no_grad():  # varied greedy answers (a seeded random model may repeat one token everywhere)
            gen = torch.Generator().manual_seed(0)
            for p in policy.model.parameters():
                p.normal_(0.0, 0.3, generator=gen)
        sampler.eos_ids = [policy.tokenizer.vocab_size + 10]  # never produced: full-length greedy answers
        full = [g.tolist() for g in policy.generate(prompts, greedy=True).ids]
        # two rows i, j and a: a token of row i not in row j's answer; b: a later token of row j not in row i
        # before a (which rows have such tokens depends on the tiny model's random weights)
        pairs = [(i, j, a, b) for i in range(len(full)) for j in range(len(full)) if i != j
                 for a in full[i][1:] if a not in full[j]
                 for b in full[j][1:] if b not in full[i][: full[i].index(a) + 1]]
        assert pairs, f"no two greedy answers differ enough to pick two stop tokens: {full}"
        i, j, a, b = pairs[0]
        for own in (True, False):
            policy.decoder.own_loop = policy.batcher.verified = own
            sampler.eos_ids = [a, b]
            got = [g.tolist() for g in policy.generate(prompts, greedy=True).ids]
            for row, ids in zip(full, got):
                stop = min(row.index(t) for t in (a, b) if t in row) if {a, b} & set(row) else len(row) - 1
                assert ids == row[: stop + 1], own
            assert got[i][-1] == a and got[j][-1] == b
    finally:
        sampler.eos_ids = saved
        policy.decoder.own_loop = policy.batcher.verified = True
        policy.model.load_state_dict(weights)


def test_eos_ids_include_the_generation_configs(setup):
    from agentrl.policy.module import PolicyModule

    policy, _, _ = setup
    config = policy.model.generation_config
    saved = config.eos_token_id
    try:
        config.eos_token_id = [policy.tokenizer.eos_token_id, 7]
        other = PolicyModule(policy.model, policy.processor, thought_coef=0.5, value_hidden=[8], temperature=1.0)
        assert other.sampler.eos_ids == [policy.tokenizer.eos_token_id, 7]
    finally:
        config.eos_token_id = saved


def test_checkpoint_logits_processors_do_not_shape_generate(setup):
    """A repetition penalty or n-gram ban in the checkpoint's generation config would make transformers'
    generate sample another distribution than the one scored; agentrl's own loop applies none."""
    policy, _, prompts = setup
    config = policy.model.get_base_model().generation_config if hasattr(policy.model, "get_base_model") \
        else policy.model.generation_config
    own = policy.generate(prompts, greedy=True).ids
    config.repetition_penalty, config.no_repeat_ngram_size = 10.0, 1
    try:
        policy.decoder.own_loop = policy.batcher.verified = False
        hf = policy.generate(prompts, greedy=True).ids
    finally:
        config.repetition_penalty, config.no_repeat_ngram_size = 1.0, 0
        policy.decoder.own_loop = policy.batcher.verified = True
    assert any(len(set(g.tolist())) < len(g) for g in own)  # the answers repeat tokens: a penalty would bite
    assert all(torch.equal(a, b) for a, b in zip(own, hf))


def test_fit_refuses_top_p_below_one(tmp_path):
    from agentrl.commands.fit import fit
    from agentrl.config import ConfigError

    with pytest.raises(ConfigError, match=r"rollout.top_p=0.9.*rollout.top_p=1"):
        fit(load_config("conf/numberline.yaml", ["rollout.top_p=0.9", f"trainer.out_dir={tmp_path}"]))
    assert not (tmp_path / "config.yaml").exists()  # refused before the run dir is written
