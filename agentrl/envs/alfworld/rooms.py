"""Rooms from the scene layouts shipped in the alfworld package.

Each ``FloorPlan<N>-openable.json`` maps real ALFRED receptacle ids
(``Cabinet|+00.68|+00.50|-02.20``) to the pose the agent stands at to use them;
``FloorPlan<N>-objects.json`` lists the object classes of the scene. Rooms are
split into train and eval by number so the two splits never share a room.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOM_TYPES = {0: "Kitchen", 2: "LivingRoom", 3: "Bedroom", 4: "Bathroom"}
SPLITS = ("train", "eval")

# Receptacle ids whose class in the domain differs from the id's prefix.
_BASIN_OF = {"Sink": "SinkBasin", "Bathtub": "BathtubBasin"}


@dataclass(frozen=True)
class Receptacle:
    """One receptacle of a room: its PDDL id, class and where the agent stands."""

    id: str
    cls: str
    location: str


@dataclass(frozen=True)
class Room:
    """A scene: its receptacles (each at its own location) and the object classes it holds."""

    floorplan: int
    room_type: str
    receptacles: tuple[Receptacle, ...]
    object_classes: tuple[str, ...]

    def receptacles_of(self, cls: str) -> list[Receptacle]:
        return [r for r in self.receptacles if r.cls == cls]

    @property
    def receptacle_classes(self) -> set[str]:
        return {r.cls for r in self.receptacles}


def layouts_dir() -> Path:
    """Folder of the scene layouts inside the installed alfworld package."""
    import alfworld.gen

    return Path(alfworld.gen.__file__).parent / "layouts"


def mangle(text: str) -> str:
    """An ALFRED id as a PDDL name (``|`` -> ``_bar_``, ``-`` -> ``_minus_``, ...)."""
    for old, new in (("|", "_bar_"), ("+", "_plus_"), ("-", "_minus_"), (".", "_dot_"), (",", "_comma_")):
        text = text.replace(old, new)
    return text


def room_type(floorplan: int) -> str:
    """Kitchen (1-30), LivingRoom (201-230), Bedroom (301-330) or Bathroom (401-430)."""
    return ROOM_TYPES[floorplan // 100]


def split_of(floorplan: int) -> str:
    """Every fifth room of each room type is held out for eval; the rest train."""
    return "eval" if floorplan % 100 % 5 == 0 else "train"


def floorplans(split: str) -> list[int]:
    """The room numbers of a split, sorted."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    numbers = sorted(int(p.name[len("FloorPlan") : -len("-openable.json")]) for p in layouts_dir().glob("FloorPlan*-openable.json"))
    if not numbers:
        raise FileNotFoundError(f"no scene layouts under {layouts_dir()}; reinstall alfworld==0.4.2")
    return [n for n in numbers if split_of(n) == split]


@cache
def load_room(floorplan: int) -> Room:
    """Read one room's layout; every receptacle gets a location of its own."""
    import alfworld.gen.constants as C

    base = layouts_dir() / f"FloorPlan{floorplan}"
    poses = json.loads(Path(f"{base}-openable.json").read_text())
    classes = json.loads(Path(f"{base}-objects.json").read_text())
    receptacles, used = [], set()
    for rid in sorted(poses):
        prefix = rid.split("|", 1)[0]
        cls = _BASIN_OF.get(prefix, prefix)
        if cls not in C.VAL_RECEPTACLE_OBJECTS:
            continue
        if prefix in _BASIN_OF:  # "Sink|...|SinkBasin" demangles to "sinkbasin N"
            rid = f"{rid}|{cls}"
        x, z, rot, horizon = poses[rid.rsplit("|", 1)[0] if prefix in _BASIN_OF else rid]
        loc = mangle(f"loc|{round(x / 0.25)}|{round(z / 0.25)}|{int(rot) // 90 % 4}|{int(horizon)}")
        while loc in used:  # shared poses would hide "go to" commands
            loc += "_bar_0"
        used.add(loc)
        receptacles.append(Receptacle(mangle(rid), cls, loc))
    return Room(floorplan, room_type(floorplan), tuple(receptacles), tuple(sorted(set(classes))))
