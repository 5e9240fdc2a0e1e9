"""A multi-turn chat with a model that answers in text and task spans, executors included.

    utamoe chat --model RUN/model --image scene.png [--out chat-out]
    you> what color is the circle?
    model> red
    you> remove the shape left of the red circle
    model> <edit>remove the green square<box>[0.05,0.05,0.28,0.28]</box></edit>
      <edit> box_edit: image chat-out/turn2_edit_0.png (0.21 s)

Each user line is a turn; the model answers with the whole conversation as context (the
`dialog` task's layout, utamoe.data.sequences), and every task span in its answer goes
through the span router (utamoe.tasks_exec) to its executor, whose images and masks are
written as PNGs under the output directory and named on screen; an answer that does not
parse or an executor that fails is shown as its structured error, never a crash. Images an
executor produces join the conversation's images, so a later edit works on the latest one;
the model's own context stays the text of the turns and the user's images.

Lines starting with "/" are commands: `/image PATH` (attach an image to the next turn),
`/reset` (a new conversation), `/quit`. Standard input may be a script (one line per
turn), which is how the tests drive it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utamoe.data.conversations import Turn
from utamoe.infer.checks import InputError
from utamoe.tasks_exec import SpanOutcome, SpanRouter
from utamoe.tasks_exec.builtin import write_mask_png

Reply = Callable[[list[Turn]], str]  # the conversation so far (ending with the user) -> answer


@dataclass
class ChatSession:
    reply: Reply
    router: SpanRouter
    out_dir: Path
    turns: list[Turn] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)  # what executors see, oldest first
    pending: np.ndarray | None = None  # the image the next user turn carries

    def attach(self, image: np.ndarray) -> None:
        self.pending = image

    def reset(self) -> None:
        self.turns, self.images, self.pending = [], [], None

    def say(self, text: str) -> list[str]:
        """One exchange: the user's text in, the lines to show out (answer and results). A turn
        the model cannot take (InputError: over its positions, no image for its task) is not
        kept: the conversation stays as it was, and the image stays attached."""
        image, self.pending = self.pending, None
        self.turns.append(Turn("user", text, image))
        try:
            answer = self.reply(self.turns)
        except InputError:
            self.turns.pop()
            self.pending = image
            raise
        if image is not None:
            self.images.append(image)
        self.turns.append(Turn("assistant", answer))
        _, outcomes = self.router.run(answer, images=self.images)
        n = sum(t.role == "assistant" for t in self.turns)
        return [f"model> {answer}", *(self._show(o, n, k) for k, o in enumerate(outcomes))]

    def _show(self, o: SpanOutcome, turn: int, k: int) -> str:
        tag = f"  <{o.tag or '?'}>"
        if o.error is not None:
            return f"{tag} error {o.error.kind}: {o.error.message}"
        from PIL import Image

        shown = []
        for j, img in enumerate(o.result.images):
            path = self.out_dir / f"turn{turn}_{o.tag}{k}_image{j}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
            self.images.append(img)
            shown.append(f"image {path}")
        for j, mask in enumerate(o.result.masks):
            shown.append(f"mask {write_mask_png(mask, self.out_dir / f'turn{turn}_{o.tag}{k}_mask{j}.png')}")
        if o.result.text:
            shown.append(o.result.text)
        return f"{tag} {o.executor}: {'; '.join(shown)} ({o.seconds:.2f} s)"


def run_chat(session: ChatSession, lines: Iterable[str], write: Callable[[str], None],
             read_image: Callable[[str], np.ndarray], prompt: Callable[[], None] = lambda: None,
             ) -> int:
    """Drive a session from `lines` (a terminal or a script) until /quit or the end; returns
    how many exchanges ran. A bad /image path, a turn over the model's positions or without
    the image its task needs is reported and the session goes on."""
    exchanges = 0
    prompt()
    for raw in lines:
        line = raw.strip()
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            session.reset()
            write("(new conversation)")
        elif line.startswith("/image"):
            path = line[len("/image"):].strip()
            try:
                session.attach(read_image(path))
                write(f"(image {path} attached to the next turn)")
            except (OSError, ValueError) as err:
                write(f"error: {err}")
        elif line.startswith("/"):
            write(f"error: unknown command {line.split()[0]}; use /image PATH, /reset or /quit")
        elif line:
            write(f"you> {line}")
            try:
                shown = session.say(line)
            except InputError as err:  # recoverable: say so, keep the session open
                write(f"error: {err} (/reset starts a new conversation)")
            else:
                for out in shown:
                    write(out)
                exchanges += 1
        prompt()
    return exchanges


def model_reply(predictor, task: str = "dialog", sampling=None) -> Reply:
    """A Reply from a Predictor: its `converse` on `task` (a model trained on conversations)."""
    known = predictor.encoder.special.tasks
    if task not in known:
        raise InputError(f"the model was not trained on {task!r} conversations (its tokenizer "
                         f"has no <{task}> marker; it knows {', '.join(known)}); train it on "
                         "data with dialog records (configs/unifiedmllm.yaml) or pass --task")

    def reply(turns: list[Turn]) -> str:
        return predictor.converse([turns], task, sampling)[0]

    return reply
