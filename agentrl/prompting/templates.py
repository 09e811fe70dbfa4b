"""PromptTemplates: an observation becomes chat messages; expert fields become a JSON answer.

The template owns the output format the model is asked for. With chain of
thought (``cot=True``) the answer carries the game's fields and "thoughts" before
"action"; without it only ``{"action": ...}`` (the paper's no-CoT ablation).
The messages are Hugging Face multimodal chat messages; the policy renders them
with the processor's own chat template, so any VLM's format is respected.
"""

from __future__ import annotations

import inspect
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from agentrl.config import ConfigError
from agentrl.envs.base import EnvObs

Step = tuple
"""One earlier step of an episode, as the prompt may show it: (the observation's text state, the action
taken), or with ``prompt.history_images`` (state text, action, the observation's image (H, W, 3) uint8)."""

FRAME = "\x00frame\x00"
"""Where an earlier step's image goes in the prompt text; :meth:`PromptTemplate.messages` makes each an image item."""


class PromptTemplate(ABC):
    """Base template: task text + legal actions + JSON output format."""

    def __init__(self, cot: bool = True, text_state: bool = False, image_position: str = "first") -> None:
        self.cot = cot
        self.text_state = text_state
        self.image_position = image_position

    @classmethod
    def from_config(cls, cfg: Any) -> PromptTemplate:
        """Build from the ``prompt`` config section (a subclass with other constructor arguments overrides this)."""
        kwargs = {"cot": cfg.cot, "text_state": cfg.text_state, "image_position": cfg.image_position}
        try:
            inspect.signature(cls).bind(**kwargs)
        except TypeError as e:
            raise ConfigError(f"prompt.template: {cls.__name__}({e}); override {cls.__name__}.from_config "
                              f"to build it from the prompt section") from None
        return cls(**kwargs)

    @abstractmethod
    def task_text(self, obs: EnvObs) -> str:
        """What the game is and what the image shows."""

    def format_fields(self, obs: EnvObs) -> dict[str, str]:
        """Output keys (before "thoughts" and "action") with a short description of each value."""
        return {}

    def thoughts_hint(self, obs: EnvObs) -> str:
        """What the "thoughts" value should contain."""
        return "think step by step about which action reaches the goal"

    def prompt(self, obs: EnvObs, history: Sequence[Step] = ()) -> str:
        """The user-turn text for ``obs``, after ``history`` (earlier steps of its episode, oldest first)."""
        parts = [self.task_text(obs), *self.history_text(obs, history)]
        if self.text_state and obs.text:
            parts.append(f"State: {obs.text}")
        parts.append(self.actions_text(obs))
        parts.append("Answer with a JSON object in this format:\n" + self.format_text(obs))
        return "\n".join(parts)

    def history_text(self, obs: EnvObs, history: Sequence[Step]) -> list[str]:
        """Prompt lines for the earlier steps (none without history).

        A step's state text shows where the prompt shows text state
        (:meth:`shows_text_state`); otherwise only its action.
        A step with an image (``prompt.history_images``) shows it before its action, as a
        :data:`FRAME` placeholder.
        """
        if not history:
            return []
        show_state = self.shows_text_state(obs)
        lines = []
        for state, action, *frame in history:
            seen = f"{FRAME} " if frame and frame[0] is not None else ""
            if show_state and state:
                seen += f"{state} "
            lines.append(f"- {seen}-> {json.dumps(action, ensure_ascii=False)}" if seen
                         else f"- {json.dumps(action, ensure_ascii=False)}")
        return [f"Your last {len(history)} steps in this episode (state -> action, oldest first):", *lines]

    def actions_text(self, obs: EnvObs) -> str:
        return "Legal actions: " + ", ".join(f'"{a}"' for a in obs.legal_actions) + "."

    def format_text(self, obs: EnvObs) -> str:
        fields: dict[str, str] = {}
        if self.cot:
            fields.update(self.format_fields(obs))
            fields["thoughts"] = f"<{self.thoughts_hint(obs)}>"
        fields["action"] = "<one legal action>"
        return "{" + ", ".join(f'"{k}": "{v}"' for k, v in fields.items()) + "}"

    def shows_text_state(self, obs: EnvObs) -> bool:
        """Whether the prompt writes the text state (else the image alone shows it)."""
        return self.text_state or obs.image is None

    def messages(self, obs: EnvObs, history: Sequence[Step] = ()) -> list[dict[str, Any]]:
        """Chat messages: one user turn with the prompt and the image (when there is one).

        ``image_position``: "first", "after_task" (after :meth:`task_text`, before
        the state, legal actions and answer format) or "last". The text before the
        image is what a batch's prompts share, run once by the policy (policy.share_prefix).
        """
        return self.render(obs, history)[0]

    def render(self, obs: EnvObs, history: Sequence[Step] = ()) -> tuple[list[dict[str, Any]], Any]:
        """(:meth:`messages`, the images their image items stand for, in order): None without images, the
        observation's image alone, or a list when earlier steps' images (``prompt.history_images``) come too."""
        text = self.prompt(obs, history)
        frames = iter([step[2] for step in history if len(step) > 2 and step[2] is not None])
        content: list[tuple[dict[str, Any], Any]] = []  # (item, its image)

        def add_text(part: str) -> None:
            for k, piece in enumerate(part.split(FRAME)):
                if k:
                    content.append(({"type": "image"}, next(frames)))
                if piece:
                    content.append(({"type": "text", "text": piece}, None))

        image = ({"type": "image"}, obs.image)
        task = self.task_text(obs)
        if obs.image is None:
            add_text(text)
        elif self.image_position == "first":
            content.append(image)
            add_text(text)
        elif self.image_position == "after_task" and text.startswith(task) and len(text) > len(task):
            add_text(task)
            content.append(image)
            add_text(text[len(task):])
        else:
            add_text(text)
            content.append(image)
        images = [im for item, im in content if item["type"] == "image"]
        messages = [{"role": "user", "content": [item for item, _ in content]}]
        return messages, (images[0] if len(images) == 1 else images or None)

    def answer(self, fields: dict[str, Any]) -> str:
        """The JSON answer for expert ``fields`` (keys in format order, ending with "action")."""
        if "action" not in fields:
            raise ValueError(f"expert fields need an 'action' key, got keys {list(fields)}")
        if not self.cot:
            fields = {"action": fields["action"]}
        return json.dumps(fields, ensure_ascii=False)


_GYM_CARDS_TASKS = {
    "numberline": (
        "You are playing Number Line. The image shows a target number and a current number. "
        'Move the current number to the target: "+" adds one, "-" subtracts one.'
    ),
    "ezpoints": (
        "You are playing EZPoints. The image shows two cards and the formula so far. "
        "Build a formula that uses each card once and equals {target}, one token at a time; "
        'J, Q and K count as 10. Finish with "=".'
    ),
    "points24": (
        "You are playing Points24. The image shows four cards and the formula so far. "
        "Build a formula that uses each card once and equals {target}, one token at a time; "
        'J, Q and K count as 10. Finish with "=".'
    ),
    "blackjack": (
        "You are playing Blackjack. The image shows the dealer's visible card on top and your cards "
        "below. Get closer to 21 than the dealer without going over."
    ),
}

_GYM_CARDS_FIELDS = {
    "numberline": {"current number": "<number>", "target number": "<number>"},
    "ezpoints": {"cards": "<the cards>", "current formula": "<formula so far>"},
    "points24": {"cards": "<the cards>", "current formula": "<formula so far>"},
    "blackjack": {},
}


class GymCardsTemplate(PromptTemplate):
    """NumberLine, EZPoints, Points24, Blackjack (the paper's gym_cards)."""

    def task_text(self, obs: EnvObs) -> str:
        try:
            text = _GYM_CARDS_TASKS[obs.env_id]
        except KeyError:
            raise ValueError(
                f"GymCardsTemplate has no prompt for env {obs.env_id!r}; known: {', '.join(_GYM_CARDS_TASKS)}"
            ) from None
        return text.format(target=obs.extra.get("target", 24 if obs.env_id == "points24" else 12))

    def format_fields(self, obs: EnvObs) -> dict[str, str]:
        return _GYM_CARDS_FIELDS.get(obs.env_id, {})

    def thoughts_hint(self, obs: EnvObs) -> str:
        return "read the image, then think about which action to choose"


class AlfworldTemplate(PromptTemplate):
    """ALFWorld household tasks: scene text, task, admissible commands."""

    def task_text(self, obs: EnvObs) -> str:
        seen = "the image and the text" if obs.image is not None else "the text"
        return (
            f"You are a household robot in a room. Use {seen} to finish the task.\n"
            f"Task: {obs.task}\nObservation: {obs.text}"
        )

    def shows_text_state(self, obs: EnvObs) -> bool:
        return True  # the observation text is always in the prompt

    def actions_text(self, obs: EnvObs) -> str:
        return "Admissible actions: " + ", ".join(f'"{a}"' for a in obs.legal_actions) + "."

    def thoughts_hint(self, obs: EnvObs) -> str:
        return "think about what to do next to finish the task"

    def prompt(self, obs: EnvObs, history: Sequence[Step] = ()) -> str:
        # ALFWorld's observation already is the text state; never write it twice.
        parts = [self.task_text(obs), *self.history_text(obs, history), self.actions_text(obs)]
        parts.append("Answer with a JSON object in this format:\n" + self.format_text(obs))
        return "\n".join(parts)


def tokenizer_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Prompts and answers of every game, for training the tiny model's tokenizer.

    Synthetic states are enough: the tokenizer only needs the vocabulary of the
    prompts and answers (byte fallback covers anything else).
    """
    rng = random.Random(seed)
    ranks = ["A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K"]
    texts = []
    for i in range(n):
        env_id = list(_GYM_CARDS_TASKS)[i % 4]
        cot = i % 3 != 0
        tmpl = GymCardsTemplate(cot=cot, text_state=i % 2 == 0)
        if env_id == "numberline":
            t, c = rng.sample(range(6), 2)
            actions = ["-", "+"]
            fields = {"current number": c, "target number": t,
                      "thoughts": f"The current number is {c} and the target is {t}, so I move closer.",
                      "action": "+" if t > c else "-"}
            text = f"Target: {t}, Current: {c}"
        elif env_id == "blackjack":
            actions = ["stand", "hit"]
            total = rng.randint(4, 21)
            fields = {"thoughts": f"My total is {total} and the dealer shows {rng.choice(ranks)}.",
                      "action": rng.choice(actions)}
            text = f"Player sum: {total}"
        else:
            k = 2 if env_id == "ezpoints" else 4
            cards = rng.choices(ranks, k=k)
            actions = [str(v) for v in range(1, 11)] + ["+", "-", "*", "/", "(", ")", "="]
            formula = "".join(rng.choices(actions, k=rng.randint(0, 6)))
            fields = {"cards": cards, "current formula": formula,
                      "thoughts": f"The cards are {', '.join(cards)}; next I add a number.",
                      "action": rng.choice(actions)}
            text = f"Cards: {cards}, Formula: {formula}"
        obs = EnvObs(image=None, text=text, legal_actions=actions, env_id=env_id)
        texts += [tmpl.prompt(obs), tmpl.answer(fields)]
    alf = AlfworldTemplate()
    names = list(ALFWORLD_NAMES)
    for i in range(max(n // 4, len(names))):  # every name at least once: each becomes one token
        a, b, c, d = names[i % len(names)], *rng.choices(names, k=3)
        verb = ("heat", "clean", "cool")[i % 3]
        cmds = [f"go to {a} {rng.randint(1, 5)}", f"open {b} 1", f"close {b} 1", f"take {c} 1 from {a} 1",
                f"move {c} 1 to {d} 2", f"{verb} {c} 1 with {d} 1", f"use {c} 1", f"examine {a} 1",
                f"slice {c} 1 with {d} 1", "look", "inventory"]
        text = " ".join(s.format(a=a, b=b, c=c, d=d, verb=verb) for s in ALFWORLD_FEEDBACK[i % 3 :: 3])
        task = ALFWORLD_TASKS[i % len(ALFWORLD_TASKS)].format(c=c, d=d)
        obs = EnvObs(image=None, text=text, legal_actions=cmds, env_id="alfworld", task=task)
        texts += [alf.prompt(obs), alf.answer({"thoughts": f"I should find a {c} first.", "action": cmds[i % 9]})]
    return texts


ALFWORLD_FEEDBACK = (  # the engine's sentences (alfworld/data/alfred.twl2), for the tokenizer corpus
    "You are in the middle of a room. Looking quickly around you, you see a {a} 1, a {b} 2, and a {d} 1.",
    "You arrive at {a} 1. On the {a} 1, you see a {c} 1, and a {b} 2.",
    "You arrive at {b} 1. The {b} 1 is closed.",
    "You open the {b} 1. The {b} 1 is open. In it, you see nothing.",
    "You close the {b} 1.",
    "You pick up the {c} 1 from the {a} 1.",
    "You move the {c} 1 to the {d} 2.",
    "You {verb} the {c} 1 using the {d} 1.",
    "You turn on the {c} 1.",
    "You are carrying: a {c} 1.",
    "This is a normal {c} 1. In it, you see nothing.",
    "Nothing happens.",
)
ALFWORLD_TASKS = ("put a {c} in {d}", "put some {c} on {d}", "put a clean {c} in {d}", "put a hot {c} in {d}",
                  "put a cool {c} in {d}", "put two {c} in {d}", "look at {c} under the {d}",
                  "examine the {c} with the {d}")
ALFWORLD_NAMES = (
    "alarmclock apple armchair baseballbat basketball bathtub bathtubbasin bed blinds book boots bowl box bread "
    "butterknife cabinet candle cart cd cellphone chair cloth coffeemachine coffeetable countertop creditcard cup "
    "curtains desk desklamp diningtable dishsponge drawer dresser egg floorlamp footstool fork fridge garbagecan "
    "glassbottle handtowel handtowelholder houseplant kettle keychain knife ladle laptop laundryhamper "
    "laundryhamperlid lettuce lightswitch microwave mirror mug newspaper ottoman painting paintinghanger pan "
    "papertowel papertowelroll pen pencil peppershaker pillow plate plunger poster pot potato remotecontrol safe "
    "saltshaker scrubbrush shelf showerdoor showerglass sidetable sink sinkbasin soapbar soapbottle sofa spatula "
    "spoon spraybottle statue stoveburner stoveknob teddybear television tennisracket tissuebox toaster toilet "
    "toiletpaper toiletpaperhanger toiletpaperroll tomato towel towelholder tvstand vase watch wateringcan window "
    "winebottle"
).split()
"""ALFRED's object and receptacle names as ALFWorld writes them (alfworld.gen.constants, lower case): each is one
token of the tiny model (a name split into pieces that are also words, " to" + "ilet", made the SFT policy loop)."""
