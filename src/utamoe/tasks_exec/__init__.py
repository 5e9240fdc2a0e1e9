"""UnifiedMLLM's span router and executors (docs/executors.md).

A model answers with text and task spans (`<edit>make it blue<box>[0.1,0.2,0.5,0.6]</box></edit>`,
parsed by utamoe.text.spans); `executors` holds the executor contract and the registry (config,
built-ins, entry-point plugins), `router` runs each span through its executor and reports
every failure as a structured error. Built-in executors: `builtin` (the unified model's t2i /
layout / edit through its predictor, box segmentation), `grounded` (the box-grounded editor: the
model's edit with a per-cell constraint), `diffusers_exec` (diffusers pipelines, an optional
extra); `regions` says which cells and pixels a box covers.

Importing this package imports no model code: the built-in executors load on use.
"""

from utamoe.tasks_exec.executors import (
    BUILTIN_EXECUTORS,
    ENTRY_POINT_GROUP,
    ExecContext,
    ExecInputError,
    ExecRequest,
    ExecResult,
    Executor,
    ExecutorError,
    available_executors,
    build_executor,
    executors_from_config,
    plugin_entry_points,
    register_executor,
    registered_tags,
    resolve_factory,
    unregister_executor,
)
from utamoe.tasks_exec.router import SpanOutcome, SpanRouter

__all__ = [
    "BUILTIN_EXECUTORS", "ENTRY_POINT_GROUP",
    "ExecContext", "ExecInputError", "ExecRequest", "ExecResult",
    "Executor", "ExecutorError", "SpanOutcome", "SpanRouter",
    "available_executors", "build_executor", "executors_from_config",
    "plugin_entry_points", "register_executor",
    "registered_tags", "resolve_factory", "unregister_executor",
]
