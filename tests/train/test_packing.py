"""`train.pack` in the trainer: the tiny UTAMoE recipe (dense, oracle-routed task FFNs, TA-MoE +
LoRA) with gradient accumulation trains on packed rows to the same losses as on padded ones,
logs its packing efficiency, and resumes exactly after a kill."""

from __future__ import annotations

import json

import pytest
import torch

from utamoe.config import ConfigError
from utamoe.model.io import load_model_dir
from utamoe.train.config import build_config
from utamoe.train.trainer import Trainer

from .conftest import UTAMOE_STAGES, kill_then_resume, tiny_recipe

PACK = dict(grad_accum=2, pack=True, pack_tokens=160)


def _records(run_dir) -> list[dict]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if "loss" in r]


def _train(assets, out, **train):
    cfg = build_config(tiny_recipe(assets, out, UTAMOE_STAGES, **train))
    Trainer(cfg, out, progress=False).run()
    return cfg


@pytest.fixture(scope="module")
def packed_run(tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed") / "run"
    return _train(tiny_assets, out, **PACK), out


def test_packed_training_follows_the_padded_losses_and_logs_its_efficiency(
        tiny_assets, tmp_path, packed_run):
    _, packed_dir = packed_run
    _train(tiny_assets, tmp_path / "padded", grad_accum=2)
    padded, packed = _records(tmp_path / "padded"), _records(packed_dir)
    assert [r["global_step"] for r in packed] == [r["global_step"] for r in padded] == list(range(1, 10))
    for a, b in zip(padded, packed):
        losses = [k for k in a if k.startswith(("loss", "task_loss_"))]
        assert losses == [k for k in b if k.startswith(("loss", "task_loss_"))]
        for key in losses:
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a["global_step"], key)
        assert "pack_efficiency" not in a
        assert 0 < b["padded_efficiency"] < b["pack_efficiency"] <= 1
        assert b["tokens_per_s"] > 0


def test_a_killed_packed_run_resumes_exactly(tiny_assets, tmp_path, monkeypatch, packed_run):
    cfg, packed_dir = packed_run
    kill_then_resume(cfg, tmp_path / "b", monkeypatch)  # killed in step 6, checkpoint at 4
    assert _records(tmp_path / "b") == [{**r, "tokens_per_s": r2["tokens_per_s"]} for r, r2
                                        in zip(_records(packed_dir), _records(tmp_path / "b"))]
    a, _ = load_model_dir(packed_dir / "model")
    b, _ = load_model_dir(tmp_path / "b" / "model")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pack_config_errors_say_what_to_do(tiny_assets, tmp_path):
    with pytest.raises(ConfigError, match="choose one"):
        build_config(tiny_recipe(tiny_assets, tmp_path, pack=True, split_groups=True))
    with pytest.raises(ConfigError, match="pack_tokens must be >= 0"):
        build_config(tiny_recipe(tiny_assets, tmp_path, pack=True, pack_tokens=-1))
