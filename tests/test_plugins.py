"""Plug-ins (utamoe.plugins): a task, an expert bank and a vision-encoder kind that a package
outside utamoe registers through entry points are found by a fresh `utamoe` process, which
builds and saves a model with them, and by another fresh process that loads that model.

The package is a throwaway distribution on sys.path: a module and a dist-info directory with
its entry_points.txt, as pip would install it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from utamoe import plugins

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = '''
from utamoe.moe.experts import FFNExperts
from utamoe.tasks import Task
from utamoe.vision.encoders import HFEncoder

OCR = Task("ocr_plug", "und", "answer", "utamoe.eval.scorers:answer_match",
           headline={"accuracy": "ocr_plug_accuracy"}, opt_in=True)


class PlugFFN(FFNExperts):
    """The built-in FFN experts under another name: what matters is that it is found."""


class PlugTower(HFEncoder):
    """A Hugging Face tower as a kind of its own."""
'''

ENTRY_POINTS = '''
[utamoe.tasks]
ocr_plug = utamoe_plug_demo:OCR

[utamoe.expert_banks]
plugffn = utamoe_plug_demo:PlugFFN

[utamoe.vision_encoders]
plugtower = utamoe_plug_demo:PlugTower
'''

BUILD = '''
import json, sys
from utamoe.model.io import save_model_dir
from utamoe.moe import MoEConfig
from utamoe.tasks import get_task, task_names
from utamoe.vision.mixture import MoVEConfig, VisionExpertConfig
from tests.model.helpers import SIGLIP, tiny_model

assert get_task("ocr_plug").group == "und" and "ocr_plug" in task_names()
move = MoVEConfig(encoders=[VisionExpertConfig("vit", kind="plugtower", config=SIGLIP)],
                  query_grid=3, aggregate="add", transform="avgpool")
model, tok, _ = tiny_model(MoEConfig(expert_type="plugffn"), move=move)
save_model_dir(model, sys.argv[1], tok)
print(json.dumps({"bank": type(model.lm.layers[0].mlp.experts).__name__}))
'''

LOAD = '''
import json, sys
from utamoe.model.io import load_model_dir
model, tok = load_model_dir(sys.argv[1])
print(json.dumps({"bank": type(model.lm.layers[0].mlp.experts).__name__,
                  "kind": model.und_encoder.experts[0].kind}))
'''


def _install(where: Path) -> None:
    where.mkdir(parents=True)
    (where / "utamoe_plug_demo.py").write_text(PLUGIN)
    info = where / "utamoe_plug_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: utamoe-plug-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)


def _fresh(code: str, *args: str, path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(ROOT / "src"), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_entry_point_plugins_are_found_by_a_fresh_process_and_a_saved_model(tmp_path):
    _install(tmp_path / "site")
    built = _fresh(BUILD, str(tmp_path / "model"), path=tmp_path / "site")
    assert built == {"bank": "PlugFFN"}
    loaded = _fresh(LOAD, str(tmp_path / "model"), path=tmp_path / "site")
    assert loaded["bank"] == "PlugFFN" and loaded["kind"] == "plugtower"


def test_a_broken_plugin_names_itself(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    info = site / "broken_plug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[utamoe.test_group]\nbad = no_such_module:THING\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(plugins.PluginError, match="'bad'.*no_such_module:THING.*utamoe.test_group"):
        plugins.discover("utamoe.test_group", lambda name, obj: None)
    plugins.rediscover("utamoe.test_group")
