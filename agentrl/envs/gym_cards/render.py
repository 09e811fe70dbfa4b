"""Drawing the gym_cards observations with PIL: fixed layouts, big high-contrast glyphs.

Layouts are written in units of a 224-pixel canvas and scaled to ``size``. Text
is rendered with Pillow's built-in scalable font, cropped to its ink and
scaled to the box height, so a digit fills its box whatever the font metrics;
text too wide for its box is squeezed horizontally rather than shrunk. A
small VLM sees these images at 112 px, so ranks and numbers are at least 40 of
224 px tall. Drawing is deterministic: same state, same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from agentrl.envs.gym_cards.cards import Card

BASE = 224
BLACK = (0, 0, 0)
WHITE = (255, 255, 255)
RED = (200, 0, 0)
TABLE = (0, 90, 40)
CARD_BACK = (30, 60, 160)
_FONT_PX = 96  # glyphs are drawn at this size, then scaled to their box


LINE = "(Tg0)"
"""Reference for :func:`draw_text`'s ``line`` mode: the height of parentheses, capitals and descenders."""


@lru_cache(maxsize=512)
def _glyph(text: str, line: bool) -> Image.Image:
    """White-on-black mask of ``text``, cropped to its ink (``line``: vertically to :data:`LINE`)."""
    font = ImageFont.load_default(size=_FONT_PX)
    left, top, right, bottom = font.getbbox(text + LINE)
    mask = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(mask).text((4 - left, 4 - top), text, fill=255, font=font)
    bbox = mask.getbbox()
    if bbox is None:
        return mask
    if line:
        _, ref_top, _, ref_bottom = font.getbbox(LINE)
        bbox = (bbox[0], 4 - top + ref_top, bbox[2], 4 - top + ref_bottom)
    return mask.crop(bbox)


@lru_cache(maxsize=2048)
def _scaled_glyph(text: str, line: bool, width: int, height: int) -> Image.Image:
    """:func:`_glyph` resized to (width, height): the resize was ~60% of an env step."""
    return _glyph(text, line).resize((width, height), Image.Resampling.LANCZOS)


def draw_text(
    img: Image.Image,
    box: tuple[float, float, float, float],
    text: str,
    color,
    align: str = "center",
    line: bool = False,
) -> None:
    """Draw ``text`` filling the height of ``box`` (x0, y0, x1, y1), squeezed to its width if needed.

    By default the ink of ``text`` fills the height (a digit or rank as big as
    the box). With ``line=True`` the box height is that of a line of text
    (:data:`LINE`), so glyphs keep their relative sizes and baseline.
    """
    x0, y0, x1, y1 = (round(v) for v in box)
    glyph = _glyph(text, line)
    height = max(1, y1 - y0)
    width = max(1, min(x1 - x0, round(glyph.width * height / glyph.height)))
    mask = _scaled_glyph(text, line, width, height)
    if align == "left":
        x = x0
    elif align == "right":
        x = x1 - width
    else:
        x = x0 + (x1 - x0 - width) // 2
    img.paste(Image.new("RGB", mask.size, color), (x, y0), mask)


def _suit(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, suit: str) -> None:
    """A suit shape of radius ``r`` centred at (cx, cy)."""
    color = RED if suit in "HD" else BLACK
    if suit == "D":
        draw.polygon([(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)], fill=color)
        return
    if suit == "C":
        b = 0.45 * r
        for dx, dy in ((0, -0.5 * r), (-0.5 * r, 0.15 * r), (0.5 * r, 0.15 * r)):
            draw.ellipse([cx + dx - b, cy + dy - b, cx + dx + b, cy + dy + b], fill=color)
        draw.polygon([(cx, cy), (cx - 0.35 * r, cy + r), (cx + 0.35 * r, cy + r)], fill=color)
        return
    # Heart (point down) and spade (point up, with a stem) share two lobes and a triangle.
    sign = 1 if suit == "H" else -1
    b = 0.5 * r
    lobe_y = cy - sign * 0.35 * r
    for dx in (-0.48 * r, 0.48 * r):
        draw.ellipse([cx + dx - b, lobe_y - b, cx + dx + b, lobe_y + b], fill=color)
    draw.polygon(
        [
            (cx - 0.97 * r, lobe_y + sign * 0.1 * r),
            (cx + 0.97 * r, lobe_y + sign * 0.1 * r),
            (cx, cy + sign * r),
        ],
        fill=color,
    )
    if suit == "S":
        draw.polygon([(cx, cy), (cx - 0.35 * r, cy + r), (cx + 0.35 * r, cy + r)], fill=color)


def draw_card(
    img: Image.Image, box: tuple[float, float, float, float], card: Card | None, strip: float | None = None
) -> None:
    """A card in ``box``: big rank on top, suit shape below; ``None`` draws the card's back.

    ``strip`` is the width of the card's left part left uncovered when cards
    overlap; rank and suit then stay inside it.
    """
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    radius = max(1, round(0.1 * w))
    border = max(1, round(0.04 * w))
    if card is None:
        draw.rounded_rectangle(box, radius, fill=CARD_BACK, outline=WHITE, width=border)
        inset = 0.18 * w
        draw.rectangle([x0 + inset, y0 + inset, x1 - inset, y1 - inset], outline=WHITE, width=border)
        return
    draw.rounded_rectangle(box, radius, fill=WHITE, outline=BLACK, width=border)
    color = RED if card.suit in "HD" else BLACK
    shown = w if strip is None else min(w, strip)
    pad = 0.08 * w
    draw_text(img, (x0 + pad, y0 + 0.07 * h, x0 + shown - pad, y0 + 0.52 * h), card.rank, color)
    r = min(0.3 * w, 0.19 * h, shown / 2 - pad)
    _suit(draw, x0 + shown / 2, y0 + 0.76 * h, r, card.suit)


def _canvas(size: int, color) -> tuple[Image.Image, float]:
    return Image.new("RGB", (size, size), color), size / BASE


def to_array(img: Image.Image) -> np.ndarray:
    """The (H, W, 3) uint8 array of an image."""
    return np.asarray(img, dtype=np.uint8).copy()


def numberline_image(target: int, current: int, size: int = BASE) -> np.ndarray:
    """Two big lines on white: "Target: t" above "Current: c"."""
    img, k = _canvas(size, WHITE)
    for row, (label, value) in enumerate((("Target:", target), ("Current:", current))):
        top = (28 + row * 100) * k
        draw_text(img, (6 * k, top + 8 * k, 124 * k, top + 62 * k), label, BLACK, align="left", line=True)
        draw_text(img, (140 * k, top, 216 * k, top + 64 * k), str(value), BLACK)
    return to_array(img)


def _wrap(tokens: Sequence[str], width: int) -> list[str]:
    """Join tokens into lines of at most ``width`` characters, breaking between tokens."""
    lines = [""]
    for token in tokens:
        if lines[-1] and len(lines[-1]) + len(token) > width:
            lines.append("")
        lines[-1] += token
    return lines


def points_image(cards: Sequence[Card], formula: Sequence[str], size: int = BASE) -> np.ndarray:
    """The cards in a row on a green table, the formula so far in big white text below."""
    img, k = _canvas(size, TABLE)
    n = len(cards)
    card_w = min(80.0, (BASE - 8 - 6 * (n - 1)) / n)
    gap = (BASE - n * card_w) / (n + 1)
    for i, card in enumerate(cards):
        x = gap + i * (card_w + gap)
        draw_card(img, (x * k, 8 * k, (x + card_w) * k, 118 * k), card)
    lines = _wrap(formula, 9)
    line_h = {1: 70, 2: 46}.get(len(lines), 92 / len(lines))
    for i, text in enumerate(lines):
        if text:
            top = 126 + i * (line_h + 2)
            draw_text(img, (6 * k, top * k, 218 * k, (top + line_h) * k), text, WHITE, line=True)
    return to_array(img)


def _hand(img: Image.Image, cards: Sequence[Card | None], top: float, k: float) -> None:
    """A row of cards; more than three overlap like a fan, left card underneath."""
    card_w, card_h = 66.0, 100.0
    n = len(cards)
    step = card_w + 8 if n <= 3 else (BASE - 16 - card_w) / (n - 1)
    left = (BASE - (card_w + step * (n - 1))) / 2
    for i, card in enumerate(cards):
        x = left + i * step
        strip = None if n <= 3 or i == n - 1 else step * k
        draw_card(img, (x * k, top * k, (x + card_w) * k, (top + card_h) * k), card, strip)


def blackjack_image(dealer: Sequence[Card | None], player: Sequence[Card], size: int = BASE) -> np.ndarray:
    """Dealer's cards on top (``None`` for the face-down card), the player's below."""
    img, k = _canvas(size, TABLE)
    _hand(img, dealer, 6, k)
    _hand(img, player, 118, k)
    return to_array(img)
