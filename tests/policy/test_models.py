"""Loading VLMs and choosing what trains: load_vlm, apply_finetuning and the policy's helpers."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from agentrl.config import ConfigError, LoraConfig, ModelConfig
from agentrl.policy.finetuning import apply_finetuning, lora_target_modules
from agentrl.policy.loading import load_vlm, text_hidden_size
from agentrl.policy.processors import image_token_count, suppressed_token_ids
from agentrl.policy.tiny import build as tiny
from agentrl.policy.tiny import llava
from agentrl.policy.tiny import spec as tiny_spec

torch.set_num_threads(1)

CORPUS = ['{"thoughts": "the number is 3, the target 5", "action": "+"}', "What card is shown?"] * 20
VISION = ("vision_tower", "multi_modal_projector")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny.build_tiny_vlm(tmp_path_factory.mktemp("tiny"), CORPUS, seed=3)


@pytest.fixture
def loaded(tiny_dir):
    return load_vlm(ModelConfig(path=str(tiny_dir)))


def _batch(processor, texts=("Which?", "Which number is on the card?")):
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for t in texts
    ]
    images = [Image.new("RGB", (112, 112), (i * 90, 30, 200)) for i in range(len(texts))]
    return processor(text=prompts, images=images, return_tensors="pt", padding=True)


def _lora(model, **kw):
    return apply_finetuning(model, ModelConfig(lora=LoraConfig(r=4, alpha=8, **kw)))


def _trainable(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


# ---------------------------------------------------------------- load_vlm


def test_round_trip_gives_identical_logits(tiny_dir):
    built, processor = llava.tiny_vlm(CORPUS, seed=3)
    model, loaded_processor = load_vlm(ModelConfig(path=str(tiny_dir)))
    batch = _batch(processor)
    assert torch.equal(batch["input_ids"], _batch(loaded_processor)["input_ids"])
    with torch.no_grad():
        assert torch.equal(built(**batch).logits, model(**batch).logits)


def test_load_vlm_sets_dtype_left_padding_and_pad_token(tiny_dir):
    model, processor = load_vlm(
        ModelConfig(path=str(tiny_dir), dtype="bfloat16", attn_implementation="eager")
    )
    assert next(model.parameters()).dtype == torch.bfloat16
    assert processor.tokenizer.padding_side == "left" and processor.tokenizer.pad_token is not None
    assert model.generation_config.pad_token_id == processor.tokenizer.pad_token_id


def test_tiny_path_uses_the_cached_build(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny, "default_corpus", lambda: CORPUS)
    model, processor = load_vlm(ModelConfig(path="tiny"))
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert [p.name for p in tmp_path.iterdir()] == [tiny.tiny_model_path().name]


def test_missing_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no-such-model.*not a local directory"):
        load_vlm(ModelConfig(path=str(tmp_path / "no-such-model")))


def test_bare_tokenizer_directory_is_rejected(tmp_path):
    tiny_spec.train_tokenizer(CORPUS).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=f"{tmp_path} is not a vision-language checkpoint"):
        load_vlm(ModelConfig(path=str(tmp_path)))


# ---------------------------------------------------------------- apply_finetuning


def test_lora_without_vision_tower_freezes_vision(loaded):
    model = _lora(loaded[0], vision_tower=False)
    trainable = _trainable(model)
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(v in n for n in trainable for v in VISION)
    assert any("language_model.layers.0.mlp.down_proj.lora_A" in n for n in trainable)
    assert not any("lm_head" in n for n, _ in model.named_modules() if "lora" in n)


def test_lora_with_vision_tower_adapts_tower_and_projector_but_not_lm_head(loaded):
    model = _lora(loaded[0], vision_tower=True)
    trainable = _trainable(model)
    assert any("vision_tower" in n for n in trainable)
    assert any("multi_modal_projector.linear_1.lora_A" in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)
    assert not any("lm_head" in n for n, _ in model.named_modules() if "lora" in n)


def test_target_names_and_regex_stay_in_scope(loaded):
    model = loaded[0]
    names = lora_target_modules(model, LoraConfig(target_modules="q_proj, v_proj", vision_tower=False))
    assert names and all(n.startswith("model.language_model.") for n in names)
    assert {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "v_proj"}
    with_vision = lora_target_modules(model, LoraConfig(target_modules="q_proj,v_proj", vision_tower=True))
    assert any("vision_tower" in n for n in with_vision)  # plain names also hit CLIP
    regex = lora_target_modules(model, LoraConfig(target_modules=r".*layers\.0\..*_proj", vision_tower=False))
    assert regex and all(".layers.0." in n and "vision" not in n for n in regex)
    assert "lm_head" not in lora_target_modules(model, LoraConfig(target_modules="lm_head,q_proj"))
    with pytest.raises(ConfigError, match="no_such_proj"):
        lora_target_modules(model, LoraConfig(target_modules="no_such_proj"))


def test_full_finetune_trains_everything(loaded):
    model = loaded[0]
    for p in model.parameters():
        p.requires_grad_(False)
    model = apply_finetuning(model, ModelConfig(finetune="full"))
    assert all(p.requires_grad for p in model.parameters())


def test_gradient_checkpointing_with_lora_backpropagates(loaded):
    model, processor = loaded
    model = apply_finetuning(
        model, ModelConfig(gradient_checkpointing=True, lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    )
    model.train()
    assert model.base_model.model.is_activation_checkpointing
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)  # B starts at zero: make A's gradient non-zero
    model(**_batch(processor)).logits.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


# ---------------------------------------------------------------- helpers


def test_hidden_size_and_image_tokens(loaded):
    model, processor = loaded
    assert text_hidden_size(model) == 128
    assert text_hidden_size(_lora(model)) == 128
    assert suppressed_token_ids(processor) == [processor.image_token_id]
    assert image_token_count(processor, 300, 200) == 16


def test_suppressing_the_image_token_keeps_it_out_of_samples(loaded):
    model, processor = loaded
    (image_id,) = suppressed_token_ids(processor)
    bias = torch.zeros(model.config.text_config.vocab_size)
    bias[image_id] = 100.0  # make the image token the model's favourite
    model.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    batch = _batch(processor)
    prompt_len = batch["input_ids"].shape[1]
    kw = {"max_new_tokens": 6, "do_sample": True, "pad_token_id": processor.tokenizer.pad_token_id}
    torch.manual_seed(0)
    free = model.generate(**batch, **kw)[:, prompt_len:]
    assert (free == image_id).any()  # the test can fail
    torch.manual_seed(0)
    kept = model.generate(**batch, suppress_tokens=suppressed_token_ids(processor), **kw)[:, prompt_len:]
    assert kept.shape[1] == 6 and not (kept == image_id).any()


def test_qwen2_vl_model_loads_and_takes_language_only_lora(tmp_path):
    from transformers import AutoModelForImageTextToText, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(
        text_config={
            "vocab_size": 128,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "bos_token_id": None,
            "eos_token_id": None,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
        },
        vision_config={"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2},
        image_token_id=125,
        video_token_id=126,
        vision_start_token_id=127,
    )
    Qwen2VLForConditionalGeneration(config).save_pretrained(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert text_hidden_size(model) == 32
    trainable = _trainable(_lora(model, vision_tower=False))
    assert trainable and not any("visual" in n for n in trainable)
    assert any("language_model.layers.0.self_attn.q_proj" in n for n in trainable)
