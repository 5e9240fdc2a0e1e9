"""What the predictor checks before anything runs: texts, images, conversation turns, sampling
settings, devices; every failure an `InputError` whose message says what to do."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from utamoe.config import ConfigError
from utamoe.data.conversations import ROLES
from utamoe.infer.sampling import SamplingConfig
from utamoe.tasks import Task, get_task


class InputError(ValueError):
    """Bad input to a predictor or a CLI verb (a path, an image, a prompt); the message says
    what to do."""


def texts(items: Sequence[str] | str, what: str) -> list[str]:
    """One or several non-empty texts, stripped."""
    items = [items] if isinstance(items, str) else list(items)
    if not items:
        raise InputError(f"give at least one {what}")
    for i, t in enumerate(items):
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"{what} number {i + 1} is empty")
    return [t.strip() for t in items]


def is_one_image(images) -> bool:
    """Whether `images` is one image (PIL or an array), not a list of them."""
    return isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)
                                               and images.dtype != object)


def checked_turn(turn, processor, i: int):
    """A conversation turn with its image through the model's processor; a clear error for a
    bad one."""
    if getattr(turn, "role", None) not in ROLES or not isinstance(getattr(turn, "text", None), str):
        raise InputError(f"conversation {i + 1}: a turn needs a role ({', '.join(ROLES)}) and a "
                         "text (utamoe.data.conversations.Turn)")
    if turn.image is None:
        return turn
    try:
        return dataclasses.replace(turn, image=processor(turn.image))
    except (ValueError, TypeError) as err:
        raise InputError(f"conversation {i + 1}: cannot use the image: {err}") from err


@functools.cache
def blank(size: int) -> np.ndarray:
    """A blank image, for measuring how long a prompt's sequence is."""
    return np.zeros((size, size, 3), np.uint8)


def task_spec(name: str) -> Task:
    """The registered task, or an InputError naming the registered ones."""
    try:
        return get_task(name)
    except ConfigError as err:
        raise InputError(str(err)) from None


def check_sampling(cfg: SamplingConfig) -> SamplingConfig:
    """Sampling settings a user typed, checked: no NaN, nothing negative that would silently
    mean something else."""
    checks = [("temperature", math.isfinite(cfg.temperature) and cfg.temperature >= 0,
               "a number >= 0 (0 = greedy)"),
              ("top_k", cfg.top_k >= 0, "an integer >= 0 (0 = no top-k filter)"),
              ("top_p", math.isfinite(cfg.top_p) and 0 < cfg.top_p <= 1,
               "a number in (0, 1] (1 = no nucleus filter)"),
              ("cfg_scale", math.isfinite(cfg.cfg_scale) and cfg.cfg_scale >= 0,
               "a number >= 0 (1 = no guidance)"),
              ("max_new_tokens", cfg.max_new_tokens >= 1, "an integer >= 1"),
              ("seed", cfg.seed >= 0, "an integer >= 0")]
    for name, ok, want in checks:
        if not ok:
            raise InputError(f"--{name.replace('_', '-')} {getattr(cfg, name)} is invalid: give {want}")
    return cfg


def check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
