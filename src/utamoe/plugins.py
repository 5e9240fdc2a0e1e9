"""Plug-ins: what code outside utamoe registers, found by a fresh process through entry points.

utamoe's registries (tasks, expert banks, vision-encoder kinds, executors, benchmarks) take
additions from Python (`register_task(...)` and friends) and, so that a new process or a
saved model's loader finds them without that code being imported first, from the entry
points of installed packages:

    [project.entry-points."utamoe.tasks"]             # name -> a utamoe.tasks.Task
    ocr = "my_pkg.tasks:OCR"
    [project.entry-points."utamoe.expert_banks"]      # name -> an ExpertBank subclass
    dora = "my_pkg.experts:DoRAExperts"
    [project.entry-points."utamoe.vision_encoders"]   # name -> an EncoderKind
    dino = "my_pkg.vision:DinoEncoder"
    [project.entry-points."utamoe.benchmarks"]        # name -> a utamoe.benchmarks.Benchmark
    my_bench = "my_pkg.bench:BENCHMARK"
    [project.entry-points."utamoe.executors"]         # name -> an executor factory (on use)

A registry calls `discover(group, register)` when it is asked for a name it does not hold
(or for all its names): each entry point of the group is loaded once per process and
handed to `register(name, object)`; a name the registry already holds is left alone, so
an entry point never replaces a built-in. `builtin` names entries shipped with utamoe
itself as "module:attribute" strings (ShapesWorld's benchmark), loaded the same way, so
the core never imports them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Mapping

from utamoe.config import ConfigError

_DISCOVERED: set[str] = set()


class PluginError(ConfigError):
    """An entry point that cannot be loaded; the message names it and its package."""


def entry_points(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    """The installed entry points of `group`, by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


def load_object(spec: str):
    """The object a 'module:attribute' string names."""
    module, _, attr = spec.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def discover(group: str, register: Callable[[str, object], None], known: Mapping | None = None,
             builtin: Mapping[str, str] | None = None) -> None:
    """Load the entry points of `group` (and `builtin` name -> 'module:attribute') once per
    process and register each object whose name is not in `known` (see the module docstring)."""
    if group in _DISCOVERED:
        return
    _DISCOVERED.add(group)  # first: a plug-in that consults the registry does not recurse
    found: list[tuple[str, Callable[[], object], str]] = [
        (name, lambda spec=spec: load_object(spec), spec)
        for name, spec in (builtin or {}).items()]
    found += [(name, ep.load, ep.value) for name, ep in entry_points(group).items()
              if name not in (builtin or {})]
    for name, load, value in found:
        if known is not None and name in known:
            continue
        try:
            obj = load()
        except Exception as err:  # a broken plug-in must say which one it is
            raise PluginError(f"plug-in {name!r} (entry point {value!r} of group {group}) fails "
                              f"to load: {type(err).__name__}: {err}; fix or reinstall the package "
                              "that provides it") from err
        register(name, obj)


def rediscover(group: str | None = None) -> None:
    """Forget what was discovered (all groups, or one), so the next lookup loads entry points
    again (tests that install a package while the process runs)."""
    if group is None:
        _DISCOVERED.clear()
    else:
        _DISCOVERED.discard(group)
