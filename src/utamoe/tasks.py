"""The task registry: every task utamoe trains and scores is declared here, once.

A `Task` says what the rest of the code needs to know about it:

    name        the record's "task" field, the task token's name (`<name>`) and the mixture key
    group       "und" (reads an image or text, answers in text) or "gen" (produces an image);
                the TA-MoE group its sequences are routed to and supervised with
    layout      how a sample becomes a token sequence (utamoe.data.sequences):
                  "answer"    <bos> <task> [<img> features </img>] prompt <sep> | answer <eos>
                  "generate"  <bos> <task> prompt <img> | codes
                  "edit"      <bos> <task> <img> input codes </img> prompt <img> | codes
    needs_image whether a record must carry an input image (implied by "edit"). An "answer"
                task with needs_image=False takes an image when its record has one and none
                otherwise (questions about a written scene description; free-form
                instructions, some with an image and some without)
    scorer      the generic scorer: (samples, predictions, ScoreContext) -> TaskScore
    benchmark_scorers
                scorers that apply only to data of one benchmark, keyed by its name; eval uses
                one only when the data's manifest names that benchmark. A benchmark also brings
                its own scorers for the tasks it generates (utamoe.benchmarks: ShapesWorld's
                scene parser reads its images and captions exactly); the task's own come first
    headline    metric key -> the flat name in metrics.json / the docs (e.g. "accuracy" ->
                "vqa_accuracy"); keys a scorer does not return are left out
    opt_in      an opt-in task (UnifiedMLLM's) is not in a stage's default data mixture,
                and a text tokenizer trained for a run gets its marker token only when the
                run's training data has the task; so registering such tasks leaves every
                recipe, tokenizer and model of data without them exactly as it was

The output kind ("text" or "image") follows from the layout. A scorer may be a
callable or a "module:function" string, resolved on first use, so that declaring
the built-in tasks imports no evaluation code. Users add their own task from their
own code, before loading data or training:

    from utamoe.tasks import Task, register_task
    register_task(Task("ocr", group="und", layout="answer", scorer=my_ocr_scorer,
                       headline={"accuracy": "ocr_accuracy"}))

A package adds tasks without being imported first with an entry point of the group
`utamoe.tasks` (utamoe.plugins): name -> a Task, or a callable returning one or several;
the registry loads them the first time it is consulted, so a fresh `utamoe` process and a
saved model's loader find them.

The group names here are the one source of truth for task groups; MoE configs are
checked against them (`group_index`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from utamoe import plugins
from utamoe.benchmarks import get_benchmark
from utamoe.config import ConfigError

ENTRY_POINT_GROUP = "utamoe.tasks"
GROUPS: tuple[str, ...] = ("und", "gen")
LAYOUTS = ("answer", "generate", "edit")


@dataclass
class TaskScore:
    """What a scorer returns: metrics over the task's samples, and optional per-sample verdicts
    (sample id -> a verdict object that reports can show, e.g. a generated image's facets)."""

    metrics: dict[str, float]
    verdicts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreContext:
    """What a scorer may know about the data beyond its samples."""

    benchmark: str | None = None  # the data's benchmark (utamoe.benchmarks, from its manifest)
    benchmark_config: Any = None  # the config its generator wrote, if any
    # A utamoe.tasks_exec.SpanRouter that scorers of task-span answers may run the predicted
    # spans through (the executed edit, the mask); None: they score the spans alone.
    span_router: Any = None


Scorer = Callable[[list, list, ScoreContext], "TaskScore | dict[str, float]"]


@dataclass(frozen=True)
class Task:
    name: str
    group: str
    layout: str
    scorer: Scorer | str
    headline: Mapping[str, str] = field(default_factory=dict)
    benchmark_scorers: Mapping[str, Scorer | str] = field(default_factory=dict)
    needs_image: bool | None = None  # None: implied by the layout (answer and edit: yes)
    title: str = ""
    opt_in: bool = False  # see the module docstring

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ConfigError(f"{where}: a task name is letters, digits and '_' (it becomes the "
                              f"token <{self.name}>)")
        if self.group not in GROUPS:
            raise ConfigError(f"{where}: group {self.group!r} is not one of {', '.join(GROUPS)}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"{where}: layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if (self.layout == "answer") != (self.group == "und"):
            raise ConfigError(f"{where}: layout {self.layout!r} does not fit group "
                              f"{self.group!r} ('answer' is und; 'generate' and 'edit' are gen)")
        if self.layout == "generate" and self.needs_image:
            raise ConfigError(f"{where}: a 'generate' task takes no input image")
        if self.layout == "edit" and self.needs_image is False:
            raise ConfigError(f"{where}: an 'edit' task needs an input image")
        if self.needs_image is None:
            object.__setattr__(self, "needs_image", self.layout != "generate")
        if not self.title:
            object.__setattr__(self, "title", self.name)

    @property
    def output(self) -> str:
        """"text" or "image": what the model produces for this task."""
        return "text" if self.layout == "answer" else "image"

    def scorer_for(self, ctx: ScoreContext) -> tuple[str, Scorer]:
        """(scorer name, callable): the benchmark's own scorer when the data is from it (the
        task's for that benchmark, else the benchmark's for this task), else the generic one."""
        chosen = None
        if ctx.benchmark:
            chosen = self.benchmark_scorers.get(ctx.benchmark)
            if chosen is None:
                chosen = get_benchmark(ctx.benchmark).scorers.get(self.name)
        spec = chosen if chosen is not None else self.scorer
        return _scorer_name(spec), _resolve(spec)

    def score(self, samples: list, predictions: list, ctx: ScoreContext) -> tuple[str, TaskScore]:
        name, fn = self.scorer_for(ctx)
        out = fn(samples, predictions, ctx)
        return name, out if isinstance(out, TaskScore) else TaskScore(dict(out))


def _scorer_name(spec) -> str:
    if isinstance(spec, str):
        return spec.rpartition(":")[2]
    return getattr(spec, "__name__", type(spec).__name__)


def _resolve(spec) -> Callable:
    if not isinstance(spec, str):
        return spec
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, Task] = {}


def register_task(task: Task, replace: bool = False) -> Task:
    """Add a task (from any code, before data is loaded); `replace` redefines an existing one."""
    if task.name in _REGISTRY and not replace:
        raise ConfigError(f"task {task.name!r} is already registered; pass replace=True to "
                          "redefine it")
    _REGISTRY[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Remove a task (tests register temporary ones)."""
    _REGISTRY.pop(name, None)


def _register_plugin(name: str, obj) -> None:
    tasks = obj if isinstance(obj, Task) else obj()
    for task in [tasks] if isinstance(tasks, Task) else list(tasks):
        if not isinstance(task, Task):
            raise ConfigError(f"entry point {name!r} of {ENTRY_POINT_GROUP}: {type(task).__name__} "
                              "is not a utamoe.tasks.Task")
        register_task(task)


def _registry() -> dict[str, Task]:
    """The registry, with the installed plug-ins' tasks loaded (once per process)."""
    plugins.discover(ENTRY_POINT_GROUP, _register_plugin, _REGISTRY)
    return _REGISTRY


def get_task(name: str) -> Task:
    try:
        return _REGISTRY[name] if name in _REGISTRY else _registry()[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; registered tasks: {', '.join(_REGISTRY)} "
                          "(register your own with utamoe.tasks.register_task)") from None


def is_task(name: str) -> bool:
    return name in _REGISTRY or name in _registry()


def task_names(group: str | None = None) -> list[str]:
    """Registered task names in registration order (the built-ins first), optionally one group's."""
    return [n for n, t in _registry().items() if group is None or t.group == group]


def default_tasks() -> list[str]:
    """The tasks a stage trains on when its mixture is not given: every task but the opt-in ones."""
    return [n for n, t in _registry().items() if not t.opt_in]


def group_of(name: str) -> str:
    return get_task(name).group


def group_index(group_names, where: str = "moe.group_names") -> list[int]:
    """For each registry group (in GROUPS order), its index in a MoE config's `group_names`.

    The batch labels tokens with registry group indices; a MoE layer reads labels as indices
    into its own `group_names`, so this map is what keeps a recipe that writes
    `group_names: [gen, und]` correct. Names that are not registry groups are an error."""
    names = list(group_names)
    if sorted(names) != sorted(GROUPS):
        raise ConfigError(f"{where} is {names} but the task registry's groups are "
                          f"{list(GROUPS)}; use the same names (in any order)")
    return [names.index(g) for g in GROUPS]


# ---------------------------------------------------------------- the built-in tasks

_S = "utamoe.eval.scorers"
_U = "utamoe.eval.span_scorers"
for _task in (
    Task("caption", "und", "answer", f"{_S}:caption_generic", title="Caption",
         headline={"f1": "caption_f1", "token_f1": "caption_token_f1", "cider": "caption_cider",
                   "bleu4": "caption_bleu4", "exact": "caption_exact"}),
    Task("vqa", "und", "answer", f"{_S}:answer_match", title="VQA",
         headline={"accuracy": "vqa_accuracy"}),
    Task("pope", "und", "answer", f"{_S}:yes_no", title="POPE",
         headline={"accuracy": "pope_accuracy", "f1": "pope_f1"}),
    Task("grounding", "und", "answer", f"{_S}:box_iou", title="Grounding",
         headline={"accuracy": "grounding_acc50"}),
    Task("t2i", "gen", "generate", f"{_S}:image_similarity", title="Text-to-image",
         headline={"correct_all": "t2i_correct_all", "object": "t2i_object", "count": "t2i_count",
                   "color": "t2i_color", "size": "t2i_size", "position": "t2i_position",
                   "psnr": "t2i_psnr", "ssim": "t2i_ssim"}),
    Task("edit", "gen", "edit", f"{_S}:image_similarity", title="Edit",
         headline={"correct_all": "edit_correct_all", "psnr": "edit_psnr", "ssim": "edit_ssim"}),
    # UnifiedMLLM (docs/unifiedmllm.md): answers that are task spans for executors, layout
    # prompts with boxes, multi-turn conversations (records with `turns`).
    Task("reason_edit", "und", "answer", f"{_U}:reason_edit_generic", title="Reasoning edit",
         headline={"task_accuracy": "reason_edit_task_acc", "box_acc50": "reason_edit_box_acc50",
                   "exec_correct": "reason_edit_exec_correct", "exec_psnr": "reason_edit_psnr",
                   "exec_ssim": "reason_edit_ssim"}, opt_in=True),
    Task("seg", "und", "answer", f"{_U}:seg_generic", title="Referring segmentation",
         headline={"task_accuracy": "seg_task_acc", "box_acc50": "seg_box_acc50",
                   "mask_iou": "seg_mask_iou"}, opt_in=True),
    Task("layout", "gen", "generate", f"{_S}:image_similarity", title="Layout generation",
         headline={"correct_all": "layout_correct_all", "position": "layout_position",
                   "psnr": "layout_psnr", "ssim": "layout_ssim"}, opt_in=True),
    Task("dialog", "und", "answer", f"{_U}:dialog_turns", title="Multi-turn dialogue",
         headline={"turn_accuracy": "dialog_turn_acc", "dialog_accuracy": "dialog_acc",
                   "task_turn_accuracy": "dialog_task_turn_acc"}, opt_in=True),
    # Free-form instruction following (LLaVA, `messages` data; `utamoe data import`): one
    # question and answer, or a conversation, with or without an image. Opt-in, so that
    # ShapesWorld runs and their tokenizers stay as they were.
    Task("instruct", "und", "answer", f"{_S}:free_form", title="Instruction following",
         headline={"token_f1": "instruct_token_f1", "rouge_l": "instruct_rouge_l",
                   "bleu4": "instruct_bleu4", "cider": "instruct_cider",
                   "exact": "instruct_exact"}, needs_image=False, opt_in=True),
):
    register_task(_task)
del _task
