"""Every model family end to end: the tiny builders, loading without torchvision, decoding paths, EOS, fit/sft/eval."""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from agentrl.commands.fit import fit
from agentrl.config import ConfigError, ModelConfig, load_config
from agentrl.policy.loading import eos_token_ids, load_vlm
from agentrl.policy.processors import image_token_count, load_processor
from agentrl.policy.tiny.build import make_tiny_model, tiny_model_path
from agentrl.policy.tiny.families import FAMILIES, QWEN_IMAGE
from agentrl.prompting.batching import VERIFIED_FAMILIES
from agentrl.training.build import build

ROOT = Path(__file__).resolve().parents[2]
QWEN = ("qwen2_vl", "qwen2_5_vl")
STOCK = {  # model class, processor class
    "llava": ("LlavaForConditionalGeneration", "LlavaProcessor"),
    "llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextProcessor"),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
    "idefics3": ("Idefics3ForConditionalGeneration", "Idefics3Processor"),
}
IMAGE_TOKENS = {"llava": 16, "llava_next": 36, "qwen2_vl": 16, "qwen2_5_vl": 16, "idefics3": 16}
SMALL = ["env.num_envs=2", "rollout.steps_per_update=4", "ppo.minibatch_size=4", "ppo.micro_batch_size=2",
         "rollout.max_new_tokens=8", "trainer.num_threads=1", "trainer.image_log_every=0"]
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


@pytest.fixture(scope="session", params=FAMILIES)
def family(request):
    """(family, its cached tiny checkpoint), built once under $AGENTRL_CACHE like the LLaVA one."""
    return request.param, tiny_model_path(family=request.param)


def _policy(path: Path, *extra: str):
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        policy, data = build(load_config(ROOT / "conf/numberline.yaml", [
            "env.num_envs=4", "rollout.max_new_tokens=10", "rollout.temperature=0.7", "prompt.image_position=last",
            f"model.path={path}", *extra]))
    return policy, data, [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def setup(family):
    """A policy of the family and 4 NumberLine prompts of two lengths (left padding), images after the text."""
    name, path = family
    policy, data, messages = _policy(path)
    obs = data.envs.reset(0)
    prompts = [data.encode(o) for o in obs]
    data.template.text_state = True  # rows 1 and 3 get a longer, different text
    prompts[1], prompts[3] = data.encode(obs[1]), data.encode(obs[3])
    data.template.text_state = False
    assert len({p["input_ids"].shape[1] for p in prompts}) == 2
    yield name, policy, data, prompts, messages
    data.envs.close()


def run_path(policy, prompts, own: bool, share: bool, greedy: bool = True):
    """Generate (scored), then the teacher-forced forward + backward and values() on one decode / prefix path."""
    saved = policy.decoder.own_loop, policy.batcher.verified, policy.batcher.share
    policy.decoder.own_loop = policy.batcher.verified = own
    policy.batcher.share = share
    try:
        torch.manual_seed(1)
        gen = policy.generate(prompts, greedy=greedy, score=True)
        train = policy.collate_train(prompts, gen.ids, [torch.full((len(g),), 0.5) for g in gen.ids])
        assert (train.prefix is not None) == share
        policy.zero_grad(set_to_none=True)
        logp, values, _ = policy(train)
        (logp.sum() + values.sum()).backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        return gen, logp.detach(), values.detach(), policy.values(prompts), grads
    finally:
        policy.decoder.own_loop, policy.batcher.verified, policy.batcher.share = saved
        policy.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- the builders and loading


def test_tiny_family_loads_through_load_vlm_with_its_stock_classes(family):
    name, path = family
    model, processor = load_vlm(ModelConfig(path=str(path)))
    assert model.config.model_type == name
    assert (type(model).__name__, type(processor).__name__) == STOCK[name]
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    assert sum(f.stat().st_size for f in path.glob("*.safetensors")) < 12e6
    assert image_token_count(processor, 112, 112) == image_token_count(processor, 300, 300) == IMAGE_TOKENS[name]
    saved = json.loads((path / "processor_config.json").read_text())
    assert saved["processor_class"] == STOCK[name][1]  # what a machine with torchvision loads as is
    assert processor.tokenizer.padding_side == "left" and processor.tokenizer.pad_token is not None


def test_each_family_renders_its_own_chat_template_and_ends_with_its_eos(setup):
    name, policy, data, prompts, _ = setup
    text = policy.tokenizer.decode(prompts[0]["input_ids"][0])
    tok = policy.tokenizer
    eos = eos_token_ids(policy.model, tok)
    if name in QWEN:  # Qwen2-VL-Instruct: <|im_end|> ends a turn, <|endoftext|> too (generation config)
        assert QWEN_IMAGE.split("<|image_pad|>")[0] + "<|image_pad|>" in text
        assert eos == [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
        assert policy.sampler.bad_ids == sorted([tok.convert_tokens_to_ids("<|image_pad|>"),
                                                 tok.convert_tokens_to_ids("<|video_pad|>")])
    elif name == "idefics3":  # SmolVLM: User: ... <end_of_utterance>, then Assistant:
        assert text.startswith("<|im_start|>User:") and text.endswith("<end_of_utterance>\nAssistant:")
        assert eos == [tok.convert_tokens_to_ids("<end_of_utterance>")]
    else:
        assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert eos == [tok.convert_tokens_to_ids("<|im_end|>")]
    assert policy.sampler.eos_ids == eos and policy.sampler.eos_id == tok.eos_token_id


def test_generation_stops_at_every_eos_of_the_family(setup):
    """Forcing the last EOS id (Qwen's <|endoftext|>) to win: every answer is that one token."""
    name, policy, _, prompts, _ = setup
    last = policy.sampler.eos_ids[-1]
    head = policy.model.get_output_embeddings()
    saved = head.weight.data.clone()
    try:  # a zero head plus a bias on that one id: its logit wins whatever the hidden state
        head.weight.data.zero_()
        head.bias = torch.nn.Parameter(torch.zeros(head.weight.shape[0]), requires_grad=False)
        head.bias.data[last] = 50.0
        gen = policy.generate(prompts, greedy=True)
    finally:
        head.weight.data.copy_(saved)
        head.bias = None
    assert all(ids.tolist() == [last] for ids in gen.ids), (name, gen.ids)


def test_qwen_processor_loads_without_torchvision_and_saves_like_the_stock_one(tmp_path):
    from transformers import AutoProcessor, Qwen2VLProcessor

    path = tiny_model_path(family="qwen2_vl")
    if HAS_TORCHVISION:  # the stock processor, video part included
        assert hasattr(AutoProcessor.from_pretrained(path), "video_processor")
    else:
        with pytest.raises(ImportError):
            AutoProcessor.from_pretrained(path)
    processor = load_processor(path)
    assert isinstance(processor, Qwen2VLProcessor) and processor.image_processor is not None
    assert hasattr(processor, "video_processor") == HAS_TORCHVISION
    from PIL import Image

    batch = processor(text=[processor.image_token], images=[Image.new("RGB", (112, 112), "white")],
                      return_tensors="pt")
    grid = batch["image_grid_thw"][0]
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == int(grid.prod()) // 4 == 16
    assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == processor.image_token_id)
    # saved again (a full fine-tune's DIR/model): the stock class and the video settings stay named
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    original = json.loads((path / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2VLProcessor" and saved["video_processor"] == original["video_processor"]
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"
    again = load_processor(tmp_path)(text=[processor.image_token], images=[Image.new("RGB", (112, 112), "white")],
                                     return_tensors="pt")
    assert all(torch.equal(batch[k], again[k]) for k in batch)


def test_a_vlm_whose_processor_cannot_load_gets_a_clear_error(tmp_path, monkeypatch):
    import shutil

    import transformers

    path = tiny_model_path(family="qwen2_vl")
    unknown = tmp_path / "unknown"
    shutil.copytree(path, unknown)
    config = json.loads((unknown / "processor_config.json").read_text())
    (unknown / "processor_config.json").write_text(json.dumps(config | {"processor_class": "Qwen9VLProcessor"}))
    with pytest.raises(ConfigError, match=r"Qwen9VLProcessor.*upgrade transformers"):
        load_processor(unknown)

    def missing(*args, **kwargs):  # transformers' own wording, which names no module
        raise ImportError("\nQwen2VLVideoProcessor requires the Torchvision library but it was not found in your "
                          "environment. Check out the instructions on the\ninstallation page: ...")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", missing)
    monkeypatch.setattr(transformers.AutoImageProcessor, "from_pretrained", missing)
    with pytest.raises(ConfigError, match=r"Qwen2VLProcessor.*Torchvision library.*pip install torchvision$"):
        load_processor(path)

    text_only = tmp_path / "text_only"  # a tokenizer alone: not a VLM
    text_only.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(path / f, text_only / f)
    config = json.loads((text_only / "tokenizer_config.json").read_text())
    config.pop("processor_class")
    (text_only / "tokenizer_config.json").write_text(json.dumps(config))
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="not a vision-language checkpoint"):
        load_processor(text_only)


def test_make_tiny_model_cli_builds_each_family(tmp_path, capsys):
    from agentrl.cli import main

    assert main(["make-tiny-model", str(tmp_path / "q"), "--family", "qwen2_5_vl"]) == 0
    assert "qwen2_5_vl" in capsys.readouterr().out
    model, processor = load_vlm(ModelConfig(path=str(tmp_path / "q")))
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    # the default family is still LLaVA, byte for byte the cached tiny model's build
    assert make_tiny_model(str(tmp_path / "l")) == 0
    cached = tiny_model_path()
    for f in ("model.safetensors", "config.json", "tokenizer.json", "processor_config.json"):
        assert (tmp_path / "l" / f).read_bytes() == (cached / f).read_bytes(), f
    with pytest.raises(SystemExit):
        main(["make-tiny-model", str(tmp_path / "x"), "--family", "gpt2"])


# ---------------------------------------------------------------- decoding paths


def test_every_family_takes_the_own_loop_and_shares_the_prefix(setup):
    name, policy, _, prompts, messages = setup
    assert name in VERIFIED_FAMILIES
    assert policy.decoder.own_loop and policy.batcher.verified and policy.batcher.share
    assert policy.batcher.split_prefix(prompts)[0] is not None
    assert not [m for m in messages if "own decode loop" in m]


def test_every_family_scores_what_it_samples_on_every_path_it_takes(setup):
    """On left-padded prompts of two lengths, every path (own loop or generate, prefix shared or not) gives
    transformers' greedy answers; log-probs within 1e-5 of generate's and of a teacher-forced forward;
    values and gradients equal to the unshared forward's."""
    name, policy, _, prompts, _ = setup
    ref_gen, ref_logp, ref_values, ref_boot, ref_grads = run_path(policy, prompts, own=False, share=False)
    for i, row in enumerate(ref_gen.token_logp):
        torch.testing.assert_close(row, ref_logp[i, : len(row)], atol=1e-5, rtol=0)
    torch.testing.assert_close(ref_gen.values, ref_values, atol=1e-6, rtol=0)
    torch.testing.assert_close(ref_boot, ref_values, atol=1e-6, rtol=0)
    assert any(len(g) > 1 for g in ref_gen.ids)  # decode steps after the prefill are compared too
    total = sum(float(g.norm()) ** 2 for g in ref_grads.values()) ** 0.5
    for own, share in [(True, False), (False, True), (True, True)]:
        path = f"{name} own_loop={own} share_prefix={share}"
        gen, logp, values, boot, grads = run_path(policy, prompts, own, share)
        assert all(torch.equal(a, b) for a, b in zip(ref_gen.ids, gen.ids)), path
        for a, b in zip(ref_gen.token_logp, gen.token_logp):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=lambda m, path=path: f"{path}: {m}")
        torch.testing.assert_close(ref_logp, logp, atol=1e-5, rtol=0, msg=lambda m, path=path: f"{path}: {m}")
        torch.testing.assert_close(ref_values, values, atol=1e-6, rtol=0)
        torch.testing.assert_close(ref_gen.values, gen.values, atol=1e-6, rtol=0)
        torch.testing.assert_close(ref_boot, boot, atol=1e-6, rtol=0)
        assert grads.keys() == ref_grads.keys(), path
        err = sum(float((ref_grads[n] - grads[n]).norm()) ** 2 for n in grads) ** 0.5
        assert err < 1e-5 * total, (path, err / total)


def test_each_row_gets_the_positions_it_has_alone(setup):
    """Positions skip a row's left padding and continue after the shared prefix. Qwen's image tokens sit on a
    (time, height, width) grid: there they are transformers' ``get_rope_index`` of the row alone, (3, B, L),
    also beside a text-only row (SFT batches mix them)."""
    import dataclasses

    name, policy, data, prompts, _ = setup
    batcher = policy.batcher
    rope = next((m for m in policy.model.modules() if hasattr(type(m), "get_rope_index")), None)
    assert (rope is not None) == (name in QWEN)
    obs = data.envs.reset(0)
    text_only = policy.encode(data.template.messages(dataclasses.replace(obs[1], image=None)), None)
    mixed = [prompts[0], text_only, prompts[2]]
    for batch, share in [(prompts, False), (prompts, None), (mixed, False), (mixed, None)]:
        prefix, rest = batcher.split_prefix(batch, share)
        assert (prefix is None) == (share is False)
        pos = batcher.model_kwargs(batcher.collate(rest), prefix, torch.device("cpu"))["position_ids"]
        assert pos.shape[-2:] == (len(batch), max(r["input_ids"].shape[1] for r in rest))
        size = 0 if prefix is None else prefix["input_ids"].shape[1]
        for i, p in enumerate(batch):
            n = p["input_ids"].shape[1]
            if rope is None or "image_grid_thw" not in p:
                alone = torch.arange(n)[None]
            else:
                alone = rope.get_rope_index(p["input_ids"], p["mm_token_type_ids"], p["image_grid_thw"])[0]
                assert pos.shape[0] == 3 and not torch.equal(alone[0, 0], torch.arange(n))  # not the 1-D count
            got = pos[..., i, pos.shape[-1] - (n - size) :]
            assert torch.equal(got, alone[..., 0, size:].expand_as(got)), (name, share, i)  # text: 3 equal rows


def test_sampled_answers_score_the_same_under_a_forward(setup):
    name, policy, _, prompts, _ = setup
    gen, logp, values, _, _ = run_path(policy, prompts, policy.decoder.own_loop, policy.batcher.share, greedy=False)
    assert any(len(g) > 1 for g in gen.ids)
    for i, row in enumerate(gen.token_logp):
        torch.testing.assert_close(row, logp[i, : len(row)], atol=1e-5, rtol=0)
    torch.testing.assert_close(gen.values, values, atol=1e-6, rtol=0)


def test_batched_encoding_equals_one_by_one(setup):
    name, policy, data, _, _ = setup
    obs = data.envs.reset(3)
    items = [(data.template.messages(o, ()), o.image) for o in obs]
    many, single = policy.encode_many(items), [policy.encode(m, image) for m, image in items]
    for a, b in zip(many, single):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


# ---------------------------------------------------------------- fit, sft and eval on each family


def _trainable(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt / "trainable.pt", weights_only=True)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_fit_trains_every_family(family, finetune, tmp_path):
    name, path = family
    extra = [] if finetune == "full" else ["model.finetune=lora", "model.lora.r=4", "model.lora.alpha=8", "ppo.lr=1e-3"]
    result = fit(load_config(ROOT / "conf/numberline.yaml", [
        *SMALL, *extra, f"model.path={path}", "trainer.max_updates=2", "trainer.checkpoint_every=1",
        f"trainer.out_dir={tmp_path}"]))
    first, last = _trainable(tmp_path / "checkpoints/update_000001"), _trainable(result.checkpoint)
    assert result.checkpoint == tmp_path / "checkpoints/update_000002"
    assert first.keys() == last.keys() and any(k.startswith("value_head.") for k in last)
    model_keys = [k for k in last if not k.startswith("value_head.")]
    assert model_keys and (finetune == "full" or all("lora_" in k for k in model_keys))
    assert any(not torch.equal(first[k], last[k]) for k in model_keys)  # the VLM itself moved
    assert result.counters["env_steps"] == 2 * 4 and math.isfinite(result.metrics["losses/value"])


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_sft_then_eval_on_every_family(family, finetune, tmp_path):
    from agentrl.commands.evaluate import evaluate
    from agentrl.commands.sft import sft

    name, path = family
    extra = [] if finetune == "full" else ["model.finetune=lora", "model.lora.r=4", "model.lora.alpha=8"]
    common = [*SMALL, *extra, f"model.path={path}"]
    ckpt = sft(load_config(ROOT / "conf/sft/numberline.yaml", [
        *common, "sft.examples=8", "sft.epochs=1", "sft.batch_size=4", f"trainer.out_dir={tmp_path}"]), argv=["test"])
    metrics = json.loads((ckpt / "sft_metrics.json").read_text())
    assert metrics and (ckpt / ("model" if finetune == "full" else "adapter")).is_dir()
    result = evaluate(load_config(ROOT / "conf/numberline.yaml", common), str(ckpt), 3, greedy=True)
    assert result["episodes"] == len(result["per_episode"]) == 3 and 0 <= result["parse_failure_rate"] <= 1
    if finetune == "full":  # DIR/model is a plain checkpoint of the family, processor included
        model, processor = load_vlm(ModelConfig(path=str(ckpt / "model")))
        assert (type(model).__name__, type(processor).__name__) == STOCK[name]
        saved = _trainable(ckpt)
        params = dict(model.named_parameters())
        assert all(torch.equal(params[k.removeprefix("model.")], v) for k, v in saved.items())
