"""The policy's log-probability: the action span from character offsets, for any tokenizer."""

import torch

from agentrl.config import load_config
from agentrl.policy.module import char_to_token
from agentrl.prompting.parsing import JsonActionParser
from agentrl.training.build import build


def action_token_start(tokenizer, ids, text):
    """The token where the parser's action span starts (None: no span)."""
    span = JsonActionParser().parse(text, ["+", "-"]).action_span
    return None if span is None else char_to_token(tokenizer, ids, span[0])


class PieceTokenizer:
    """A tokenizer over fixed string pieces, to split '"action":' wherever a test wants."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[int(i)] for i in ids)


def test_action_span_when_the_key_starts_inside_a_token():
    pieces = ['{"th', 'oughts": "go', ' up", "', "act", "ion", '":', ' "+', '"}']
    tok = PieceTokenizer(pieces)
    ids = list(range(len(pieces)))
    # the key's opening quote is the last char of piece 2, so piece 2 starts the action span
    assert action_token_start(tok, ids, tok.decode(ids)) == 2


def test_action_span_when_one_token_holds_key_and_value():
    pieces = ['{"thoughts": "x", ', '"action": "+"}']
    tok = PieceTokenizer(pieces)
    assert action_token_start(tok, [0, 1], tok.decode([0, 1])) == 1
    char_level = PieceTokenizer(list('{"a": 1, "action": "-"}'))
    ids = list(range(len(char_level.pieces)))
    assert action_token_start(char_level, ids, char_level.decode(ids)) == 9  # index of the quote


def test_action_span_none_without_key():
    tok = PieceTokenizer(['{"thoughts": ', '"hmm"}'])
    assert action_token_start(tok, [0, 1], tok.decode([0, 1])) is None


def test_weights_with_real_byte_level_tokenizer_and_unicode(tiny_path):
    cfg = load_config("conf/numberline.yaml", ["policy.thought_coef=0.3"])
    policy, data = build(cfg)
    tok = policy.tokenizer
    for text in ['{"thoughts": "déjà vu → ünïcode 🎲", "action": "+"}',
                 '{"current number": 3, "thoughts":"x","action":"-"}']:
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        decoded = tok.decode(ids, skip_special_tokens=True)
        start_char = JsonActionParser().parse(decoded, ["+", "-"]).action_span[0]
        w = policy.token_weights(torch.tensor(ids), start_char, cot=True)
        start = int((w == 1.0).nonzero()[0])
        # every token before the span decodes to text strictly before '"action"', the span covers it
        before = tok.decode(ids[:start], skip_special_tokens=True)
        assert '"action"' not in before and '"action"' in tok.decode(ids[start:], skip_special_tokens=True)
        assert torch.all(w[:start] == 0.3) and torch.all(w[start:] == 1.0)
        assert torch.all(policy.token_weights(torch.tensor(ids), start_char, cot=False) == 1.0)
    data.envs.close()


def test_teacher_forced_logprobs_match_generate(tiny_path):
    """Scoring a left-padded batch reproduces the log-probs generate sampled from."""
    torch.manual_seed(0)
    cfg = load_config("conf/numberline.yaml", ["rollout.max_new_tokens=12", "rollout.temperature=0.7",
                                               "env.num_envs=4"])
    policy, data = build(cfg)
    obs = data.envs.reset(0)
    prompts = [data.encode(o) for o in obs]
    data.template.text_state = True  # longer prompts for two envs: forces left padding
    prompts[1], prompts[3] = data.encode(obs[1]), data.encode(obs[3])
    assert len({p["input_ids"].shape[1] for p in prompts}) == 2
    inputs = policy.batcher.collate(prompts)
    out = policy.model.generate(**inputs, do_sample=True, temperature=0.7, top_k=0, max_new_tokens=12,
                                pad_token_id=policy.batcher.pad_id, output_logits=True, return_dict_in_generate=True)
    gen = out.sequences[:, inputs["input_ids"].shape[1]:]
    expected = torch.log_softmax(torch.stack(out.logits, 1).float() / 0.7, -1).gather(-1, gen[..., None])[..., 0]
    train = policy.collate_train(prompts, list(gen), [torch.ones(gen.shape[1])] * 4)
    with torch.no_grad():
        token_logp, values, _ = policy(train)
    assert torch.allclose(token_logp, expected, atol=1e-5)
    assert values.shape == (4,) and values.dtype == torch.float32
    data.envs.close()
