"""No lost or mixed-up run: resume keeps the run's config, --force starts clean, one process
per run directory, damaged checkpoints fall back to the previous good one, and a run killed
before its first checkpoint says how to start again."""

from __future__ import annotations

import json

import pytest
import yaml

from utamoe.cli import main
from utamoe.config import ConfigError
from utamoe.train.checkpoint import complete_checkpoints, read_state
from utamoe.train.config import build_config
from utamoe.train.run_dir import RunLock, RunLocked
from utamoe.train.trainer import Trainer

from .conftest import tiny_recipe


def _run(assets, out, steps=6, **train):
    cfg = build_config(tiny_recipe(assets, out, [{"name": "s", "steps": steps}], ckpt_every=2, **train))
    return cfg, Trainer(cfg, out, progress=False)


def _steps(run):
    return [json.loads(x)["global_step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_refuses_overrides_that_change_the_run_and_keeps_its_config(tiny_assets, tmp_path, capsys):
    run = tmp_path / "run"
    _run(tiny_assets, run)[1].run()
    before = (run / "config.yaml").read_text()
    assert main(["train", "--resume", str(run), "--set", "model.backbone.config.hidden_size=48"]) == 2
    assert "would change what is resumed" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--set", "run.seed=5"]) == 2
    assert (run / "config.yaml").read_text() == before
    assert main(["train", "--resume", str(run), "--set", "train.log_every=3"]) == 0
    assert (run / "config.yaml").read_text() == before


def test_force_starts_clean(tiny_assets, tmp_path):
    run = tmp_path / "run"
    raw = tiny_recipe(tiny_assets, run, [{"name": "s", "steps": 6}], ckpt_every=2)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(tmp_path / "a.yaml")]) == 0
    raw["tokenizers"]["text_vocab_size"] = 290
    raw["stages"] = [{"name": "s", "steps": 3}]
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(tmp_path / "b.yaml")]) == 2  # holds a run
    assert main(["train", "--config", str(tmp_path / "b.yaml"), "--force"]) == 0
    assert _steps(run) == [1, 2, 3]  # not appended to the old log
    assert max(int(p.name.split("-")[1]) for p in complete_checkpoints(run / "checkpoints")) == 3
    vocab = json.loads((run / "text_tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(vocab) <= 290 and yaml.safe_load((run / "config.yaml").read_text())["stages"][0]["steps"] == 3


def test_a_second_process_is_refused_naming_the_first(tiny_assets, tmp_path):
    run = tmp_path / "run"
    with RunLock(run), pytest.raises(RunLocked, match=r"in use by pid \d+"):
        _run(tiny_assets, run)[1].run()
    _run(tiny_assets, run)[1].run()  # released: runs


@pytest.mark.parametrize("damage", ["truncated_weights", "garbage_state", "impossible_stage"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tiny_assets, tmp_path, capsys, damage):
    run = tmp_path / "run"
    _run(tiny_assets, run, steps=4)[1].run()
    latest, previous = complete_checkpoints(run / "checkpoints")[:2]
    assert read_state(previous)["trainer"]["global_step"] == 2
    if damage == "truncated_weights":
        weights = next(p for p in latest.iterdir() if p.name.startswith(("model", "pytorch_model")))
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "garbage_state":
        (latest / "trainer_state.json").write_text("{garbage")
    else:
        (latest / "trainer_state.json").write_text(json.dumps(
            {"trainer": {"stage": 7, "step": 0, "global_step": 4, "bad_steps": 0}}))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"stage": "s", "glo')  # a torn last line
    cfg, trainer = _run(tiny_assets, run, steps=4)
    trainer.run(resume=True)
    assert "falling back to step-2" in capsys.readouterr().out
    assert _steps(run) == [1, 2, 3, 4]


def test_killed_before_the_first_checkpoint_says_to_use_force(tiny_assets, tmp_path, capsys):
    run = tmp_path / "run"
    raw = tiny_recipe(tiny_assets, run, [{"name": "s", "steps": 2}], ckpt_every=100)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(raw))
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    (run / "checkpoints" / ".tmp-step-2").mkdir(parents=True)  # a kill during the first save
    assert main(["train", "--resume", str(run)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "a.yaml")]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "a.yaml"), "--force"]) == 0
    with pytest.raises(ConfigError):
        raise RunLocked("x")  # RunLocked is a ConfigError: the CLI prints it without a traceback
