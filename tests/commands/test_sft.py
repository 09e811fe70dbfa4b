"""SFT: expert data shape and noise, answer-only labels, and checkpoints that fit and model.path accept."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agentrl.commands import sft as S
from agentrl.config import ConfigError, load_config
from agentrl.data.sft import expert_examples, load_examples, perception
from agentrl.training.build import build

ROOT = Path(__file__).resolve().parents[2]
NL = ROOT / "conf/sft/numberline.yaml"
SMALL = ["env.num_envs=4", "rollout.steps_per_update=8", "ppo.minibatch_size=8", "ppo.micro_batch_size=4",
         "rollout.max_new_tokens=16", "trainer.num_threads=1"]


@pytest.mark.parametrize("cot", [True, False])
def test_expert_data_is_the_templates_json(cot):
    cfg = load_config(NL, [f"prompt.cot={str(cot).lower()}", "sft.explore=0.5"])
    examples = expert_examples(cfg, 64)
    assert len(examples) == 64
    keys = ["current number", "target number", "thoughts", "action"] if cot else ["action"]
    pairs = set()
    for ex in examples:
        answer = json.loads(ex.answer)
        assert list(answer) == keys
        assert answer["action"] == ex.expert_action in ex.obs.legal_actions  # noise=0: always the expert's
        if cot:
            assert (answer["current number"], answer["target number"]) == (ex.obs.extra["current"],
                                                                         ex.obs.extra["target"])
        pairs.add((ex.obs.extra["current"], ex.obs.extra["target"]))
        assert ex.image is not None and ex.messages[0]["content"][0] == {"type": "image"}
    assert len(pairs) >= 15  # explore makes states diverse (30 exist)


@pytest.mark.parametrize("noise", [0.0, 0.3, 1.0])
def test_noise_is_the_share_of_non_expert_labels(noise):
    cfg = load_config(NL, [f"sft.noise={noise}", "prompt.cot=false"])
    examples = expert_examples(cfg, 1000)
    share = np.mean([json.loads(ex.answer)["action"] != ex.expert_action for ex in examples])
    assert abs(share - noise) < 0.05, share  # binomial sd at 0.3 is 0.015


def test_config_rejects_bad_sft_values():
    with pytest.raises(ConfigError, match="sft.noise"):
        load_config(NL, ["sft.noise=1.5"])
    with pytest.raises(ConfigError, match="sft.data"):
        load_config(NL, ["sft.data=expret"])


def test_jsonl_data(tmp_path):
    Image.new("RGB", (32, 32), "white").save(tmp_path / "a.png")
    rows = [{"image": "a.png", "prompt": "What is shown?", "answer": '{"action": "+"}'},
            {"image": None, "obs": {"text": "Target: 1\nCurrent: 2", "legal_actions": ["-", "+"],
                                    "env_id": "numberline"}, "answer": {"thoughts": "down", "action": "-"}}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = load_config(NL, [f"sft.data={path}", "prompt.cot=false"])
    a, b = load_examples(cfg)
    assert a.image.shape == (32, 32, 3) and a.messages[0]["content"][1]["text"] == "What is shown?"
    assert b.image is None and json.loads(b.answer) == {"action": "-"}  # the template's no-CoT answer
    assert "Legal actions" in b.messages[0]["content"][0]["text"]
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(ConfigError, match="d.jsonl:1"):
        load_examples(cfg)


def test_jsonl_rows_carry_their_history(tmp_path):
    obs = {"text": "Target: 1, Current: 3", "legal_actions": ["-", "+"], "env_id": "numberline"}
    row = {"obs": obs, "history": [["Target: 1, Current: 5", "-"], ["Target: 1, Current: 4", "-"]],
           "answer": '{"action": "-"}'}
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(row) + "\n")
    text = load_examples(load_config(NL, [f"sft.data={path}", "prompt.history=1"]))[0].messages[0]["content"][0]
    assert "Your last 1 steps" in text["text"] and '- Target: 1, Current: 4 -> "-"' in text["text"]
    assert "Current: 5" not in text["text"]  # prompt.history=1 keeps the last step only
    assert "Your last" not in load_examples(load_config(NL, [f"sft.data={path}"]))[0].messages[0]["content"][0]["text"]
    path.write_text(json.dumps(dict(row, history=[["only state"]])) + "\n")
    with pytest.raises(ConfigError, match="h.jsonl:1: 'history' must be"):
        load_examples(load_config(NL, [f"sft.data={path}"]))


def test_jsonl_history_steps_carry_their_images_as_rollouts_do(tmp_path):
    """[state, action, image] steps: the last prompt.history_images keep their image, in order, as in rollouts."""
    for k in (1, 2, 3):
        Image.fromarray(np.full((32, 32, 3), 40 * k, dtype=np.uint8)).save(tmp_path / f"{k}.png")
    obs = {"text": "Target: 1, Current: 2", "legal_actions": ["-", "+"], "env_id": "numberline"}
    row = {"obs": obs, "image": "3.png", "answer": '{"action": "-"}',
           "history": [["Target: 1, Current: 4", "-", "1.png"], ["Target: 1, Current: 3", "-", "2.png"]]}
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (ex,) = load_examples(load_config(NL, [f"sft.data={path}", "prompt.history=2", "prompt.history_images=1"]))
    assert [int(im[0, 0, 0]) for im in ex.image] == [120, 80]  # the observation's own, then the newest step's
    assert [c["type"] for c in ex.messages[0]["content"]].count("image") == 2
    assert [len(step) for step in ex.history] == [2, 3]  # the older step kept as text
    (plain,) = load_examples(load_config(NL, [f"sft.data={path}", "prompt.history=2"]))
    assert plain.image.shape == (32, 32, 3) and [len(step) for step in plain.history] == [2, 2]
    path.write_text(json.dumps(dict(row, history=[["Target: 1, Current: 3", "-", "missing.png"]])) + "\n")
    with pytest.raises(ConfigError, match=r"h.jsonl:1: image .*missing.png' does not exist"):
        load_examples(load_config(NL, [f"sft.data={path}", "prompt.history=2", "prompt.history_images=1"]))


def test_loss_only_on_answer_tokens(tiny_path):
    cfg = load_config(NL, ["sft.examples=3"])
    policy = S.build_policy(cfg)
    data = S.encode(policy, expert_examples(cfg, 3))
    inputs, labels = S.collate(policy, data)
    ids = inputs["input_ids"]
    for row, ex in enumerate(data):
        n = len(ex.answer_ids)
        prompt_width = ids.shape[1] - max(len(e.answer_ids) for e in data)
        assert (labels[row, :prompt_width] == S.IGNORE).all()  # every prompt token (and its padding)
        assert torch.equal(labels[row, prompt_width:prompt_width + n], ex.answer_ids)
        assert (labels[row, prompt_width + n:] == S.IGNORE).all()  # answer padding
        assert ex.answer_ids[-1] == policy.sampler.eos_id
    loss, _ = S.sft_loss(policy.model, inputs, labels)
    reference = policy.model(**inputs, labels=labels, use_cache=False).loss  # HF's own shift and mask
    torch.testing.assert_close(loss, reference)


def _params(policy):
    return {n: p.detach().clone() for n, p in policy.model.named_parameters()}


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_sft_checkpoint_starts_fit(tmp_path, tiny_path, finetune):
    extra = [] if finetune == "full" else ["model.finetune=lora", "model.lora.r=4", "model.lora.alpha=8"]
    cfg = load_config(NL, [*SMALL, *extra, "sft.examples=16", "sft.epochs=1", "sft.batch_size=8",
                           "sft.lr=1e-3", f"trainer.out_dir={tmp_path}"])
    ckpt = S.sft(cfg, argv=["test"])
    assert ckpt == tmp_path / "checkpoints" / "sft"
    for f in ("trainable.pt", "config.yaml", "meta.json", "trainer_state.pt", "sft_metrics.json"):
        assert (ckpt / f).is_file(), f
    assert (ckpt / ("model" if finetune == "full" else "adapter")).is_dir()
    saved = torch.load(ckpt / "trainable.pt", weights_only=True)
    assert not any(k.startswith("value_head.") for k in saved)

    torch.manual_seed(0)
    fresh, data = build(load_config(ROOT / "conf/numberline.yaml", [*SMALL, *extra]))
    data.envs.close()
    # policy.init_from = the run dir (its latest checkpoint) gives the SFT weights at update 0
    torch.manual_seed(0)
    started, data = build(load_config(ROOT / "conf/numberline.yaml", [*SMALL, *extra,
                                                                      f"policy.init_from={tmp_path}"]))
    data.envs.close()
    now = dict(started.named_parameters())
    assert saved and all(torch.equal(now[k], v) for k, v in saved.items())
    assert any(not torch.equal(now[k], v) for k, v in fresh.named_parameters() if k in saved)  # SFT moved them
    for k, v in fresh.value_head.state_dict().items():  # a fresh value head
        torch.testing.assert_close(started.value_head.state_dict()[k], v)

    # trainer.resume stays strict: an SFT checkpoint has no value head or optimizer to continue
    from agentrl.training.checkpoint import load_trainable

    with pytest.raises(ConfigError, match="does not fit this config"):
        load_trainable(started, ckpt)

    if finetune == "full":  # DIR/model is a plain Hugging Face checkpoint
        plain, data = build(load_config(ROOT / "conf/numberline.yaml", [*SMALL, f"model.path={ckpt}/model"]))
        data.envs.close()
        loaded = _params(plain)
        assert all(torch.equal(loaded[k.removeprefix("model.")], v) for k, v in saved.items())


@pytest.mark.integration
def test_tiny_model_reads_the_digits_from_held_out_images(tiny_path):
    """The known trap (TINY_VLM.md): the recipe in conf/sft/numberline.yaml must make the tiny model read pixels.

    After its SFT, greedy answers on eval-split states (seeds disjoint from training) must name the
    current and target numbers far above chance (1/6 each). NumberLine draws each (target, current)
    pair identically, so held-out means unseen seeds and episodes, not unseen pixels.
    """
    import time

    from agentrl.training.build import set_threads

    set_threads(1, 1)
    cfg = load_config(NL, ["trainer.num_threads=1"])
    torch.manual_seed(cfg.seed)
    policy = S.build_policy(cfg)
    examples = load_examples(cfg)
    t0 = time.process_time()
    warmup = S.encode(policy, [perception(e) for e in examples]) if cfg.sft.perception_epochs else None
    S.train(policy, S.encode(policy, examples), cfg, warmup=warmup)
    cpu_s = time.process_time() - t0

    held_out = expert_examples(cfg, 90, split="eval", seed=1)
    policy.decoder.max_new_tokens = 48
    hits = {"current number": 0, "target number": 0, "action": 0}
    for want, got, _ in S.answers(policy, held_out, batch=30):
        for key in hits:
            hits[key] += bool(got) and got.get(key) == want[key]
    acc = {k: v / len(held_out) for k, v in hits.items()}
    print(f"held-out readout {acc}, SFT {cpu_s:.0f} CPU-s")
    assert acc["current number"] >= 0.5 and acc["target number"] >= 0.5, acc


def test_answers_pairs_the_expert_fields_with_the_policys(tiny_path, monkeypatch):
    from agentrl.policy.decoding import Generation

    cfg = load_config(NL, [])
    policy = S.build_policy(cfg)
    examples = expert_examples(cfg, 5)
    texts = ['{"action": "+"}', "no json", "[1, 2]", '{"current number": 3}', "{"]
    calls = []

    def generate(prompts, greedy=False):
        calls.append((len(prompts), greedy))
        start = sum(n for n, _ in calls[:-1])
        return Generation(ids=[], texts=texts[start:start + len(prompts)])

    monkeypatch.setattr(policy, "generate", generate)
    out = S.answers(policy, examples, greedy=False, batch=2)
    assert calls == [(2, False), (2, False), (1, False)]
    assert [want for want, _, _ in out] == [json.loads(e.answer) for e in examples]
    assert [got for _, got, _ in out] == [{"action": "+"}, {}, {}, {"current number": 3}, {}]
    assert [text for _, _, text in out] == texts


@pytest.mark.parametrize("bad, reason", [
    (b'{"prompt": "x", "answer": "\xff\xfe"}', "not UTF-8"),
    (b'{"image": "fake.png", "prompt": "x", "answer": "a"}', "is not an image"),
    (b'{"prompt": "x", "answer": 12}', "'answer' must be"),
    (b'{"image": 5, "prompt": "x", "answer": "a"}', "'image' must be"),
    (b'{"prompt": 7, "answer": "a"}', "'prompt' must be"),
    (b'{"obs": {"text": "s", "legal_actions": "+", "env_id": "numberline"}, "answer": "a"}', "legal_actions"),
    (b'{"prompt": "' + b"x" * 10_000_000 + b'", "answer": "a"}', "characters; at most"),
])
def test_every_bad_jsonl_row_names_its_line(tmp_path, bad, reason):
    (tmp_path / "fake.png").write_bytes(b"not a png at all")
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "fine", "answer": "a"}\n' + bad + b"\n")
    cfg = load_config(NL, [f"sft.data={path}"])
    with pytest.raises(ConfigError, match=f"d.jsonl:2: .*{reason}"):
        load_examples(cfg)


def test_mixed_image_and_text_rows_train_in_one_batch(tmp_path, tiny_path):
    Image.new("RGB", (32, 32), "white").save(tmp_path / "a.png")
    rows = [{"image": "a.png", "prompt": "What is shown?", "answer": '{"action": "+"}'},
            {"prompt": "No image here.", "answer": '{"action": "-"}'}] * 2
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = load_config(NL, [f"sft.data={path}", "sft.epochs=1", "sft.batch_size=4", "trainer.num_threads=1"])
    policy = S.build_policy(cfg)
    metrics = S.train(policy, S.encode(policy, load_examples(cfg)), cfg)
    assert metrics["steps"] == 1 and metrics["loss"] > 0


def test_sft_continues_from_policy_init_from(tmp_path, tiny_path):
    """policy.init_from was ignored by sft (it trained from the base weights again)."""
    common = [*SMALL, "model.finetune=lora", "model.lora.r=4", "model.lora.alpha=8", "sft.examples=16",
              "sft.epochs=1", "sft.batch_size=8"]
    first = S.sft(load_config(NL, [*common, "sft.lr=1e-3", f"trainer.out_dir={tmp_path / 'a'}"]), argv=["test"])
    again = S.sft(load_config(NL, [*common, "sft.lr=1e-12", "sft.vision_lr=1e-12", f"policy.init_from={first}",
                                   f"trainer.out_dir={tmp_path / 'b'}"]), argv=["test"])
    before = torch.load(first / "trainable.pt", weights_only=True)
    after = torch.load(again / "trainable.pt", weights_only=True)
    assert before.keys() == after.keys()
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, atol=1e-6, rtol=0)


def test_export_of_an_sft_checkpoint_writes_no_value_head(tmp_path, tiny_path):
    """sft trains no value head; agentrl export refused its checkpoint (the fresh head counted as missing)."""
    from agentrl.training.checkpoint import export_checkpoint

    ckpt = S.sft(load_config(NL, [*SMALL, "model.finetune=lora", "model.lora.r=4", "model.lora.alpha=8",
                                  "sft.examples=16", "sft.epochs=1", "sft.batch_size=8",
                                  f"trainer.out_dir={tmp_path / 'a'}"]), argv=["test"])
    saved = torch.load(ckpt / "trainable.pt", weights_only=True)
    dest = export_checkpoint(str(ckpt), str(tmp_path / "out"))
    exported = torch.load(dest / "trainable.pt", weights_only=True)
    assert exported.keys() == saved.keys() and all(torch.equal(exported[k], saved[k]) for k in saved)
    assert (dest / "adapter").is_dir() and not (dest / "value_head.pt").exists()


def test_sft_continues_from_a_full_fine_tune_fit_checkpoint(tmp_path, tiny_path):
    """On one process sft trains every weight, fit only what its loss reaches: sft refused fit's checkpoint."""
    from agentrl.commands.fit import fit

    fit(load_config(ROOT / "conf/numberline.yaml", [*SMALL, "trainer.max_updates=1", f"trainer.out_dir={tmp_path / 'a'}"]))
    saved = torch.load(tmp_path / "a/checkpoints/update_000001/trainable.pt", weights_only=True)
    again = S.sft(load_config(NL, [*SMALL, "sft.examples=8", "sft.epochs=1", "sft.batch_size=8", "sft.lr=1e-12",
                                   "sft.vision_lr=1e-12", f"policy.init_from={tmp_path / 'a'}",
                                   f"trainer.out_dir={tmp_path / 'b'}"]), argv=["test"])
    after = torch.load(again / "trainable.pt", weights_only=True)
    for k, v in saved.items():
        if not k.startswith("value_head."):
            torch.testing.assert_close(after[k], v, atol=1e-6, rtol=0)
