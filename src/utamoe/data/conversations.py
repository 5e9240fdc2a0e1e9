"""Multi-turn conversations in the dataset format: the `turns` of a record, typed and checked.

A conversation record holds, instead of `prompt` / `image` / `target`, a list of turns:

    {"id": "train-dialog-000003", "task": "dialog", "group": "und",
     "turns": [{"role": "user", "text": "what color is the circle?", "image": "images/a.png"},
               {"role": "assistant", "text": "red"},
               {"role": "user", "text": "remove the shape left of the red circle"},
               {"role": "assistant",
                "text": "<edit>remove the green square<box>[0.06,0.06,0.27,0.27]</box></edit>"}]}

Turns alternate user / assistant, starting with a user turn and ending with an assistant
turn. Every turn has a non-empty `text`; a user turn may carry an `image` (a PNG path
relative to the dataset directory, like every image of the format). Assistant turns hold
text and task spans (utamoe.text.spans) and no image: what an executor produces is
the result of a span, not an input of the conversation. Only answer-layout tasks (text
out) take conversations. docs/data_format.md documents the fields; utamoe.data.sequences
turns a conversation into one training sequence whose loss is on the assistant turns only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

ROLES = ("user", "assistant")
TURN_KEYS = ("role", "text", "image")


@dataclass
class Turn:
    """One turn. `image` is HxWx3 uint8 in memory, `image_path` its path in the dataset."""

    role: str
    text: str
    image: np.ndarray | None = None
    image_path: str | None = None

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"role": self.role, "text": self.text}
        if self.image_path is not None:
            rec["image"] = self.image_path
        return rec


def check_turns(turns: Any, fail: Callable[[str], Exception]) -> None:
    """Raise `fail(message)` when `turns` is not a valid conversation (see the module doc)."""
    if not isinstance(turns, list) or len(turns) < 2:
        raise fail("field 'turns' must be a list of at least two turns (a user turn, then an "
                   "assistant turn)")
    for k, turn in enumerate(turns):
        where = f"turns[{k}]"
        if not isinstance(turn, dict):
            raise fail(f"{where} must be a JSON object with role, text and optional image")
        unknown = [key for key in turn if key not in TURN_KEYS]
        if unknown:
            raise fail(f"{where} has unknown field(s) {unknown}; a turn has {', '.join(TURN_KEYS)}")
        want = ROLES[k % 2]
        if turn.get("role") != want:
            raise fail(f"{where}.role is {turn.get('role')!r} but must be {want!r}: turns "
                       "alternate user, assistant, ... starting with the user")
        if not isinstance(turn.get("text"), str) or not turn["text"].strip():
            raise fail(f"{where}.text must be a non-empty string")
        image = turn.get("image")
        if image is not None and not isinstance(image, str):
            raise fail(f"{where}.image must be a PNG path (a string) or absent, got {image!r}")
        if image is not None and want == "assistant":
            raise fail(f"{where} is an assistant turn with an image; images are inputs, so "
                       "put it on a user turn (an executor's output is not part of the data)")
    if turns[-1].get("role") != "assistant":
        raise fail(f"the last turn (turns[{len(turns) - 1}]) is a user turn; end the "
                   "conversation with the assistant's answer, or drop the unanswered turn")


def load_turns(turns: list[dict], read_image: Callable[[str, str], np.ndarray | None]) -> list[Turn]:
    """Checked turn records -> Turns; `read_image(path, key)` loads (or only checks) an image."""
    out = []
    for k, t in enumerate(turns):
        path = t.get("image")
        image = read_image(path, f"turns[{k}].image") if path is not None else None
        out.append(Turn(t["role"], t["text"], image, path))
    return out


def images_of(turns: list[Turn] | None) -> list[np.ndarray]:
    """The conversation's images, in order (the user turns that carry one)."""
    return [t.image for t in (turns or ()) if t.image is not None]


def exchanges(turns: list[Turn]) -> list[tuple[list[Turn], Turn]]:
    """(history up to and including a user turn, the assistant turn that answers it), for
    every assistant turn: what a model is asked and scored on, turn by turn."""
    return [(turns[:k], turns[k]) for k in range(1, len(turns)) if turns[k].role == "assistant"]
