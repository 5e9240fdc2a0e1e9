"""Records of the field's formats -> records of the utamoe format (utamoe.data.importing).

A source record is first made into a list of `Msg` (role, text, image references) and then
into one utamoe record by `record_of`:

    LLaVA        {"id", "image", "conversations": [{"from": "human" | "gpt", "value"}]}: `<image>`
                 marks where the image goes (before or after the text); without it the image
                 belongs to the first user turn; "image" may be a list (one `<image>` each)
    messages     {"messages": [{"role", "content"}], "images": [...]} (LLaMA-Factory, ms-swift):
                 content is a string with `<image>` placeholders (taking the `images` in order)
                 or a list of parts {"type": "text" | "image" | "image_url", ...}
    pairs        an image and a text (ImageFolder's metadata, HF datasets): text-to-image, or
                 with task caption the image in and the text out

One question and one answer become an understanding record (task `instruct` unless the user
names another text task); several become a conversation (`turns`). System turns are prepended
to the first user turn (or kept only in `meta.system`). What does not fit the utamoe format
raises `Unmappable` with the reason, which the importer reports with the record's source file
and index: turns that do not alternate user / assistant, an image in an assistant turn, two
images in one turn, an image a task needs but the record lacks, an empty text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from utamoe.tasks import get_task, is_task

IMAGE_TOKEN = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "model": "assistant", "bot": "assistant", "system": "system"}
_TOKEN = re.compile(r"\s*<image>\s*")


class Unmappable(ValueError):
    """A source record that has no utamoe record; the message says why."""


@dataclass
class Msg:
    role: str  # user / assistant / system
    text: str
    images: list[Any] = field(default_factory=list)  # image references (resolved by the importer)


@dataclass(frozen=True)
class Options:
    task: str = "instruct"  # the text task of instruction records (pairs: t2i or caption)
    system: str = "prepend"  # system turns: "prepend" to the first user turn, or "meta" only
    prompt: str = "describe the image"  # the prompt of caption records made from pairs


def _role(raw: Any, where: str) -> str:
    role = ROLES.get(str(raw).lower()) if isinstance(raw, str) else None
    if role is None:
        raise Unmappable(f"{where}: unknown role {raw!r} (known: {', '.join(sorted(ROLES))})")
    return role


def _split_tokens(text: str, images: list, where: str) -> tuple[str, list]:
    """A text with `<image>` placeholders -> (the text without them, one image each, in
    order, taken from `images`)."""
    n = text.count(IMAGE_TOKEN)
    if n > len(images):
        raise Unmappable(f"{where} has {n} {IMAGE_TOKEN} placeholder(s) but only {len(images)} "
                         "image(s) are left to fill them")
    return _TOKEN.sub("\n", text).strip(), [images.pop(0) for _ in range(n)]


def llava_messages(rec: Any) -> list[Msg]:
    """A LLaVA record's turns, with its image(s) on the turns that hold `<image>`."""
    if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
        raise Unmappable("not a LLaVA record (an object with a 'conversations' list)")
    image = rec.get("image")
    images = [] if image in (None, "") else list(image) if isinstance(image, list) else [image]
    marked = any(IMAGE_TOKEN in str(t.get("value", "")) for t in rec["conversations"]
                 if isinstance(t, dict))
    msgs = []
    for k, turn in enumerate(rec["conversations"]):
        where = f"conversations[{k}]"
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise Unmappable(f"{where} must be an object with 'from' and a string 'value'")
        text, imgs = _split_tokens(turn["value"], images, where)
        msgs.append(Msg(_role(turn.get("from"), f"{where}.from"), text, imgs))
    if images and not marked:  # no placeholder: the image goes with the first user turn
        first = next((m for m in msgs if m.role == "user"), None)
        if first is None or len(images) > 1:
            raise Unmappable(f"{len(images)} image(s) without an {IMAGE_TOKEN} placeholder to "
                             "place them")
        first.images, images = images, []
    if images:
        raise Unmappable(f"{len(images)} image(s) but fewer {IMAGE_TOKEN} placeholders in the "
                         "turns; give each image its placeholder")
    return msgs


def _part_image(part: dict, images: list, where: str) -> Any:
    kind = part.get("type")
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str) or not url:
            raise Unmappable(f"{where}: an image_url part without a url")
        return url
    ref = part.get("image")
    if ref not in (None, ""):
        return ref
    if not images:
        raise Unmappable(f"{where}: an image part without an image, and no 'images' are left")
    return images.pop(0)


def _content(content: Any, images: list, where: str) -> tuple[str, list]:
    if isinstance(content, str):
        return _split_tokens(content, images, where)
    if not isinstance(content, list):
        raise Unmappable(f"{where}.content must be a string or a list of parts")
    texts, imgs = [], []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if isinstance(part, str):
            part = {"type": "text", "text": part}
        if not isinstance(part, dict) or part.get("type") not in ("text", "image", "image_url"):
            raise Unmappable(f"{at}: a part is {{'type': 'text' | 'image' | 'image_url', ...}}")
        if part["type"] == "text":
            text, more = _split_tokens(str(part.get("text") or ""), images, at)
            texts.append(text)
            imgs += more
        else:
            imgs.append(_part_image(part, images, at))
    return "\n".join(t for t in texts if t).strip(), imgs


def messages_messages(rec: Any, images_key: str = "images") -> list[Msg]:
    """A `messages` record's turns, the `images` list filling `<image>` placeholders and
    image parts without an image of their own, in order."""
    if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
        raise Unmappable("not a messages record (an object with a 'messages' list)")
    given = rec.get(images_key) or []
    images = list(given) if isinstance(given, list) else [given]
    msgs = []
    for k, m in enumerate(rec["messages"]):
        where = f"messages[{k}]"
        if not isinstance(m, dict):
            raise Unmappable(f"{where} must be an object with 'role' and 'content'")
        text, imgs = _content(m.get("content"), images, where)
        msgs.append(Msg(_role(m.get("role"), f"{where}.role"), text, imgs))
    if images:
        raise Unmappable(f"{len(images)} of the record's images have no {IMAGE_TOKEN} "
                         "placeholder or image part; give each image its place")
    return msgs


def record_of(msgs: list[Msg], opts: Options) -> dict[str, Any]:
    """Turns -> one utamoe record (without id; images still references): see the module doc."""
    system = [m.text for m in msgs if m.role == "system" and m.text]
    if any(m.images for m in msgs if m.role == "system"):
        raise Unmappable("a system turn with an image")
    turns = [m for m in msgs if m.role != "system"]
    meta: dict[str, Any] = {"system": "\n".join(system)} if system else {}
    if system and opts.system == "prepend" and turns and turns[0].role == "user":
        turns[0] = Msg("user", "\n".join([*system, turns[0].text]).strip(), turns[0].images)
    _check_turns(turns)
    spec = _text_task(opts.task)
    if spec.needs_image and not any(m.images for m in turns):
        raise Unmappable(f"no image, but task '{spec.name}' needs one (pass --task instruct, "
                         "whose image is optional)")
    base = {"task": spec.name, "group": spec.group, **({"meta": meta} if meta else {})}
    if len(turns) == 2:
        user, answer = turns
        rec = {**base, "prompt": user.text, "target": answer.text}
        if user.images:
            rec["image"] = user.images[0]
        return rec
    for k, m in enumerate(turns):
        if not m.text:
            raise Unmappable(f"turn {k} ({m.role}) has no text; a conversation's turns all need "
                             "some")
    return {**base, "turns": [{"role": m.role, "text": m.text,
                               **({"image": m.images[0]} if m.images else {})} for m in turns]}


def _check_turns(turns: list[Msg]) -> None:
    if len(turns) < 2:
        raise Unmappable("fewer than two turns (a question and its answer)")
    for k, m in enumerate(turns):
        want = ("user", "assistant")[k % 2]
        if m.role != want:
            raise Unmappable(f"turn {k} is by the {m.role} where the {want} must speak: turns "
                             "alternate user, assistant, ... starting with the user")
        if len(m.images) > 1:
            raise Unmappable(f"turn {k} holds {len(m.images)} images; a turn holds at most one")
        if m.images and m.role == "assistant":
            raise Unmappable(f"turn {k} is an assistant turn with an image; images are inputs")
    if turns[-1].role != "assistant":
        raise Unmappable("the last turn is a user turn without an answer")
    if not turns[-1].text:
        raise Unmappable("the last answer is empty")


def _text_task(name: str):
    if not is_task(name) or get_task(name).output != "text":
        raise Unmappable(f"--task {name!r} is not a registered text task")
    return get_task(name)


def pair_record(image: Any, text: Any, opts: Options) -> dict[str, Any]:
    """An image and its text -> a t2i record (the text is the prompt) or, with task caption
    (any text task), a record whose answer is the text."""
    if not isinstance(text, str) or not text.strip():
        raise Unmappable("the text is empty or missing")
    if image in (None, ""):
        raise Unmappable("the image is missing")
    spec = get_task(opts.task) if is_task(opts.task) else None
    if spec is None:
        raise Unmappable(f"--task {opts.task!r} is not a registered task")
    if spec.layout == "generate":
        return {"task": spec.name, "group": spec.group, "prompt": text.strip(),
                "target_image": image}
    if spec.layout == "answer":
        return {"task": spec.name, "group": spec.group, "prompt": opts.prompt, "image": image,
                "target": text.strip()}
    raise Unmappable(f"--task {opts.task!r} is an edit task; pairs map to t2i or a text task")
