"""The box grammar: how a normalised box is written in text, and the two ways of reading one.

    box := "[x0,y0,x1,y1]"    coordinates in [0, 1] of the image's width and height,
                              written with two decimals and no spaces (`format_box`);
                              readers also take spaces, parentheses and exponents

It is the one grammar of boxes in utamoe: ShapesWorld's grounding answers, task spans'
grounding tokens (`<box>[...]</box>`, utamoe.text.spans) and the grounding scorers all
write and read boxes here.

- `parse_box(text)`: the first box anywhere in a free text (a grounding answer), or None;
  lenient about what is around it, as a scorer must be with model output. A zero-area
  box is still a box (its IoU is 0).
- `read_box(body)`: the text between `<box>` and `</box>`, which must be exactly one box;
  a problem comes back as (error kind, why) for the span parser's structured errors, and
  an empty box (x0 >= x1 or y0 >= y1) is one, since no executor can work on it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), normalised

BOX_DECIMALS = 2
BOX_OPEN, BOX_CLOSE = "<box>", "</box>"

_NUM = r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*"
_BOX = re.compile(rf"[\[(]{_NUM},{_NUM},{_NUM},{_NUM}[\])]")


def format_box(box: Sequence[float]) -> str:
    """(x0, y0, x1, y1) normalised -> '[0.35,0.02,0.65,0.31]'."""
    return "[" + ",".join(f"{v:.{BOX_DECIMALS}f}" for v in box) + "]"


def _in_range(box: Box) -> bool:
    return all(0.0 <= v <= 1.0 for v in box)


def parse_box(text: str | None) -> Box | None:
    """The first '[x0,y0,x1,y1]' (spaces or parentheses tolerated) in `text`, or None when
    there is none or it is not a box (coordinates outside [0, 1], x1 < x0 or y1 < y0)."""
    m = _BOX.search(text or "")
    if not m:
        return None
    x0, y0, x1, y1 = box = tuple(float(g) for g in m.groups())
    if not _in_range(box) or x1 < x0 or y1 < y0:
        return None
    return box


def read_box(body: str) -> Box | tuple[str, str]:
    """A box, or (error kind, why) for the text between <box> and </box> (kinds: bad_box,
    box_out_of_range, empty_box; utamoe.text.spans.ERROR_KINDS)."""
    m = _BOX.fullmatch(body.strip())
    if not m:
        return "bad_box", f"{body!r} is not [x0,y0,x1,y1] (four numbers)"
    x0, y0, x1, y1 = box = tuple(float(g) for g in m.groups())
    if not _in_range(box):
        return "box_out_of_range", f"{body.strip()} has a coordinate outside [0, 1]"
    if x0 >= x1 or y0 >= y1:
        return "empty_box", f"{body.strip()} is empty (it needs x0 < x1 and y0 < y1)"
    return box


def is_box(parsed) -> bool:
    """Whether `read_box` gave a box (not an error)."""
    return not isinstance(parsed[0], str)


def box_token(box: Sequence[float]) -> str:
    """A grounding token: '<box>[x0,y0,x1,y1]</box>'; a box that is not valid (once written
    at BOX_DECIMALS) is a ValueError."""
    if len(box) != 4:
        raise ValueError(f"a box has four coordinates (x0, y0, x1, y1), got {tuple(box)}")
    text = format_box(box)
    written = read_box(text)
    if not is_box(written):
        raise ValueError(f"box {tuple(box)} written as {text}: {written[1]}")
    return BOX_OPEN + text + BOX_CLOSE
