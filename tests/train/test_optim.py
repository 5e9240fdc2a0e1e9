"""The trainer's optimisers (utamoe.train.optim): Muon + AdamW in one optimiser, against torch's."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from utamoe.config import ConfigError
from utamoe.model.io import load_model_dir
from utamoe.train.config import build_config
from utamoe.train.optim import MuonAdamW, lr_lambda, muon_names, orthogonalize, orthogonalize_all
from utamoe.train.trainer import Trainer

from .conftest import UTAMOE_STAGES, kill_then_resume, tiny_recipe

MUON = {"lr": 0.02, "weight_decay": 0.1}


def _params(seed: int, shapes) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]


def _grads(params, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


def test_muon_groups_step_exactly_like_torch_muon():
    shapes = [(6, 4), (4, 9), (5, 5)]
    ours, ref = _params(0, shapes), _params(0, shapes)
    opt = MuonAdamW([{"params": ours, "muon": True}], **MUON)
    torch_opt = torch.optim.Muon(ref, adjust_lr_fn="match_rms_adamw", **MUON)
    for step in range(3):
        _grads(ours, step)
        _grads(ref, step)
        opt.step()
        torch_opt.step()
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)


def test_stacked_matrices_step_like_the_per_matrix_reference():
    # same shapes (one tall, as its transpose), a shape met once and an expert bank: the
    # default (stacked) path against the per-matrix reference, values and momentum state
    shapes = [(8, 6), (6, 8), (6, 8), (5, 5), (3, 6, 4)]
    fast, ref = _params(0, shapes), _params(0, shapes)
    opts = [MuonAdamW([{"params": ps, "muon": True}], batch_matrices=b, **MUON)
            for ps, b in ((fast, True), (ref, False))]
    for step in range(3):
        _grads(fast, step)
        _grads(ref, step)
        for opt in opts:
            opt.step()
    for a, b in zip(fast, ref):
        # one bfloat16 rounding of the update at most (batched and 2-D matmuls may round apart)
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=2e-3)
        torch.testing.assert_close(opts[0].state[a]["momentum_buffer"],
                                   opts[1].state[b]["momentum_buffer"], rtol=0, atol=1e-2)
    g = torch.Generator().manual_seed(1)
    updates = [torch.randn(s, generator=g) for s in shapes]
    updates[1] *= 1000  # each stacked matrix is normalised on its own
    for got, u in zip(orthogonalize_all(updates), updates):
        assert got.shape == u.shape
        torch.testing.assert_close(got.float(), orthogonalize(u).float(), rtol=0, atol=1e-2)


def test_a_3d_weight_steps_like_one_muon_matrix_per_expert():
    bank = _params(0, [(3, 6, 4)])[0]
    experts = [nn.Parameter(bank.detach()[e].clone()) for e in range(3)]
    opt = MuonAdamW([{"params": [bank], "muon": True}], **MUON)
    ref = torch.optim.Muon(experts, adjust_lr_fn="match_rms_adamw", **MUON)
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        grad = torch.randn(bank.shape, generator=g)
        bank.grad = grad
        for e, p in enumerate(experts):
            p.grad = grad[e].clone()
        opt.step()
        ref.step()
    for e, p in enumerate(experts):
        # batched bf16 matmuls may round differently from 2-D ones; one bf16 ulp of the update
        torch.testing.assert_close(bank.detach()[e], p.detach(), rtol=0, atol=2e-3)
    # and each slice is orthogonalised on its own (not the whole bank as one matrix)
    x = torch.randn(2, 6, 4)
    x[1] *= 1000
    torch.testing.assert_close(orthogonalize(x)[0].float(), orthogonalize(x[0]).float(),
                               rtol=0, atol=1e-2)


def test_adamw_groups_step_exactly_like_torch_adamw_and_ignore_muon_state():
    shapes = [(6, 4), (7,)]
    ours, ref = _params(0, shapes), _params(0, shapes)
    extra = _params(1, [(5, 5)])
    kw = {"lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": 0.01}
    opt = MuonAdamW([{"params": ours}, {"params": extra, "muon": True}], **kw)
    torch_opt = torch.optim.AdamW(ref, **kw)
    for step in range(3):
        _grads(ours + extra, step)
        _grads(ref, step)
        opt.step()
        torch_opt.step()
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)


def test_state_dict_round_trip_continues_exactly():
    shapes = [(6, 4), (2, 5, 3), (7,)]

    def make(params):
        return MuonAdamW([{"params": params[:2], "muon": True}, {"params": params[2:]}],
                         lr=1e-2, weight_decay=0.01)

    straight = _params(0, shapes)
    opt = make(straight)
    for step in range(5):
        _grads(straight, step)
        opt.step()
    resumed = _params(0, shapes)
    first = make(resumed)
    for step in range(3):
        _grads(resumed, step)
        first.step()
    saved = first.state_dict()
    again = make(resumed)
    again.load_state_dict(saved)
    for step in range(3, 5):
        _grads(resumed, step)
        again.step()
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def test_muon_refuses_other_shapes_and_rules():
    with pytest.raises(ValueError, match="2-D or 3-D"):
        MuonAdamW([{"params": _params(0, [(4,)]), "muon": True}])
    with pytest.raises(ValueError, match="learning-rate rule"):
        MuonAdamW([{"params": _params(0, [(4, 4)]), "muon": True}], adjust_lr="nope")


def test_wsd_schedule_warms_up_holds_then_cools_down():
    f = lr_lambda(10, 100, 0.1, "wsd", decay_frac=0.2)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert all(f(s) == 1.0 for s in range(10, 80))
    assert f(80) == 1.0 and f(100) == pytest.approx(0.1)
    assert 0.1 < f(90) < 1.0 and f(95) < f(90)  # (1 - sqrt) cooldown: falls fastest at first
    assert 1 - f(85) > f(85) - f(90)
    cos = lr_lambda(10, 100, 0.1)
    assert cos(55) == pytest.approx(0.55)
    with pytest.raises(ValueError):
        lr_lambda(1, 10, 0.1, "step")


def _trainer(assets, out, stages=None, **train):
    trainer = Trainer(build_config(tiny_recipe(assets, out, stages, **train)), out, progress=False)
    trainer.setup()
    return trainer


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(tiny_assets, tmp_path):
    trainer = _trainer(tiny_assets, tmp_path / "r", optimizer="muon", muon_lr=0.02)
    model = trainer.model
    names = muon_names(model, [n for n, _ in model.named_parameters()])
    assert "lm.layers.0.self_attn.q_proj.weight" in names
    assert "lm.layers.1.mlp.down_proj.weight" in names
    assert not any("embed" in n or n.startswith("lm_head") or "vision_head" in n for n in names)
    assert not any(p.ndim == 1 for n, p in model.named_parameters() if n in names)
    opt, _ = trainer._optimizer(trainer.cfg.stages[0])
    muon = [g for g in opt.param_groups if g["muon"]]
    assert len(muon) == 1 and muon[0]["lr"] == pytest.approx(0.02)
    assert sum(len(g["params"]) for g in muon) == len(names)


def test_grid_position_tables_stay_on_adamw_under_muon():
    """`row_embed` / `col_embed` are plain 2-D parameters but embeddings by role: Muon's
    orthogonalised update would keep a table's rows equidistant (no order along an axis)."""
    from utamoe.vision.aligners import GridPosAligner

    model = nn.ModuleDict({"und_encoder": nn.ModuleDict({"aligner": GridPosAligner(8, 16, 2, grid=3)})})
    names = muon_names(model, [n for n, _ in model.named_parameters()])
    assert names == {"und_encoder.aligner.fc1.weight", "und_encoder.aligner.hidden_layers.0.weight"}


def test_muon_trains_the_utamoe_recipe_and_resumes_exactly(tiny_assets, tmp_path, monkeypatch):
    """Through split FFNs and the TA-MoE stage (3-D expert banks, LoRA), killed and resumed."""
    cfg = build_config(tiny_recipe(tiny_assets, tmp_path / "a", UTAMOE_STAGES, optimizer="muon",
                                   schedule="wsd"))
    Trainer(cfg, tmp_path / "a", progress=False).run()
    cfg_b = build_config(tiny_recipe(tiny_assets, tmp_path / "b", UTAMOE_STAGES, optimizer="muon",
                                     schedule="wsd"))
    kill_then_resume(cfg_b, tmp_path / "b", monkeypatch)

    def losses(run):
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["global_step"], r["loss"]) for r in recs if "loss" in r]

    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    a, _ = load_model_dir(tmp_path / "a" / "model")
    b, _ = load_model_dir(tmp_path / "b" / "model")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_stage_may_choose_its_own_optimiser(tiny_assets, tmp_path):
    stages = [{"name": "a", "steps": 1}, {"name": "b", "steps": 1, "optimizer": "adamw"}]
    trainer = _trainer(tiny_assets, tmp_path / "r", stages, optimizer="muon")
    first, _ = trainer._optimizer(trainer.cfg.stages[0])
    second, _ = trainer._optimizer(trainer.cfg.stages[1])
    assert isinstance(first, MuonAdamW) and type(second) is torch.optim.AdamW


def test_optimiser_config_is_validated(tiny_assets, tmp_path):
    with pytest.raises(ConfigError, match="optimizer"):
        build_config(tiny_recipe(tiny_assets, tmp_path, None, optimizer="sgd"))
    with pytest.raises(ConfigError, match="decay_frac"):
        build_config(tiny_recipe(tiny_assets, tmp_path, None, decay_frac=0.0))
