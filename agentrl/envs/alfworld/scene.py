"""A schematic picture of an ALFWorld room, drawn from the text state.

Receptacles are labelled boxes on a grid (closed ones dark, opened ones light,
open-top ones blue); the agent's box has a red frame and a dot. The top band
shows the task, the bottom band what the agent holds and sees. The picture is
a pure function of a :class:`SceneState` and the size: equal states give
bit-identical images.
"""

from __future__ import annotations

import math
import textwrap
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from agentrl.envs.alfworld.state import SceneState

_BG = (245, 243, 238)
_CLOSED = (120, 98, 78)
_OPENED = (236, 214, 170)
_OPEN_TOP = (170, 200, 230)
_AGENT = (215, 40, 40)
_INK = (20, 20, 20)


@cache
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def draw_scene(state: SceneState, size: int = 224) -> np.ndarray:
    """The room as an RGB uint8 array of shape (size, size, 3)."""
    if size < 64:
        raise ValueError(f"image_size must be >= 64 pixels to stay legible, got {size}")
    img = Image.new("RGB", (size, size), _BG)
    draw = ImageDraw.Draw(img)
    small = _font(max(7, size // 28))
    line = max(8, size // 24)
    band = 2 * line + 4

    # top band: the task
    for i, text in enumerate(textwrap.wrap(f"Task: {state.task}", width=max(20, size // 6))[:2]):
        draw.text((3, 2 + i * line), text, fill=_INK, font=small)

    # receptacle grid
    n = max(1, len(state.receptacles))
    cols = math.ceil(math.sqrt(n * 1.5))
    rows = math.ceil(n / cols)
    top, bottom = band, size - 2 * band
    cw, ch = (size - 4) / cols, (bottom - top) / rows
    for k, (name, openable, opened) in enumerate(state.receptacles):
        r, c = divmod(k, cols)
        x0, y0 = 2 + c * cw, top + r * ch
        box = (x0 + 1, y0 + 1, x0 + cw - 2, y0 + ch - 2)
        fill = (_OPENED if opened else _CLOSED) if openable else _OPEN_TOP
        here = name == state.agent_at
        draw.rectangle(box, fill=fill, outline=_AGENT if here else _INK, width=3 if here else 1)
        ink = (250, 250, 250) if openable and not opened else _INK
        for j, part in enumerate(_label(name, cw, small)):
            draw.text((box[0] + 2, box[1] + 1 + j * line), part, fill=ink, font=small)
        if here:
            rad = max(2, int(min(cw, ch) / 8))
            cx, cy = box[2] - rad - 2, box[3] - rad - 2
            draw.ellipse((cx - rad, cy - rad, cx + rad, cy + rad), fill=_AGENT)

    # bottom band: holding and what is visible here
    where = state.agent_at or "the middle of the room"
    sees = ", ".join(state.visible) if state.visible else "nothing"
    texts = [f"At {where}. Holding: {state.holding or 'nothing'}.", f"Sees: {sees}"]
    y = bottom + 2
    for text in texts:
        for part in textwrap.wrap(text, width=max(20, size // 6))[:2]:
            if y + line > size:
                break
            draw.text((3, y), part, fill=_INK, font=small)
            y += line
    return np.asarray(img, dtype=np.uint8).copy()


def _label(name: str, width: float, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> list[str]:
    """The receptacle's name in at most two lines that fit the box width."""
    kind, _, number = name.rpartition(" ")
    kind = kind or name
    while len(kind) > 3 and font.getlength(kind) > width - 5:
        kind = kind[:-1]
    return [kind, number] if number.isdigit() else [kind]
