"""The trainer on tiny recipes: it learns, stages do their surgery, runs resume exactly, guards hold."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from utamoe.model.io import load_model_dir
from utamoe.moe import TaskAwareMoE, moe_layers
from utamoe.train.checkpoint import latest_checkpoint, read_state, save_checkpoint
from utamoe.train.config import build_config
from utamoe.train.trainer import Trainer, TrainingStopped

from .conftest import UTAMOE_STAGES, Killed, kill_then_resume, tiny_recipe


def losses(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["global_step"], r["loss"]) for r in recs if "loss" in r]


def test_tiny_recipe_trains_and_loss_falls(tiny_assets, tmp_path):
    cfg = build_config(tiny_recipe(tiny_assets, tmp_path / "run",
                                   [{"name": "joint", "steps": 40, "mixture": {"vqa": 1, "t2i": 1}}],
                                   ckpt_every=100, lr=5e-3))
    model_dir = Trainer(cfg, tmp_path / "run", progress=False).run()
    curve = [loss for _, loss in losses(tmp_path / "run")]
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert (tmp_path / "run" / "loss.png").is_file()
    model, tok = load_model_dir(model_dir)
    assert tok is not None and model.image_tokenizer is not None


def test_utamoe_recipe_runs_its_surgery_and_saves_a_ta_moe_model(tiny_assets, tmp_path):
    cfg = build_config(tiny_recipe(tiny_assets, tmp_path / "run", UTAMOE_STAGES))
    model_dir = Trainer(cfg, tmp_path / "run", progress=False).run()
    model, _ = load_model_dir(model_dir)
    layers = moe_layers(model.lm)
    assert len(layers) == 2 and all(isinstance(m, TaskAwareMoE) for m in layers)
    assert layers[0].config.num_experts == 4 and layers[0].config.group_routing == "learned"
    assert not any("lora_" in n for n, _ in model.named_parameters())  # merged at stage end
    stages = [json.loads(x)["stage"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert stages == ["pretrain"] * 3 + ["stage1"] * 3 + ["stage2"] * 3


def test_kill_and_resume_equals_an_uninterrupted_run(tiny_assets, tmp_path, monkeypatch):
    cfg = build_config(tiny_recipe(tiny_assets, tmp_path / "a", UTAMOE_STAGES))
    Trainer(cfg, tmp_path / "a", progress=False).run()
    kill_then_resume(cfg, tmp_path / "b", monkeypatch)  # killed in step 6, checkpoint at 4

    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    a, _ = load_model_dir(tmp_path / "a" / "model")
    b, _ = load_model_dir(tmp_path / "b" / "model")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_interrupted_checkpoint_write_keeps_the_previous_one(tiny_assets, tmp_path):
    cfg = build_config(tiny_recipe(tiny_assets, tmp_path / "run"))
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.run()
    good = latest_checkpoint(tmp_path / "run" / "checkpoints")

    def half_written(path, **kwargs):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "model.safetensors"), "wb") as f:
            f.write(b"partial")
        raise Killed

    trainer.accelerator.save_state = half_written
    with pytest.raises(Killed):
        save_checkpoint(trainer.accelerator, tmp_path / "run" / "checkpoints", "step-99", {"trainer": {}})
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") == good
    Trainer(cfg, tmp_path / "run", progress=False).run(resume=True)  # resumes from the good one


def test_sigterm_saves_a_checkpoint_and_stops(tiny_assets, tmp_path, monkeypatch):
    cfg = build_config(tiny_recipe(tiny_assets, tmp_path / "run", [{"name": "s", "steps": 8}],
                                   ckpt_every=100))
    original = Trainer._step
    calls = {"n": 0}

    def step_then_signal(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args)

    monkeypatch.setattr(Trainer, "_step", step_then_signal)
    with pytest.raises(TrainingStopped, match="--resume"):
        Trainer(cfg, tmp_path / "run", progress=False).run()
    assert read_state(latest_checkpoint(tmp_path / "run" / "checkpoints"))["trainer"]["global_step"] == 3


def test_non_finite_losses_are_skipped_then_stop_the_run(tiny_assets, tmp_path, monkeypatch):
    from utamoe.model.unified import UnifiedModel

    cfg = build_config(tiny_recipe(tiny_assets, tmp_path / "run", [{"name": "s", "steps": 12}],
                                   max_bad_steps=3, ckpt_every=4))
    original = UnifiedModel.forward
    calls = {"n": 0}

    def poisoned(self, batch, **modes):
        calls["n"] += 1
        out = original(self, batch, **modes)
        if calls["n"] == 3 or calls["n"] >= 6:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(UnifiedModel, "forward", poisoned)
    with pytest.raises(TrainingStopped, match="non-finite"):
        Trainer(cfg, tmp_path / "run", progress=False).run()
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in log if r.get("skipped")) == 4  # step 3, then 6, 7, 8 -> stop
    assert read_state(latest_checkpoint(tmp_path / "run" / "checkpoints"))["trainer"]["global_step"] == 4


def test_two_process_training_with_gloo_agrees_on_weights(tiny_assets, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    raw = tiny_recipe(tiny_assets, tmp_path / "run", UTAMOE_STAGES)
    (tmp_path / "cfg.json").write_text(json.dumps(raw))
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "29531", str(worker), str(tmp_path / "cfg.json"), str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    digests = sorted((tmp_path / "run").glob("digest-*-of-2.txt"))
    assert len(digests) == 2
    assert digests[0].read_text() == digests[1].read_text()
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_cli_train_then_resume_and_refuse_to_overwrite(tiny_assets, tmp_path, capsys):
    import yaml

    from utamoe.cli import main

    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(yaml.safe_dump(tiny_recipe(tiny_assets, tmp_path / "run")))
    assert main(["train", "--config", str(cfg), "--set", "stages.0.steps=2", "--set", "train.lr=3e-4"]) == 0
    assert "model written to" in capsys.readouterr().out
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "steps: 2" in saved and "lr: 0.0003" in saved
    assert main(["train", "--config", str(cfg)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert main(["train", "--config", str(cfg), "--set", "train.bogus=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    from utamoe.demo import run_demo

    metrics = run_demo(tmp_path / "demo", quick=True)
    for key in ("vqa_accuracy", "pope_f1", "grounding_acc50", "t2i_correct_all", "edit_psnr", "seconds"):
        assert key in metrics
    for name in ("metrics.json", "report.md", "samples.png", "model/utamoe.json", "data/test.jsonl"):
        assert (tmp_path / "demo" / name).is_file(), name
    assert "VQA accuracy by question type" in (tmp_path / "demo" / "report.md").read_text()
