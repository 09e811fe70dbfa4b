"""Author one ALFWorld game (PDDL problem + traj_data) for a room and a task type.

Objects go only where ``constants.VAL_RECEPTACLE_OBJECTS`` allows, with the
properties of ``VAL_ACTION_OBJECTS``; the goal is the shipped goal library's
PDDL; the task text is one of its templates. A draw that cannot make the task
(no sink for a clean task, the goal already true, ...) returns None.

Small rooms (``max_receptacles``, ``max_distractors``): the room keeps the receptacles the task needs
(a start of the object, the goal receptacle, the sinkbasin / microwave / fridge, a lamp stand) and
random others up to the limit; at most ``max_distractors`` objects that are not targets (a look task's
lamp is needed, not a distractor). Without limits the draws are exactly those made before the options.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from agentrl.envs.alfworld.rooms import Receptacle, Room, mangle
from agentrl.envs.alfworld.state import SHORT_NAMES

TASK_TYPES = tuple(SHORT_NAMES)
# The appliance each state-change task needs, which is then no valid final receptacle.
_TOOL = {
    "pick_clean_then_place_in_recep": ("Cleanable", "SinkBasin"),
    "pick_heat_then_place_in_recep": ("Heatable", "Microwave"),
    "pick_cool_then_place_in_recep": ("Coolable", "Fridge"),
}
# Lamps are in no receptacle list of the constants; they stand on furniture.
_LAMPS = ("DeskLamp", "FloorLamp")
_LAMP_STANDS = ("Desk", "SideTable", "Dresser", "Shelf", "CoffeeTable", "DiningTable", "TVStand")
# Types the domain names as constants: every problem must declare them.
_DOMAIN_RTYPES = ("SinkBasinType", "MicrowaveType", "FridgeType")
_DOMAIN_OTYPES = ("KnifeType", "ButterKnifeType")


@dataclass
class Game:
    """A drawn game, ready to be written as ``game.tw-pddl`` + ``traj_data.json``."""

    task_type: str
    params: dict[str, Any]
    goal_text: str
    problem: str
    floorplan: int
    seed: int
    placements: dict[str, str] = field(default_factory=dict)

    def folder_name(self) -> str:
        p = self.params
        last = p["toggle_target"] if self.task_type == "look_at_obj_in_light" else p["parent_target"]
        return f"{self.task_type}-{p['object_target']}-None-{last}-{self.floorplan}"


def pickupable_classes() -> set[str]:
    """Object classes some receptacle accepts (sliced variants excluded)."""
    import alfworld.gen.constants as C

    return {o for objs in C.VAL_RECEPTACLE_OBJECTS.values() for o in objs if "Sliced" not in o}


MIN_RECEPTACLES = 3
"""The fewest receptacles a room may be cut to: a clean / heat / cool task needs a start, a tool and a goal."""


def check_limits(max_receptacles: int | None, max_distractors: int | None) -> None:
    """ValueError naming a room limit that cannot be met (None: no limit)."""
    if max_receptacles is not None and max_receptacles < MIN_RECEPTACLES:
        raise ValueError(f"max_receptacles must be >= {MIN_RECEPTACLES} (a start, a tool and a goal receptacle) "
                         f"or None for the whole room, got {max_receptacles}")
    if max_distractors is not None and max_distractors < 0:
        raise ValueError(f"max_distractors must be >= 0 or None for no limit, got {max_distractors}")


def draw_game(room: Room, task_type: str, rng: random.Random, max_receptacles: int | None = None,
              max_distractors: int | None = None) -> Game | None:
    """One random game of ``task_type`` in ``room`` (cut to the limits), or None when this draw cannot make it."""
    import alfworld.gen.constants as C

    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {', '.join(TASK_TYPES)}")
    check_limits(max_receptacles, max_distractors)
    if room.room_type not in C.GOALS_VALID[task_type]:
        return None
    homes = _homes(room)
    present = sorted(c for c in room.object_classes if c in homes)
    toggle = ""
    if task_type == "look_at_obj_in_light":
        lamps = [c for c in _LAMPS if c in room.object_classes and _lamp_stands(room)]
        if not lamps:
            return None
        toggle = rng.choice(lamps)
    prop, tool = _TOOL.get(task_type, (None, None))
    if tool and not room.receptacles_of(tool):
        return None
    candidates = [c for c in present if prop is None or c in C.VAL_ACTION_OBJECTS[prop]]
    if not candidates:
        return None
    obj = rng.choice(candidates)
    parent = ""
    if task_type != "look_at_obj_in_light":
        parents = sorted({r.cls for r in homes[obj]} - {tool})
        # the object must start somewhere else than the goal receptacle type
        parents = [p for p in parents if any(r.cls != p for r in homes[obj])]
        if not parents:
            return None
        parent = rng.choice(parents)
    if max_receptacles is not None:
        room = _cut(room, homes[obj], parent, tool, toggle, max_receptacles, rng)
        homes = _homes(room)
        present = sorted(c for c in room.object_classes if c in homes)

    counts = {c: rng.randint(1, 2) for c in present if rng.random() < 0.6}
    counts[obj] = rng.randint(2, 3) if task_type == "pick_two_obj_and_place" else rng.randint(1, 2)
    if max_distractors is not None:
        others = [c for c in sorted(counts) if c != obj for _ in range(counts[c])]
        rng.shuffle(others)
        counts = {**Counter(others[:max_distractors]), obj: counts[obj]}
    placements: dict[str, Receptacle] = {}
    for cls in sorted(counts):
        spots = [r for r in homes[cls] if cls != obj or r.cls != parent]
        for _ in range(counts[cls]):
            placements[_object_id(cls, rng, placements)] = rng.choice(spots)
    if toggle:
        placements[_object_id(toggle, rng, placements)] = rng.choice(_lamp_stands(room))

    params = {
        "object_target": obj,
        "parent_target": parent,
        "toggle_target": toggle,
        "mrecep_target": "",
        "object_sliced": False,
    }
    goal_text = _goal_text(task_type, params, rng)
    seed = rng.getrandbits(31)
    problem = _problem(room, task_type, params, placements, seed)
    return Game(task_type, params, goal_text, problem, room.floorplan, seed, {k: v.id for k, v in placements.items()})


def _cut(room: Room, starts: list[Receptacle], parent: str, tool: str | None, toggle: str, n: int,
         rng: random.Random) -> Room:
    """``room`` with at most ``n`` receptacles: a start of the object (not of the goal type), a goal receptacle,
    the task's tool, a lamp stand (each unless one kept already serves), then random others, in the room's order."""
    needs = [[r for r in starts if r.cls != parent]]
    needs += [room.receptacles_of(parent) if parent else [], room.receptacles_of(tool) if tool else []]
    needs.append(_lamp_stands(room) if toggle else [])
    keep: list[Receptacle] = []
    for options in needs:
        if options and not any(r in keep for r in options):
            keep.append(rng.choice(options))
    rest = [r for r in room.receptacles if r not in keep]
    keep += rng.sample(rest, min(max(0, n - len(keep)), len(rest)))
    return replace(room, receptacles=tuple(r for r in room.receptacles if r in keep))


def _homes(room: Room) -> dict[str, list[Receptacle]]:
    """For each pickupable class, the receptacles of this room that may hold it."""
    import alfworld.gen.constants as C

    homes: dict[str, list[Receptacle]] = {}
    for cls in pickupable_classes():
        spots = [r for r in room.receptacles if cls in C.VAL_RECEPTACLE_OBJECTS[r.cls]]
        if spots:
            homes[cls] = spots
    return homes


def _lamp_stands(room: Room) -> list[Receptacle]:
    return [r for r in room.receptacles if r.cls in _LAMP_STANDS]


def _object_id(cls: str, rng: random.Random, taken: dict[str, Receptacle]) -> str:
    while True:
        xyz = [f"{rng.uniform(-3, 3):+06.2f}" for _ in range(3)]
        oid = mangle("|".join([cls, *xyz]))
        if oid not in taken:
            return oid


def _goal_text(task_type: str, params: dict[str, Any], rng: random.Random) -> str:
    import alfworld.gen.goal_library as glib

    template = rng.choice(glib.gdict[task_type]["templates"])
    return template.format(
        obj=params["object_target"].lower(),
        recep=params["parent_target"].lower(),
        toggle=params["toggle_target"].lower(),
        mrecep="",
    )


def _problem(room: Room, task_type: str, params: dict[str, Any], placements: dict[str, Receptacle], seed: int) -> str:
    """The PDDL problem text: objects, initial facts and the goal library's goal."""
    import alfworld.gen.constants as C
    import alfworld.gen.goal_library as glib

    start = "loc_bar_start"
    otypes = {f"{_cls_of(o)}Type" for o in placements} | set(_DOMAIN_OTYPES)
    rtypes = {f"{r.cls}Type" for r in room.receptacles} | set(_DOMAIN_RTYPES)
    decl = ["agent1 - agent", f"{start} - location"]
    decl += [f"{r.location} - location" for r in room.receptacles]
    decl += [f"{r.id} - receptacle" for r in room.receptacles]
    decl += [f"{o} - object" for o in sorted(placements)]
    decl += [f"{t} - otype" for t in sorted(otypes)] + [f"{t} - rtype" for t in sorted(rtypes - otypes)]

    init = [f"(atLocation agent1 {start})"]
    for r in room.receptacles:
        init += [f"(receptacleType {r.id} {r.cls}Type)", f"(receptacleAtLocation {r.id} {r.location})"]
        if r.cls in C.OPENABLE_CLASS_SET:
            init.append(f"(openable {r.id})")
    for o, r in sorted(placements.items()):
        cls = _cls_of(o)
        init += [f"(objectType {o} {cls}Type)", f"(inReceptacle {o} {r.id})", f"(objectAtLocation {o} {r.location})"]
        if cls in _LAMPS:
            init.append(f"(toggleable {o})")
            continue
        init.append(f"(pickupable {o})")
        for prop, fact in (("Cleanable", "cleanable"), ("Heatable", "heatable"), ("Coolable", "coolable")):
            if cls in C.VAL_ACTION_OBJECTS[prop]:
                init.append(f"({fact} {o})")
        if cls in C.MOVABLE_RECEPTACLES_SET:
            init.append(f"(isReceptacleObject {o})")
    for rcls in sorted(room.receptacle_classes):
        for t in sorted(otypes):
            if t[: -len("Type")] in C.VAL_RECEPTACLE_OBJECTS[rcls]:
                init.append(f"(canContain {rcls}Type {t})")

    goal = glib.gdict[task_type]["pddl"].format(
        obj=params["object_target"], recep=params["parent_target"], toggle=params["toggle_target"], mrecep=""
    )
    objects = "\n        ".join(decl)
    facts = "\n        ".join(init)
    return (
        f"(define (problem agentrl_{task_type}_{room.floorplan}_{seed})\n"
        f"    (:domain alfred)\n    (:objects\n        {objects}\n    )\n"
        f"    (:init\n        {facts}\n    )\n{goal.replace('#', '-')}\n"
    )


def _cls_of(object_id: str) -> str:
    return object_id.split("_bar_", 1)[0]
