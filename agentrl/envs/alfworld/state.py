"""What a game state says, read from the engine's facts: scene layout, holdings, goal progress."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Short task names for per-type reporting (the paper's table columns).
SHORT_NAMES = {
    "pick_and_place_simple": "pick",
    "look_at_obj_in_light": "look",
    "pick_clean_then_place_in_recep": "clean",
    "pick_heat_then_place_in_recep": "heat",
    "pick_cool_then_place_in_recep": "cool",
    "pick_two_obj_and_place": "pick2",
}
_STATE_FACT = {"clean": "isclean", "heat": "ishot", "cool": "iscool"}


@dataclass(frozen=True)
class SceneState:
    """The visible state of a room, enough to draw it; equal states draw equal images."""

    receptacles: tuple[tuple[str, bool, bool], ...]
    """(name, openable, opened) per receptacle, in natural name order."""
    agent_at: str
    """Receptacle the agent stands at; "" at the start position."""
    holding: str
    """Object in the agent's hands; "" when empty."""
    visible: tuple[str, ...]
    """Objects the agent sees in the receptacle it stands at (none when that one is closed)."""
    task: str
    """The goal in words."""


def natural_key(name: str) -> tuple[str, int]:
    """Sort "cabinet 2" before "cabinet 10"."""
    match = re.fullmatch(r"(.*?)\s*(\d+)", name)
    return (match.group(1), int(match.group(2))) if match else (name, 0)


def _by_name(facts: list[Any]) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for fact in facts:
        out.setdefault(fact.name, []).append([a.name.strip() for a in fact.arguments])
    return out


def scene_state(facts: list[Any], task: str) -> SceneState:
    """Read a :class:`SceneState` from the engine's human-readable facts (``state["facts"]``)."""
    f = _by_name(facts)
    receptacles = sorted({args[0] for args in f.get("receptacletype", [])}, key=natural_key)
    openable = {a[0] for a in f.get("openable", [])}
    opened = {a[0] for a in f.get("opened", [])}
    agent_loc = {a[1] for a in f.get("atlocation", [])}
    at = sorted((a[0] for a in f.get("receptacleatlocation", []) if a[1] in agent_loc), key=natural_key)
    agent_at = at[0] if at else ""
    holding = sorted(a[1] for a in f.get("holds", []))
    visible: list[str] = []
    if agent_at and (agent_at not in openable or agent_at in opened):
        visible = sorted((a[0] for a in f.get("inreceptacle", []) if a[1] == agent_at), key=natural_key)
    return SceneState(
        receptacles=tuple((r, r in openable, r in opened) for r in receptacles),
        agent_at=agent_at,
        holding=holding[0] if holding else "",
        visible=tuple(visible),
        task=task,
    )


def goal_condition(facts: list[Any], task_type: str, params: dict[str, Any]) -> float:
    """Share of the task's goal conditions that hold now, in [0, 1]; 1 whenever the game is won.

    pick: target in a goal receptacle. pick2: one, then two targets there.
    clean/heat/cool: a target in that state, and such a target in a goal receptacle.
    look: holding a target, and a lamp of the goal type switched on.
    """
    f = _by_name(facts)
    short = SHORT_NAMES[task_type]
    obj_t = params["object_target"].lower() + "type"
    objects = {a[0] for a in f.get("objecttype", []) if a[1] == obj_t}
    if short == "look":
        lamp_t = params["toggle_target"].lower() + "type"
        lamps = {a[0] for a in f.get("objecttype", []) if a[1] == lamp_t}
        held = any(a[1] in objects for a in f.get("holds", []))
        lit = any(a[0] in lamps for a in f.get("istoggled", []))
        return (held + lit) / 2
    rec_t = params["parent_target"].lower() + "type"
    goal_receps = {a[0] for a in f.get("receptacletype", []) if a[1] == rec_t}
    placed = {a[0] for a in f.get("inreceptacle", []) if a[0] in objects and a[1] in goal_receps}
    if short == "pick":
        return float(bool(placed))
    if short == "pick2":
        return min(len(placed), 2) / 2
    changed = {a[0] for a in f.get(_STATE_FACT[short], []) if a[0] in objects}
    return (bool(changed) + bool(placed & changed)) / 2
