"""Task spans and grounding tokens: the grammar of a model answer that asks for work.

UnifiedMLLM's model answers with text and *task spans*, each a pair of tag tokens around
an instruction, with *grounding tokens* around normalised boxes:

    I'll remove it. <edit>remove the object<box>[0.35,0.02,0.65,0.31]</box></edit>

A span `<T>...</T>` asks the executor of its *tag* T (utamoe.tasks_exec.executors: executors are
registered per tag, which is not a registered task of utamoe.tasks, though the built-in tags
t2i, edit, layout and seg share their names with tasks) to do what its
text and boxes say. A box is `<box>[x0,y0,x1,y1]</box>` in the one box grammar of
utamoe.text.boxes (`format_box`, two decimals); a box outside a span is a grounding answer in
plain text ("it is at <box>[...]</box>").

The parser never raises on model output: an unclosed, unknown, nested or mismatched tag
token, a stray closer, a box that does not parse, lies outside [0, 1] or is empty becomes a
`SpanError` that says what was wrong and where (character offsets), and the span it
belongs to is not executed. The set of tags is an argument (the router passes the tags it
has executors for): nothing here knows which tags exist.
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from utamoe.text.boxes import BOX_CLOSE, BOX_OPEN, Box, box_token, format_box, is_box, read_box

BOX = "box"

# kind -> what it means (docs/executors.md shows this table)
ERROR_KINDS = {
    "unknown_tag": "a tag token whose tag has no executor (or a misspelt one)",
    "unclosed": "a tag token <T> with no </T> before the end of the text",
    "nested": "a tag token inside another span (spans do not nest)",
    "mismatched_closer": "a span <T> closed by </U>",
    "stray_closer": "a closing token </T> or </box> with no opener",
    "empty_span": "a span with neither text nor boxes",
    "unclosed_box": "<box> with no </box> before the next token",
    "bad_box": "box text that is not [x0,y0,x1,y1] (four numbers)",
    "box_out_of_range": "a box coordinate outside [0, 1]",
    "empty_box": "a box with x0 >= x1 or y0 >= y1",
    # raised by the router (utamoe.tasks_exec.router), not the parser:
    "no_executor": "a span of a tag that the router has no executor for",
    "bad_input": "the conversation's images are not HxWx3 uint8 arrays",
    "executor_error": "the executor raised; `detail` holds the exception",
    "timeout": "the executor did not finish within the router's timeout_s",
    "bad_result": "the executor returned something other than a valid ExecResult",
}

_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9_]*)>")


@dataclass(frozen=True)
class SpanError:
    """What was wrong (`kind`, one of ERROR_KINDS), said for a person (`message`), and where:
    characters [start, end) of the parsed text. `tag` and `text` name the span it spoiled
    (if any); `detail` holds an executor's exception as 'Type: message'."""

    kind: str
    message: str
    start: int
    end: int
    tag: str | None = None
    text: str = ""
    detail: str = ""


@dataclass(frozen=True)
class TaskSpan:
    """One well-formed span: its tag, its text (boxes taken out, whitespace collapsed), its
    boxes in order, characters [start, end) of the answer, and `parts`: the text pieces and
    boxes in the order written (a layout prompt pairs each phrase with its box)."""

    tag: str
    text: str
    boxes: tuple[Box, ...]
    start: int
    end: int
    parts: tuple[str | Box, ...] = ()


@dataclass
class ParsedResponse:
    """A parsed answer: the plain text outside spans (`text_parts`, in order; a free box
    appears there as its '[x0,y0,x1,y1]' text and in `boxes`), the spans and the errors."""

    text_parts: list[str] = field(default_factory=list)
    spans: list[TaskSpan] = field(default_factory=list)
    errors: list[SpanError] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The plain text, whitespace collapsed."""
        return " ".join(" ".join(self.text_parts).split())

    @property
    def ok(self) -> bool:
        return not self.errors


def span_token_strings(tags: Iterable[str]) -> list[str]:
    """The token strings a text tokenizer must never split: <T> and </T> for every tag, then
    <box> and </box>."""
    out: list[str] = []
    for t in tags:
        _check_tag(t)
        out += [f"<{t}>", f"</{t}>"]
    return out + [BOX_OPEN, BOX_CLOSE]


def format_span(tag: str, text: str, boxes: Sequence[Sequence[float]] = ()) -> str:
    """The inverse of parsing: '<tag>text<box>[..]</box>...</tag>' (boxes after the text;
    to interleave phrases and boxes, write `box_token(b)` into the text yourself)."""
    _check_tag(tag)
    if _TAG.search(_BOX_TAGS.sub("", text)):
        raise ValueError(f"span text {text!r} holds a tag token; spans do not nest")
    return f"<{tag}>{text}{''.join(box_token(b) for b in boxes)}</{tag}>"


_BOX_TAGS = re.compile(r"</?box>")


def _check_tag(tag: str) -> None:
    if not isinstance(tag, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", tag) or tag == BOX:
        raise ValueError(f"tag {tag!r} cannot be a span tag: use letters, digits and "
                         f"'_', starting with a letter, and not {BOX!r}")


def parse_response(text: str, known_tags: Iterable[str]) -> ParsedResponse:
    """Task spans, free boxes, plain text and structured errors of a model's answer; never
    raises on any string."""
    return _Parser(str(text or ""), frozenset(known_tags)).run()


@dataclass
class _Open:
    """A span being read."""

    tag: str
    start: int
    parts: list = field(default_factory=list)
    spoiled: list[int] = field(default_factory=list)  # indices of the errors that spoil it
    inner: list[str] = field(default_factory=list)  # nested openers waiting for their closer


def _span_text(s: _Open) -> str:
    return " ".join("".join(p for p in s.parts if isinstance(p, str)).split())


class _Parser:
    def __init__(self, text: str, known: frozenset[str]):
        self.text, self.known = text, known
        self.tags = list(_TAG.finditer(text))
        # Where each closer token occurs (tag index, ascending): an unknown opener finds its
        # closer by bisection, not by a scan (a text of n unknown openers is not n² steps).
        self.closers: dict[str, list[int]] = {}
        for j, m in enumerate(self.tags):
            if m.group(1):
                self.closers.setdefault(m.group(2), []).append(j)
        self.out = ParsedResponse()
        self.span: _Open | None = None
        self.pos = 0

    def run(self) -> ParsedResponse:
        i = 0
        while i < len(self.tags):
            m = self.tags[i]
            self._plain(m.start())
            self.pos = m.end()
            i = self._closer(i) if m.group(1) else self._opener(i)
        self._plain(len(self.text))
        if self.span is not None:
            s = self.span
            self._error("unclosed", f"<{s.tag}> at {s.start} is never closed: end it with "
                        f"</{s.tag}>", s.start, len(self.text))
            self._spoiled(s, _span_text(s))
        return self.out

    def _plain(self, upto: int) -> None:
        if upto > self.pos:
            piece = self.text[self.pos:upto]
            (self.span.parts if self.span else self.out.text_parts).append(piece)

    def _error(self, kind: str, message: str, start: int, end: int) -> None:
        tag = self.span.tag if self.span else None
        if self.span:
            self.span.spoiled.append(len(self.out.errors))
        self.out.errors.append(SpanError(kind, message, start, end, tag))

    def _spoiled(self, s: _Open, text: str) -> None:
        """The errors that spoiled span `s` learn its text (what the caller did not get done)."""
        for k in s.spoiled:
            self.out.errors[k] = replace(self.out.errors[k], text=text)

    def _opener(self, i: int) -> int:
        m, name = self.tags[i], self.tags[i].group(2)
        if name == BOX:
            return self._box(i)
        if name in self.known:
            if self.span is None:
                self.span = _Open(name, m.start())
            else:
                self._error("nested", f"<{name}> at {m.start()} opens inside the <{self.span.tag}> "
                            f"span that starts at {self.span.start}; spans do not nest",
                            m.start(), m.end())
                self.span.inner.append(name)
            return i + 1
        after = self.closers.get(name, [])
        k = bisect.bisect_right(after, i)
        close = after[k] if k < len(after) else None
        end = self.tags[close].end() if close is not None else m.end()
        hint = difflib.get_close_matches(name, sorted(self.known), n=1, cutoff=0.6)
        hint = hint or [t for t in sorted(self.known) if t.lower() == name.lower()]
        self._error("unknown_tag", f"<{name}> at {m.start()} is no known tag "
                    f"({', '.join(sorted(self.known)) or 'none'})"
                    + (f"; did you mean <{hint[0]}>?" if hint else ""), m.start(), end)
        if close is None:
            return i + 1
        self.pos = end
        return close + 1

    def _closer(self, i: int) -> int:
        m, name = self.tags[i], self.tags[i].group(2)
        s = self.span
        if s is not None and s.inner and name == s.inner[-1]:
            s.inner.pop()  # the closer of a nested span (already reported)
        elif s is not None and name == s.tag:
            self._close(m.end())
        elif s is not None and name != BOX:
            self._error("mismatched_closer", f"</{name}> at {m.start()} closes the <{s.tag}> span "
                        f"that starts at {s.start}; close it with </{s.tag}>", m.start(), m.end())
            self._spoiled(s, _span_text(s))
            self.span = None
        else:
            self._error("stray_closer", f"</{name}> at {m.start()} has no <{name}> before it",
                        m.start(), m.end())
        return i + 1

    def _close(self, end: int) -> None:
        s, self.span = self.span, None
        text = _span_text(s)
        boxes = tuple(p for p in s.parts if isinstance(p, tuple))
        if s.spoiled:
            self._spoiled(s, text)
            return
        if not text and not boxes:
            self.out.errors.append(SpanError("empty_span", f"the <{s.tag}> span at {s.start} "
                                              "holds neither text nor a box", s.start, end, s.tag))
            return
        parts = tuple(" ".join(p.split()) if isinstance(p, str) else p for p in s.parts)
        self.out.spans.append(TaskSpan(s.tag, text, boxes, s.start, end,
                                       tuple(p for p in parts if p != "")))

    def _box(self, i: int) -> int:
        m = self.tags[i]
        nxt = self.tags[i + 1] if i + 1 < len(self.tags) else None
        if nxt is None or nxt.group(0) != BOX_CLOSE:
            upto = nxt.start() if nxt is not None else len(self.text)
            self._error("unclosed_box", f"<box> at {m.start()} has no </box> before "
                        + ("the next token" if nxt is not None else "the end"), m.start(), upto)
            self.pos = upto
            return i + 1
        content = self.text[m.end():nxt.start()]
        box = read_box(content)
        self.pos = nxt.end()
        if not is_box(box):
            self._error(box[0], f"the box at {m.start()}: {box[1]}", m.start(), nxt.end())
        elif self.span is not None:
            self.span.parts.append(box)
        else:
            self.out.boxes.append(box)
            self.out.text_parts.append(format_box(box))
        return i + 2
