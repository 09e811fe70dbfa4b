"""The tiny offline VLM: seeded build, processor, chat template, tokenizer, cache."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from agentrl.policy.tiny import build as tiny
from agentrl.policy.tiny import llava
from agentrl.policy.tiny import spec as tiny_spec
from agentrl.policy.tiny.build import build_tiny_vlm, tiny_model_path
from agentrl.policy.tiny.llava import tiny_vlm
from agentrl.policy.tiny.spec import TinySpec, train_tokenizer

torch.set_num_threads(1)

CORPUS = [
    'You are playing NumberLine. Move the current number to the target. {"thoughts": "", "action": ""}',
    '{"thoughts": "the current number is 3 and the target is 5, so I move +", "action": "+"}',
    '{"thoughts": "the cards are 2, 4, 6 and 8", "action": "(2+4)*8/6"}',
] * 20


def _messages(text: str = "What number is shown?") -> list[dict]:
    return [
        {"role": "system", "content": "You are a game agent."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny"), CORPUS)


def test_build_is_seeded_small_and_learnable_sized():
    a, _ = tiny_vlm(CORPUS, seed=0)
    b, _ = tiny_vlm(CORPUS, seed=0)
    c, _ = tiny_vlm(CORPUS, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert sum(p.numel() for p in a.parameters()) < 5_000_000
    assert a.config.text_config.hidden_size == 128 and a.config.text_config.num_hidden_layers == 4
    assert a.config.vision_config.image_size == 112 and a.config.vision_config.patch_size == 28


def test_building_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_vlm(CORPUS, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_saved_folder_loads_like_a_llava_hf_checkpoint(built, capfd):
    processor = AutoProcessor.from_pretrained(built)
    model = AutoModelForImageTextToText.from_pretrained(built)
    assert type(processor).__name__ == "LlavaProcessor"
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert processor.tokenizer.padding_side == "left"
    assert processor.image_processor.size == {"height": 112, "width": 112}
    assert "torchvision" not in capfd.readouterr().err  # the PIL image processor is chosen silently


def test_processor_expands_image_token_and_pads_left(built):
    processor = AutoProcessor.from_pretrained(built)
    prompts = [
        processor.apply_chat_template(_messages(t), add_generation_prompt=True, tokenize=False)
        for t in ("short", "a much longer question about the picture")
    ]
    images = [Image.new("RGB", (300, 200), "white"), Image.new("RGB", (64, 64), "black")]
    batch = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    counts = (batch["input_ids"] == processor.image_token_id).sum(1)
    assert counts.tolist() == [TinySpec().num_image_tokens] * 2 == [16, 16]
    assert batch["pixel_values"].shape == (2, 3, 112, 112)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()  # left padding


def test_chat_template_renders_chatml_with_image_and_generation_prompt(built):
    processor = AutoProcessor.from_pretrained(built)
    messages = [
        *_messages("Pick."),
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "again"},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a game agent.<|im_end|>\n"
        "<|im_start|>user\n<image>Pick.<|im_end|>\n"
        "<|im_start|>assistant\nok<|im_end|>\n"
        "<|im_start|>user\nagain<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = processor.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert no_prompt.endswith("again<|im_end|>\n")


@pytest.mark.parametrize("text", ["héllo wörld", "漢字 😀 ∑x²", "tab\tnew\nline \x00\x7f", '{"action": "+"}'])
def test_any_text_round_trips_through_byte_fallback(text):
    tokenizer = train_tokenizer(CORPUS, vocab_size=500)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_special_tokens_are_single_ids():
    tokenizer = train_tokenizer(CORPUS)
    for token in tiny_spec.SPECIAL_TOKENS:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.pad_token == tiny_spec.PAD_TOKEN and tokenizer.eos_token == tiny_spec.EOS_TOKEN
    assert tokenizer.padding_side == "left"


def test_tiny_model_path_caches_atomically_and_versions(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path))
    first = tiny_model_path(lambda: CORPUS)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert first.parent == tmp_path and first.name.startswith("tiny-vlm-v")
    assert tiny_model_path(lambda: CORPUS) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    other = tiny_model_path(lambda: [*CORPUS, "a new prompt"])
    assert other != first
    assert sorted(os.listdir(tmp_path)) == sorted([first.name, other.name])  # no temp dirs left
    assert tiny.tiny_version(CORPUS) != tiny.tiny_version(CORPUS, TinySpec(text_layers=2))


def test_make_tiny_model_cli_writes_a_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tiny, "default_corpus", lambda: CORPUS)
    assert tiny.make_tiny_model(str(tmp_path / "m")) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert (tmp_path / "m" / "chat_template.jinja").is_file()
    assert str(tmp_path / "m") in capsys.readouterr().out


def test_the_2b_size_has_the_shapes_it_names():
    """Checked on the meta device: no 1.6B weights are built here."""
    import torch
    from transformers import LlavaForConditionalGeneration

    spec = tiny_spec.SIZES["2b"]
    config = llava.tiny_config(spec, tiny_spec.train_tokenizer(CORPUS, spec.vocab_size, spec.max_positions))
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    text, vision = count(model.model.language_model), count(model.model.vision_tower)
    # Qwen2-VL-2B's language model without its 151k-token embedding: 28 x (attention 5.5M + MLP 41.3M)
    assert 1.30e9 < text < 1.32e9, text
    assert 3.0e8 < vision < 3.1e8, vision  # CLIP ViT-L/14-336
    assert spec.num_image_tokens == 576 and config.text_config.intermediate_size == 8960


def test_make_tiny_model_size_builds_that_spec_in_bf16(tmp_path, monkeypatch, capsys):
    from safetensors import safe_open

    monkeypatch.setattr(tiny, "default_corpus", lambda: CORPUS)
    small = TinySpec(image_size=56, patch_size=14, text_intermediate=200, vision_intermediate=100)
    monkeypatch.setitem(tiny_spec.SIZES, "2b", small)  # the real one is ~3 GB
    assert tiny.make_tiny_model(str(tmp_path / "m"), "2b") == 0
    with safe_open(tmp_path / "m" / "model.safetensors", "pt") as f:
        names = list(f.keys())
        assert {str(f.get_tensor(n).dtype) for n in names} == {"torch.bfloat16"}
        up = next(n for n in names if "language_model" in n and "up_proj" in n)
        assert f.get_tensor(up).shape[0] == 200
    assert "16 image tokens of 56 px" in capsys.readouterr().out


def test_every_alfworld_name_and_engine_word_is_one_token(tiny_path):
    """The tiny tokenizer knew a third of ALFRED's names: "toilet" was " to" + "ile" + "t", and the SFT policy
    looped on "go to to to to toilet 1" (" to" both the word and toilet's start). Each name, each command verb
    (the engine's "move", not "put") and each word of its fixed sentences is one token."""
    from agentrl.prompting.templates import ALFWORLD_FEEDBACK, ALFWORLD_NAMES

    tokenizer = AutoProcessor.from_pretrained(tiny_path).tokenizer
    words = {*ALFWORLD_NAMES, "from", "to", "with"} | {w.strip(".,:") for s in ALFWORLD_FEEDBACK for w in s.split()}
    split = {f" {w}": tokenizer.tokenize(f" {w}") for w in sorted(words) if w.isalpha()}
    verbs = ("go", "open", "close", "take", "move", "heat", "cool", "clean", "use", "examine", "slice", "look",
             "inventory")  # a command's first word follows the quote: '"take tomato 1 ...'
    split |= {v: tokenizer.tokenize(v) for v in verbs}
    assert {w: t for w, t in split.items() if len(t) > 1} == {}
    assert tokenizer.tokenize(" toilet") != tokenizer.tokenize(" to")


def test_the_in_tree_alfworld_names_are_alfworlds():
    constants = pytest.importorskip("alfworld.gen.constants")
    from agentrl.prompting.templates import ALFWORLD_NAMES

    assert sorted(ALFWORLD_NAMES) == sorted({n.lower() for n in (*constants.OBJECTS, *constants.RECEPTACLES)})
