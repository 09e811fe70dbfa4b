"""A searching ALFWorld expert: it acts only on what the agent sees (``env.options.expert: search``).

alfworld's handcoded planner (:mod:`.expert`) reads the game's hidden state and walks straight to the
receptacle that holds the object, which no prompt shows. This expert reads only the opening text (the
room description and the task), each step's feedback and the admissible commands, never the engine's
facts, ``traj_data.json`` or the PDDL. It is reactive: its next action is a function of the opening
text, the current admissible commands and feedback, and at most the last 3 (action, feedback) steps,
so it can be predicted from a prompt with ``prompt.history >= 3``.

- Search: visit the receptacles in the order the room description lists them, keeping those whose
  class may hold the target (``constants.VAL_RECEPTACLE_OBJECTS``, a prior the object's name gives).
  The next one is the first such receptacle after the current one in the description, wrapping
  around, so no memory of visited places is needed. Open a closed one; take the target once seen.
- Holding the target: clean / heat / cool it at the first sinkbasin / microwave / fridge unless the
  last steps' feedback shows it done; for a look task turn on the lamp where "use <lamp>" is
  admissible, else go to the next lamp stand; then go to the first receptacle of the goal type, open
  it if closed, and move the object there.
- Anything else in hand (an exploring policy's doing) is put down first.

Where is the agent and what does it hold? The receptacle whose "examine" command is admissible is
where it stands; a "move X to ..." or "heat X with ..." command names what it holds, an admissible
"take" means empty hands, and otherwise the last steps' feedback decides (or it asks "inventory").
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from functools import cache
from typing import Any

HISTORY = 3
"""Steps of (action, feedback) the expert may look back on."""

# task kind -> (verb, the receptacle class that does it)
_TOOLS = {"clean": ("clean", "sinkbasin"), "heat": ("heat", "microwave"), "cool": ("cool", "fridge")}
_TASKS = (  # alfworld.gen.goal_library's templates, most specific first
    ("clean", r"put a clean (\w+) in (\w+)"), ("clean", r"clean some (\w+) and put it in (\w+)"),
    ("heat", r"put a hot (\w+) in (\w+)"), ("heat", r"heat some (\w+) and put it in (\w+)"),
    ("cool", r"put a cool (\w+) in (\w+)"), ("cool", r"cool some (\w+) and put it in (\w+)"),
    ("pick2", r"put two (\w+) in (\w+)"), ("pick2", r"find two (\w+) and put them in (\w+)"),
    ("look", r"look at (\w+) under the (\w+)"), ("look", r"examine the (\w+) with the (\w+)"),
    ("pick", r"put a (\w+) in (\w+)"), ("pick", r"put some (\w+) on (\w+)"),
)
LAMP_STANDS = ("desk", "sidetable", "dresser", "shelf", "coffeetable", "diningtable", "tvstand")
"""Where lamps stand (lamps are in no receptacle list of the constants)."""


@dataclass(frozen=True)
class Task:
    """A task as its text says it: kind (pick, look, clean, heat, cool, pick2), object and receptacle or lamp."""

    kind: str
    obj: str
    target: str
    """The goal receptacle's class, or the lamp's for a look task (lower case, as the game writes them)."""


def parse_task(text: str) -> Task | None:
    """The task of ``text`` ("heat some apple and put it in fridge"), or None for an unknown form."""
    text = text.strip().rstrip(".").lower()
    for kind, pattern in _TASKS:
        match = re.fullmatch(pattern, text)
        if match:
            return Task(kind, *match.groups())
    return None


def parse_intro(intro: str) -> tuple[list[str], Task | None]:
    """(receptacle names in the room description's order, the task) from a game's opening text."""
    listed = re.search(r"Looking quickly around you, you see (.*?)\.\s*(?:\n|$)", intro)
    names = [_name(item) for item in listed.group(1).split(", ")] if listed else []
    task = intro.partition("Your task is to:")[2]
    return [n for n in names if n], parse_task(task) if task else None


@cache
def _holds() -> dict[str, frozenset[str]]:
    """Receptacle class (lower case) -> the object classes it may hold (lower case)."""
    import alfworld.gen.constants as C

    return {r.lower(): frozenset(o.lower() for o in objs) for r, objs in C.VAL_RECEPTACLE_OBJECTS.items()}


def _name(item: str) -> str:
    item = item.strip().removeprefix("and ").strip()
    return re.sub(r"^an? ", "", item)


def _cls(name: str) -> str:
    """"cabinet 3" -> "cabinet"."""
    return name.rsplit(" ", 1)[0]


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


class SearchExpert:
    """Same interface as :class:`~agentrl.envs.alfworld.expert.ExpertTracker`: ``reset``, ``update``,
    ``action``, ``failed``, ``thoughts``; it reads only a state's ``feedback`` and ``admissible_commands``."""

    def __init__(self, max_steps: int = 200) -> None:
        self.action = "look"
        self.failed = False
        self._phase = ""
        self.order: list[str] = []
        self.task: Task | None = None
        self.recent: deque[tuple[str, str]] = deque(maxlen=HISTORY)
        self.admissible: list[str] = []

    def reset(self, gamefile: str, state: Any, seed: int) -> None:
        """Start on a game whose opening state is ``state`` (``gamefile`` and ``seed`` are not used)."""
        self.order, self.task = parse_intro(state["feedback"])
        self.recent.clear()
        self._decide(state)

    def update(self, state: Any, last_command: str) -> None:
        """Observe the state that ``last_command`` led to; compute the next command."""
        self.recent.append((last_command, state["feedback"]))
        self._decide(state)

    def thoughts(self, goal: str) -> str:
        """The task and the phase in a sentence or two, from what the agent has seen."""
        return f"My task is to {goal}. {self._phase}"

    # ---------------------------------------------------------------- the decision

    def _decide(self, state: Any) -> None:
        self.admissible = list(state["admissible_commands"])
        t = self.task
        stands = [r for r in self.order if _cls(r) in LAMP_STANDS]
        goal = next((r for r in self.order if t and _cls(r) == t.target), None)
        self.failed = t is None or not self.order or (goal is None if t.kind != "look" else not stands)
        if self.failed:
            action, self._phase = "look", "I cannot read the task or the room; I look around."
        else:
            here = self._here()
            held = self._held(here)
            if held is None:
                action, self._phase = "inventory", "I am not sure what I am holding; I check."
            elif held and _cls(held) != t.obj:
                action, self._phase = self._put_down(held, here)
            elif held:
                action, self._phase = self._carry(held, here, goal or "", stands)
            else:
                action, self._phase = self._search(here, goal or "")
        self.action = action if action in self.admissible else ("look" if "look" in self.admissible
                                                                 else self.admissible[0])

    def _search(self, here: str, goal: str) -> tuple[str, str]:
        t = self.task
        assert t is not None
        takes = sorted(a for a in self.admissible if re.fullmatch(rf"take {re.escape(t.obj)} \d+ from {re.escape(here)}", a))
        if takes and not (t.kind == "pick2" and here == goal):  # never take back the one already placed
            obj = takes[0][len("take ") :].split(" from ")[0]
            return takes[0], f"I see {_a(t.obj)} here; I take the {obj}."
        skip = (t.target,) if t.kind in ("pick", "pick2") else ()  # a target there would be placed already
        places = [r for r in self.order if t.obj in _holds().get(_cls(r), ()) and _cls(r) not in skip]
        if here in places and f"open {here}" in self.admissible:
            return f"open {here}", f"The {here} is closed; I open it to look for {_a(t.obj)}."
        nxt = self._next(here, places)
        if nxt is None:
            return "look", f"No receptacle here may hold {_a(t.obj)}; I look around."
        second = "another" if t.kind == "pick2" and here == goal else _a(t.obj)
        return f"go to {nxt}", f"I have not found {second} yet; {nxt} is next."

    def _carry(self, held: str, here: str, goal: str, stands: list[str]) -> tuple[str, str]:
        t = self.task
        assert t is not None
        if t.kind in _TOOLS and not self._done(held):
            verb, tool_cls = _TOOLS[t.kind]
            use = f"{verb} {held} with {here}"
            if use in self.admissible:
                return use, f"I have the {held} at the {here}; I {verb} it."
            tool = next((r for r in self.order if _cls(r) == tool_cls), None)
            if tool is None:
                return "look", f"I see no {tool_cls} to {verb} the {held} with; I look around."
            if here == tool and f"open {here}" in self.admissible:
                return f"open {here}", f"I have the {held}; I open the {here} to {verb} it."
            return f"go to {tool}", f"I have the {held}; next I {verb} it with the {tool}."
        if t.kind == "look":
            lamps = sorted(a for a in self.admissible if re.fullmatch(rf"use {re.escape(t.target)} \d+", a))
            if lamps:
                return lamps[0], f"I have the {held} and the {lamps[0][len('use '):]} is here; I turn it on."
            nxt = self._next(here, stands)
            return f"go to {nxt}", f"I have the {held}; I look for {_a(t.target)}; {nxt} is next."
        if here != goal:
            state = {"clean": "clean", "heat": "hot", "cool": "cool"}.get(t.kind)
            done = f"The {held} is {state}" if state else f"I have the {held}"
            return f"go to {goal}", f"{done}; I take it to the {goal}."
        if f"open {here}" in self.admissible:
            return f"open {here}", f"The {here} is closed; I open it to put the {held} in."
        return f"move {held} to {here}", f"I move the {held} to the {here}."

    def _put_down(self, held: str, here: str) -> tuple[str, str]:
        phase = f"I hold the {held}, which the task does not need; "
        if here and f"move {held} to {here}" in self.admissible:
            return f"move {held} to {here}", phase + "I put it down here."
        if here and f"open {here}" in self.admissible:
            return f"open {here}", phase + f"I open the {here} to put it down."
        nxt = self._next(here, self.order)
        return f"go to {nxt}", phase + f"I try the {nxt}."

    # ---------------------------------------------------------------- what the agent can tell

    def _done(self, held: str) -> bool:
        """Whether the last steps' feedback shows ``held`` cleaned / heated / cooled (as the task needs)."""
        assert self.task is not None
        verb = _TOOLS[self.task.kind][0]
        return any(feedback.startswith(f"You {verb} the {held} using ") for _, feedback in self.recent)

    def _next(self, here: str, places: list[str]) -> str | None:
        """The first of ``places`` after ``here`` in the room description's order, wrapping around."""
        start = self.order.index(here) + 1 if here in self.order else 0
        ring = self.order[start:] + self.order[:start]
        return next((r for r in ring if r in places and r != here), None)

    def _here(self) -> str:
        """The receptacle the agent stands at ("" in the middle of the room)."""
        at = [r for r in self.order if f"examine {r}" in self.admissible]
        if len(at) > 1:  # receptacles sharing a place: the one the agent arrived at
            arrived = [m.group(1) for _, fb in self.recent for m in [re.match(r"You arrive at (.+?)\. ", fb)] if m]
            at = [r for r in reversed(arrived) if r in at] or at
        return at[0] if at else ""

    def _held(self, here: str) -> str | None:
        """The object in hand, "" for none, None when what the agent sees does not tell."""
        for a in sorted(self.admissible):
            match = re.fullmatch(r"move (.+?) to .+|(?:clean|heat|cool|slice) (.+?) with .+", a)
            if match:  # only what is in hand can be moved, cleaned, heated, cooled or sliced
                return match.group(1) or match.group(2)
        if any(a.startswith("take ") for a in self.admissible):
            return ""  # hands are full: nothing could be taken
        lamps = {a[len("use ") :] for a in self.admissible if a.startswith("use ")}
        seen = [a[len("examine ") :] for a in sorted(self.admissible) if a.startswith("examine ")]
        seen = [o for o in seen if o not in self.order and o not in lamps]
        if not seen:
            return ""
        if not here or f"open {here}" in self.admissible:
            return seen[0]  # nothing lies in view: what can be examined is in hand
        for _, feedback in reversed(self.recent):
            event = re.match(r"You (pick up|move|heat|clean|cool) the (.+?) (?:from|to|using) ", feedback)
            if event:
                return "" if event.group(1) == "move" else event.group(2)
            if feedback.startswith("You are not carrying anything"):
                return ""
            carrying = re.match(r"You are carrying: an? (.+?)\.", feedback)
            if carrying:
                return carrying.group(1)
            shown = re.search(rf"(?:On the|The) {re.escape(here)}(?:, you see| is open\. In it, you see) (.*?)\.",
                              feedback)
            if shown:
                lying = {_name(item) for item in shown.group(1).split(", ")}
                return next((o for o in seen if o not in lying), "")
        return None
