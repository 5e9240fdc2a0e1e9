"""The executor registry: executors from a test module, from config strings, from a (fake)
entry point, the registered defaults; clear errors for every way a spec can be wrong."""

from __future__ import annotations

import importlib.metadata

import pytest

from utamoe.tasks_exec import (
    ENTRY_POINT_GROUP,
    ExecContext,
    ExecRequest,
    ExecResult,
    ExecutorError,
    SpanRouter,
    available_executors,
    executors_from_config,
    register_executor,
    registered_tags,
    unregister_executor,
)

HERE = __name__  # "tests.tasks_exec.test_executors": importable by its dotted name


class Echo:
    """Answers with its span's text (and counts its calls)."""

    name, tag = "echo", "ocr"

    def __init__(self, suffix: str = ""):
        self.suffix, self.calls = suffix, []

    def __call__(self, request: ExecRequest) -> ExecResult:
        self.calls.append(request)
        return ExecResult(text=request.text + self.suffix)


def make_echo(context: ExecContext, suffix: str = "") -> Echo:
    return Echo(suffix)


def make_nothing(context: ExecContext):
    return 3


def test_an_executor_from_a_test_module_is_found_and_called():
    ex = executors_from_config({"ocr": f"{HERE}:make_echo"}, defaults=False)
    assert list(ex) == ["ocr"] and isinstance(ex["ocr"], Echo)
    _, (out,) = SpanRouter(ex).run("<ocr>read the sign</ocr>")
    assert out.ok and out.result.text == "read the sign" and out.executor == "echo"
    assert ex["ocr"].calls[0].text == "read the sign"


def test_options_reach_the_factory():
    ex = executors_from_config({"ocr": {"use": f"{HERE}:make_echo", "suffix": "!"}}, defaults=False)
    assert ex["ocr"](ExecRequest("ocr", "hi")).text == "hi!"


def test_a_registered_default_is_used_and_a_config_can_drop_it():
    register_executor("ocr", make_echo)
    try:
        assert "ocr" in registered_tags()
        with pytest.raises(ExecutorError, match="already has a default"):
            register_executor("ocr", make_echo)
        cfg = {t: None for t in registered_tags() if t != "ocr"}  # no predictor here
        assert list(executors_from_config(cfg)) == ["ocr"]
    finally:
        unregister_executor("ocr")
    assert "ocr" not in registered_tags()


def _fake_entry_points(monkeypatch, *eps):
    real = importlib.metadata.entry_points

    def entry_points(**kw):
        if kw.get("group") == ENTRY_POINT_GROUP:
            return importlib.metadata.EntryPoints(eps)
        return real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_a_plugin_from_an_entry_point_is_found_by_name(monkeypatch):
    ep = importlib.metadata.EntryPoint("echo_plugin", f"{HERE}:make_echo", ENTRY_POINT_GROUP)
    _fake_entry_points(monkeypatch, ep)
    assert "echo_plugin" in available_executors()
    ex = executors_from_config({"ocr": "echo_plugin"}, defaults=False)
    _, (out,) = SpanRouter(ex).run("<ocr>plugged in</ocr>")
    assert out.result.text == "plugged in"


def test_a_broken_plugin_names_itself(monkeypatch):
    ep = importlib.metadata.EntryPoint("broken", "no_such_pkg.mod:make", ENTRY_POINT_GROUP)
    _fake_entry_points(monkeypatch, ep)
    with pytest.raises(ExecutorError, match=r"executors\.ocr: plugin 'broken' .*no_such_pkg"):
        executors_from_config({"ocr": "broken"}, defaults=False)


@pytest.mark.parametrize("spec, message", [
    ("box_sge", r"executors\.seg: no executor named 'box_sge'; did you mean 'box_seg'"),
    ("no_such_pkg.mod:make", r"executors\.seg: cannot import module 'no_such_pkg.mod'"),
    ("json:no_such_attr", r"module 'json' has no 'no_such_attr'"),
    ("json:__doc__", "not a factory callable"),
    (":make", "is not 'package.module:callable'"),
    (f"{HERE}:make_nothing", "which is not an executor"),
    ({"use": f"{HERE}:make_echo", "colour": "red"}, r"cannot be built with options \['colour'\]"),
    ({"suffix": "!"}, "needs 'use'"),
    (42, "is not an executor"),
    ({"use": "box_seg", "tolerance": 300}, r"tolerance 300 must be in \[0, 255\)"),
])
def test_bad_specs_name_the_key_and_the_fix(spec, message):
    with pytest.raises(ExecutorError, match=message):
        executors_from_config({"seg": spec}, defaults=False)


def test_bad_task_keys_and_defaults_without_a_predictor():
    with pytest.raises(ExecutorError, match=r"executors\.bad-key: .*cannot be a span tag"):
        executors_from_config({"bad-key": "box_seg"}, defaults=False)
    with pytest.raises(ExecutorError, match=r"executors\.t2i \(the default\).*no predictor"):
        executors_from_config({})


def test_the_defaults_build_on_a_predictor(predictor):
    ex = executors_from_config({"layout": None}, ExecContext(predictor=predictor))
    assert {t: e.name for t, e in ex.items()} == {"t2i": "model_t2i", "edit": "box_edit",
                                                  "seg": "box_seg"}
