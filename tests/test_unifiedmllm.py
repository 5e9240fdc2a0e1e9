"""UnifiedMLLM end to end on tiny sizes: the shipped three-stage recipe (perception, task
adaptation, LoRA-MoE tuning) trains on ShapesWorld's new tasks, its task-token accuracy beats
an untrained model's, `utamoe eval` scores the new tasks, and a scripted `utamoe chat` runs
the executors and names what they wrote."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from utamoe.cli import main
from utamoe.data.formats import load_split
from utamoe.shapes import ShapesWorldConfig, write_dataset
from utamoe.shapes.world import ALL_TASKS
from utamoe.train.config import build_config, read_yaml, recipe_path
from utamoe.train.trainer import Trainer
from utamoe.vision.tokenizer import TokenizerConfig, VQTokenizer

from .train.conftest import tiny_recipe

STEPS = (20, 360, 40)
SPAN_TASKS = ("reason_edit", "seg")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("unifiedmllm")
    write_dataset(root / "data", ShapesWorldConfig(seed=0, tasks=ALL_TASKS, sizes={
        "train": 30, "val": 0, "test": 6, "heldout": 0}))
    torch.manual_seed(0)
    VQTokenizer(TokenizerConfig(base_channels=32, channel_multiplier=(1, 1, 2, 2),
                                latent_channels=32, codebook_size=32)).save_pretrained(root / "vq")
    stages = read_yaml(recipe_path("unifiedmllm"))["stages"]
    for stage, steps in zip(stages, STEPS):
        stage["steps"] = steps
        stage.pop("lr", None)
        if "moe" in stage:
            stage["moe"].update(num_experts=2, top_k=1, lora_rank=4, lora_alpha=8)
    rec = tiny_recipe(root, root / "run", stages, ckpt_every=1000, log_every=50, batch_size=8)
    # 512 positions: a dialog of the ShapesWorld data is 266 tokens (issue 28, item 9)
    rec["model"]["backbone"]["config"].update(hidden_size=64, intermediate_size=128,
                                              max_position_embeddings=512)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(build_config(rec), root / "run", progress=False).run()
    finally:
        torch.set_num_threads(threads)
    return root


def _span_accuracy(predictor, samples) -> float:
    from utamoe.eval.run import EvalSampling, evaluate_model

    result = evaluate_model(predictor, samples, EvalSampling(batch_size=8, max_new_tokens=64),
                            progress=False)
    return float(np.mean([result.per_task[t]["task_accuracy"] for t in SPAN_TASKS]))


def test_the_three_stage_recipe_learns_task_tokens(run):
    from utamoe.infer.predictor import Predictor
    from utamoe.model.unified import UnifiedModel

    recs = [json.loads(x) for x in (run / "run" / "metrics.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in recs if "loss" in r]
    assert stages[0] == "perception" and stages[-1] == "lora_moe" and "adapt" in stages
    assert any("expert_load_g0" in r for r in recs if r.get("stage") == "lora_moe")
    trained = Predictor.load(run / "run" / "model")
    assert trained.model.config.moe.expert_type == "lora"
    assert "<box>" in trained.tokenizer.get_vocab()
    samples = [s for s in load_split(run / "data" / "test.jsonl")[0] if s.task in SPAN_TASKS]
    torch.manual_seed(1)
    fresh = Predictor(UnifiedModel.build(trained.model.config, trained.model.image_tokenizer),
                      trained.tokenizer)
    chance, got = _span_accuracy(fresh, samples), _span_accuracy(trained, samples)
    assert chance == 0.0 and got >= 0.5, (chance, got)


def test_eval_scores_the_new_tasks(run, capsys):
    out = run / "eval"
    assert main(["eval", "--model", str(run / "run" / "model"), "--data", str(run / "data"),
                 "--out", str(out), "--max-per-task", "3", "--max-new-tokens", "64",
                 "--batch-size", "8"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    flat = json.dumps(metrics)
    for key in ("reason_edit_task_acc", "reason_edit_box_acc50", "reason_edit_exec_correct",
                "reason_edit_psnr", "reason_edit_ssim", "seg_task_acc", "seg_mask_iou",
                "layout_correct_all", "dialog_turn_acc", "dialog_acc"):
        assert f'"{key}"' in flat, key
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    dialog = next(r for r in rows if r["task"] == "dialog")
    assert isinstance(dialog["prediction"], list) and dialog["prediction"]


def test_a_scripted_chat_runs_the_executors(run, monkeypatch, capsys):
    image = run / "data" / "images" / "test" / "test-seg-000000_input.png"
    script = "what color is the circle?\n/image nowhere.png\nsegment the shape left of it\n/quit\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    out = run / "chat"
    assert main(["chat", "--model", str(run / "run" / "model"), "--image", str(image),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("you> ") == 2 and text.count("model> ") == 2, text
    assert "error: image nowhere.png does not exist" in text


def test_a_chat_session_writes_what_executors_produce(tmp_path):
    from utamoe.chat import ChatSession, run_chat
    from utamoe.tasks_exec import ExecContext, SpanRouter, executors_from_config

    answers = iter(["it is red", "<seg>the red circle<box>[0.00,0.00,0.50,0.50]</box></seg>",
                    "<seg>the circle<box>[0.0,0.0,2.0,0.5]</box></seg>"])
    router = SpanRouter(executors_from_config({"t2i": None, "edit": None, "layout": None},
                                              ExecContext()))
    session = ChatSession(lambda turns: next(answers), router, tmp_path / "out")
    lines: list[str] = []
    image = np.full((48, 48, 3), 20, np.uint8)
    image[4:20, 4:20] = (230, 40, 40)
    session.attach(image)
    assert run_chat(session, ["hi", "", "segment it", "again"], lines.append, lambda p: image) == 3
    mask_line = next(x for x in lines if "box_seg" in x)
    path = mask_line.split("mask ")[1].split(";")[0]
    from PIL import Image

    mask = np.asarray(Image.open(path))
    assert mask.shape == (48, 48) and (mask[4:20, 4:20] == 255).all() and mask.sum() == 255 * 256
    assert any("error box_out_of_range" in x for x in lines)
    assert [t.role for t in session.turns] == ["user", "assistant"] * 3
