"""The executor contract and registry: what carries out a task span, and how one is found.

Executors are registered per span *tag* (`<seg>...</seg>` has the tag seg), a name of its own:
not a registered task of utamoe.tasks (a model task; the factories' `task` option names one,
the task the unified model draws with). An executor is any object with a `name`, the `tag` it
serves by default, and
`__call__(ExecRequest) -> ExecResult`. The request holds the span's text and boxes and the
conversation's images; the result holds images, masks and/or text. The LLM never sees an
executor: adding one needs no retraining, only an entry in a config or a plugin.

Executors are built by *factories*, `factory(context: ExecContext, **options) -> Executor`,
named in a config by

    "package.module:callable"   imported on use
    "name"                      a built-in (BUILTIN_EXECUTORS) or a plugin: an entry point
                                of the group `utamoe.executors` of any installed package

so a separate package adds an executor with, in its pyproject.toml,

    [project.entry-points."utamoe.executors"]
    my_seg = "my_pkg.seg:make_executor"

and a user selects it with `executors: {seg: my_seg}`. `register_executor(tag, factory)`
sets the default executor of a tag (the built-ins: t2i, edit, seg, layout); a config
overrides a default, or removes it with None. The full contract is in docs/executors.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from utamoe.config import ConfigError
from utamoe.infer.sampling import SamplingConfig
from utamoe.text.boxes import Box
from utamoe.text.spans import TaskSpan, _check_tag

ENTRY_POINT_GROUP = "utamoe.executors"


class ExecutorError(ConfigError):
    """An executor cannot be found or built; the message names the config key and the fix."""


class ExecInputError(ValueError):
    """A request that an executor cannot carry out (no image, no box); the router reports it."""


@dataclass(frozen=True)
class ExecRequest:
    """What an executor gets: the span's tag, text and boxes (normalised (x0, y0, x1, y1)),
    the span's pieces in order (`parts`: text and boxes interleaved), and the conversation's
    images (HxWx3 uint8, oldest first, read-only)."""

    tag: str
    text: str
    boxes: tuple[Box, ...] = ()
    images: tuple[np.ndarray, ...] = ()
    parts: tuple[str | Box, ...] = ()

    @classmethod
    def of(cls, span: TaskSpan, images=()) -> ExecRequest:
        return cls(span.tag, span.text, tuple(span.boxes), tuple(images), tuple(span.parts))

    @property
    def image(self) -> np.ndarray | None:
        """The conversation's latest image: the one an image executor works on."""
        return self.images[-1] if self.images else None

    def need_image(self) -> np.ndarray:
        if self.image is None:
            raise ExecInputError(f"<{self.tag}> needs an image in the conversation; give one")
        return self.image

    def need_boxes(self) -> tuple[Box, ...]:
        if not self.boxes:
            raise ExecInputError(f"<{self.tag}> needs a <box>[x0,y0,x1,y1]</box> in its span")
        return self.boxes


@dataclass
class ExecResult:
    """What an executor returns: images (HxWx3 uint8), masks (HxW uint8, 0 or 255), text, and
    `info` (anything JSON-like an executor wants to report, e.g. what it regenerated)."""

    images: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    text: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """What is wrong with this result, in words (empty when it keeps the contract)."""
        out = []
        for kind, arrays, ndim in (("image", self.images, 3), ("mask", self.masks, 2)):
            if not isinstance(arrays, (list, tuple)):
                out.append(f"{kind}s is a {type(arrays).__name__}, not a list")
                continue
            for k, a in enumerate(arrays):
                if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != ndim \
                        or (ndim == 3 and a.shape[2] != 3):
                    what = (f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray)
                            else type(a).__name__)
                    want = "HxWx3 uint8" if ndim == 3 else "HxW uint8"
                    out.append(f"{kind} {k} is {what}, not {want}")
        if self.text is not None and not isinstance(self.text, str):
            out.append(f"text is a {type(self.text).__name__}, not a str")
        if not (self.images or self.masks or self.text):
            out.append("it holds no image, mask or text")
        return out


@runtime_checkable
class Executor(Protocol):
    name: str
    tag: str

    def __call__(self, request: ExecRequest) -> ExecResult: ...


@dataclass(frozen=True)
class ExecContext:
    """What factories may use: the unified model's predictor (for the built-in model
    executors; None when there is none) and the device for executors that load models."""

    predictor: Any = None
    device: str = "cpu"


Factory = Callable[..., Executor]

BUILTIN_EXECUTORS: dict[str, str] = {
    "model_t2i": "utamoe.tasks_exec.builtin:model_t2i",
    "model_edit": "utamoe.tasks_exec.builtin:model_edit",
    "model_layout": "utamoe.tasks_exec.builtin:model_layout",
    "box_edit": "utamoe.tasks_exec.grounded:box_edit",
    "box_seg": "utamoe.tasks_exec.builtin:box_seg",
    "diffusers_t2i": "utamoe.tasks_exec.diffusers_exec:diffusers_t2i",
    "diffusers_edit": "utamoe.tasks_exec.diffusers_exec:diffusers_edit",
}

# tag -> the factory (or its name / import string) of its default executor
_DEFAULTS: dict[str, Factory | str] = {
    "t2i": "model_t2i", "edit": "box_edit", "seg": "box_seg", "layout": "model_layout",
}


def register_executor(tag: str, factory: Factory | str, replace: bool = False) -> None:
    """Make `factory` (a callable, an import string or a name) the default executor of `tag`."""
    _check_tag(tag)
    if tag in _DEFAULTS and not replace:
        raise ExecutorError(f"tag {tag!r} already has a default executor "
                            f"({_describe(_DEFAULTS[tag])}); pass replace=True to change it")
    _DEFAULTS[tag] = factory


def unregister_executor(tag: str) -> None:
    _DEFAULTS.pop(tag, None)


def registered_tags() -> list[str]:
    """Tags with a default executor, in registration order."""
    return list(_DEFAULTS)


def plugin_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed plugins: entry points of the group `utamoe.executors`, by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_executors() -> list[str]:
    """Names a config may use: the built-ins, then installed plugins."""
    return [*BUILTIN_EXECUTORS, *(n for n in plugin_entry_points() if n not in BUILTIN_EXECUTORS)]


def resolve_factory(spec: Factory | str, where: str = "executor") -> Factory:
    """A factory from a callable, 'module:callable', a built-in name or a plugin name."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ExecutorError(f"{where}: {spec!r} is not an executor; give 'package.module:callable' "
                            f"or a name ({', '.join(available_executors())})")
    spec = spec.strip()
    if ":" in spec:
        return _import(spec, where)
    if spec in BUILTIN_EXECUTORS:
        return _import(BUILTIN_EXECUTORS[spec], where)
    plugins = plugin_entry_points()
    if spec in plugins:
        ep = plugins[spec]
        try:
            return ep.load()
        except Exception as err:  # a broken plugin must say which one it is
            raise ExecutorError(f"{where}: plugin {spec!r} (entry point {ep.value!r} of group "
                                f"{ENTRY_POINT_GROUP}) fails to load: {type(err).__name__}: {err}; "
                                "fix or reinstall the package that provides it") from err
    names = available_executors()
    hint = difflib.get_close_matches(spec, names, n=1)
    raise ExecutorError(f"{where}: no executor named {spec!r}"
                        + (f"; did you mean {hint[0]!r}?" if hint else "")
                        + f" Known names: {', '.join(names)}; or give 'package.module:callable', "
                        f"or install a package with a {ENTRY_POINT_GROUP!r} entry point")


def _import(spec: str, where: str) -> Factory:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ExecutorError(f"{where}: {spec!r} is not 'package.module:callable'")
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise ExecutorError(f"{where}: cannot import module {module!r} of {spec!r} ({err}); "
                            "check the spelling, and that its package is installed") from err
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ExecutorError(f"{where}: module {module!r} has no {attr!r} (from {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ExecutorError(f"{where}: {spec!r} is a {type(obj).__name__}, not a factory callable")
    return obj


def build_executor(spec: Factory | str | Mapping, context: ExecContext | None = None,
                   where: str = "executor") -> Executor:
    """One executor from a spec: a factory (callable / string) or {"use": spec, **options}."""
    options: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        options = dict(spec)
        if "use" not in options:
            raise ExecutorError(f"{where}: a mapping needs 'use' (the executor), e.g. "
                                "{use: diffusers_t2i, model_dir: DIR}")
        spec = options.pop("use")
    factory = resolve_factory(spec, where)
    try:
        ex = factory(context or ExecContext(), **options)
    except ExecutorError as err:
        raise ExecutorError(f"{where}: {err}") from err
    except TypeError as err:
        raise ExecutorError(f"{where}: {_describe(spec)} cannot be built with options "
                            f"{sorted(options)}: {err}") from err
    except Exception as err:  # a factory's own failure (a missing model directory, ...)
        raise ExecutorError(f"{where}: building {_describe(spec)} failed: "
                            f"{type(err).__name__}: {err}") from err
    if not callable(ex) or not isinstance(getattr(ex, "name", None), str) \
            or not isinstance(getattr(ex, "tag", None), str):
        raise ExecutorError(f"{where}: {_describe(spec)} built a {type(ex).__name__}, which is not "
                            "an executor (it needs `name`, `tag` and __call__(request); see "
                            "docs/executors.md)")
    return ex


def executors_from_config(config: Mapping[str, Any] | None, context: ExecContext | None = None,
                          defaults: bool = True, where: str = "executors") -> dict[str, Executor]:
    """tag -> executor, from a config mapping (tag -> spec, or None to drop a default),
    on top of the registered defaults (`defaults=False`: only what the config names)."""
    config = dict(config or {})
    specs: dict[str, Any] = dict(_DEFAULTS) if defaults else {}
    for tag, spec in config.items():
        try:
            _check_tag(tag)
        except ValueError as err:
            raise ExecutorError(f"{where}.{tag}: {err}") from None
        specs[tag] = spec
    out = {}
    for tag, spec in specs.items():
        if spec is None:
            continue
        key = f"{where}.{tag}" if tag in config else f"{where}.{tag} (the default)"
        out[tag] = build_executor(spec, context, key)
    return out


def _describe(spec) -> str:
    if isinstance(spec, str):
        return repr(spec)
    return getattr(spec, "__qualname__", type(spec).__name__)


def need_predictor(context: ExecContext, name: str):
    """The context's predictor, or an error that says how to give one (or drop the executor)."""
    if context.predictor is None:
        raise ExecutorError(f"executor {name!r} runs the unified model, but no predictor was "
                            "given: pass ExecContext(predictor=Predictor.load(DIR)), or configure "
                            "another executor for the tag (or None to drop it)")
    return context.predictor


def sampling_config(options: dict | None, where: str) -> SamplingConfig:
    """SamplingConfig from a config mapping; an unknown key is an error that lists the fields."""
    options = dict(options or {})
    names = [f.name for f in dataclasses.fields(SamplingConfig)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ExecutorError(f"{where}.sampling: unknown keys {unknown}; the fields are "
                            f"{', '.join(names)}")
    return SamplingConfig(**options)
