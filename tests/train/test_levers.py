"""Issue-12 levers: prompt loss, q/k init, attention lr, the fresh-sample stream, grid positions."""

from __future__ import annotations

import json

import pytest
import torch

from utamoe.config import ConfigError
from utamoe.data.sequences import IGNORE
from utamoe.model.config import UnifiedConfig
from utamoe.model.io import load_model_dir
from utamoe.train.config import build_config
from utamoe.train.levers import (
    add_prompt_loss,
    attention_projections,
    qk_norms,
    scale_attention_init,
)
from utamoe.train.trainer import Trainer
from utamoe.vision.aligners import GridPosAligner, sincos_table

from .conftest import tiny_recipe


def _losses(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["global_step"], r["loss"]) for r in recs if "loss" in r]


def _trainer(assets, out, stages, **train):
    cfg = build_config(tiny_recipe(assets, out, stages, **train))
    trainer = Trainer(cfg, out, progress=False)
    trainer.setup()
    return trainer


def test_prompt_loss_labels_the_prompt_words_of_chosen_und_tasks_only(tiny_assets, tmp_path):
    trainer = _trainer(tiny_assets, tmp_path / "r", [{"name": "s", "steps": 1,
                                                      "mixture": {"pope": 1, "t2i": 1}}])
    data, sp = trainer.data, trainer.data.encoder.special
    plain = data.batch(0, 0, 8, {"pope": 1, "t2i": 1}, 0.0)
    data.prompt_loss_tasks = ("pope",)
    dense = data.batch(0, 0, 8, {"pope": 1, "t2i": 1}, 0.0)
    assert torch.equal(plain.input_ids, dense.input_ids)
    for row, task in enumerate(dense.tasks):
        ids = dense.input_ids[row].tolist()
        extra = ((dense.text_labels[row] != IGNORE) & (plain.text_labels[row] == IGNORE)).nonzero()[:, 0]
        if task != "pope":
            assert extra.numel() == 0
            continue
        start, stop = ids.index(sp.image_end) + 1, ids.index(sp.sep)
        # position t predicts token t + 1: the prompt words and <sep> are now targets
        assert extra.tolist() == list(range(start - 1, stop))
        assert dense.text_labels[row, stop - 1] == sp.sep


def test_add_prompt_loss_skips_other_tasks_and_gen_samples():
    from utamoe.data.sequences import TokenSequence

    seq = TokenSequence("t2i")
    seq.text([1, 2, 3])
    assert add_prompt_loss([seq], 2, 3, ("t2i",))[0].text_loss == [False] * 3


def test_scale_attention_init_redraws_q_and_k_only(tiny_assets, tmp_path):
    trainer = _trainer(tiny_assets, tmp_path / "r", None)
    lm = trainer.model.lm
    before = {n: p.clone() for n, p in lm.named_parameters()}
    n = scale_attention_init(lm, 0.5, torch.Generator().manual_seed(0))
    assert n == 2 * len(lm.layers)
    for name, p in lm.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (".q_proj." in name or ".k_proj." in name), name
    q = attention_projections(lm)[0][1].weight
    assert 0.4 < float(q.detach().std()) < 0.6


def test_qk_init_and_attention_lr_are_applied_by_the_trainer(tiny_assets, tmp_path):
    trainer = _trainer(tiny_assets, tmp_path / "r", None, qk_init_std=0.3, attn_lr_mult=4.0)
    q = attention_projections(trainer.model.lm)[0][1].weight
    assert 0.2 < float(q.detach().std()) < 0.4
    opt, _ = trainer._optimizer(trainer.cfg.stages[0])
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs == pytest.approx([3e-3, 12e-3])
    fast = [g for g in opt.param_groups if g["lr"] == pytest.approx(12e-3)][0]
    assert len(fast["params"]) == 2 * len(trainer.model.lm.layers)


def test_qk_norm_gain_sharpens_attention_logits_of_a_qk_norm_backbone(tiny_assets, tmp_path):
    recipe = tiny_recipe(tiny_assets, tmp_path / "r", None, qk_norm_gain=4.0)
    recipe["model"]["backbone"]["config"].update(model_type="qwen3", head_dim=8)
    trainer = Trainer(build_config(recipe), tmp_path / "r", progress=False)
    trainer.setup()
    norms = qk_norms(trainer.model.lm)
    assert len(norms) == 2 * len(trainer.model.lm.layers)
    assert all(torch.equal(m.weight, torch.full_like(m.weight, 2.0)) for m in norms)
    # the norms scale q and k: the logits of any input are gain x those at weight 1
    attn = trainer.model.lm.layers[0].self_attn
    x = torch.randn(1, 5, 8)
    scaled = attn.q_norm(x) @ attn.k_norm(x).mT
    for m in norms:
        m.weight.data.fill_(1.0)
    torch.testing.assert_close(scaled, 4.0 * (attn.q_norm(x) @ attn.k_norm(x).mT))
    with pytest.raises(ConfigError, match="query/key norms"):
        _trainer(tiny_assets, tmp_path / "llama", None, qk_norm_gain=4.0)


def test_lever_config_is_validated(tiny_assets, tmp_path):
    with pytest.raises(ConfigError, match="prompt_loss_tasks"):
        build_config(tiny_recipe(tiny_assets, tmp_path, None, prompt_loss_tasks=["t2i"]))
    with pytest.raises(ConfigError, match="attn_lr_mult"):
        build_config(tiny_recipe(tiny_assets, tmp_path, None, attn_lr_mult=0.0))


def _stream_trainer(assets, out):
    recipe = tiny_recipe(assets, out, [{"name": "s", "steps": 4, "mixture": {"pope": 1, "t2i": 1, "edit": 1}}])
    recipe["data"]["stream"] = True
    cfg = build_config(recipe)
    trainer = Trainer(cfg, out, progress=False)
    trainer.setup()
    return trainer


def test_stream_batches_are_fresh_and_a_pure_function_of_their_position(tiny_assets, tmp_path):
    a = _stream_trainer(tiny_assets, tmp_path / "a").data
    b = _stream_trainer(tiny_assets, tmp_path / "b").data
    mix = {"pope": 1, "t2i": 1, "edit": 1}
    # same position -> same batch, whatever was drawn before (b draws another batch first)
    b.batch(0, 7, 8, mix, 0.1)
    x, y = a.batch(0, 3, 8, mix, 0.1), b.batch(0, 3, 8, mix, 0.1)
    for field in ("input_ids", "code_ids", "text_labels", "code_labels", "pixel_values"):
        assert torch.equal(getattr(x, field), getattr(y, field)), field
    # other positions draw other samples; none is one of the stored ones
    stored = {s.id for samples in a.by_task.values() for s in samples}
    ids = set()
    for step in range(5):
        rng_ids = _stream_ids(a, step, 8, mix)
        assert not rng_ids & stored
        ids |= rng_ids
    assert len(ids) == 40
    assert (x.code_ids >= 0).any()  # generation targets were encoded on the fly


def _stream_ids(data, step, batch_size, mix):
    import numpy as np

    live = data.tasks_available(mix)
    names = sorted(live)
    weights = np.array([live[t] for t in names], dtype=np.float64)
    rng = np.random.default_rng([data.seed, 0, step, data.rank])
    tasks = rng.choice(len(names), size=batch_size, p=weights / weights.sum())
    return {s.id for s in data._stream_samples([names[t] for t in tasks], rng)}


class Killed(BaseException):
    """Stands in for SIGKILL between two steps."""


def test_stream_run_resumes_exactly(tiny_assets, tmp_path, monkeypatch):
    def cfg_for(out):
        recipe = tiny_recipe(tiny_assets, out, [{"name": "s", "steps": 4, "mixture": {"vqa": 1, "t2i": 1}}])
        recipe["data"]["stream"] = True
        return build_config(recipe)

    Trainer(cfg_for(tmp_path / "a"), tmp_path / "a", progress=False).run()
    original, calls = Trainer._step, {"n": 0}

    def dying_step(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:  # step 4 in progress, last checkpoint at step 2
            raise Killed
        return original(self, *args)

    monkeypatch.setattr(Trainer, "_step", dying_step)
    with pytest.raises(Killed):
        Trainer(cfg_for(tmp_path / "b"), tmp_path / "b", progress=False).run()
    monkeypatch.setattr(Trainer, "_step", original)
    Trainer(cfg_for(tmp_path / "b"), tmp_path / "b", progress=False).run(resume=True)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_grid_pos_aligner_adds_row_and_column_embeddings():
    al = GridPosAligner(8, 6, 2, grid=3)
    x = torch.zeros(2, 9, 8)
    pos = al(x) - al.fc1.bias.new_zeros(()) - super(GridPosAligner, al).forward(x)
    table = al.position_table()
    assert torch.allclose(pos, table.expand(2, 9, 6))
    assert torch.allclose(table[4], al.row_embed[1] + al.col_embed[1])  # middle center
    with pytest.raises(ValueError, match="3x3"):
        al(torch.zeros(1, 4, 8))


def test_sincos_position_tables_are_ordered_per_axis_and_at_the_normal_init_scale():
    row, col = sincos_table(3, 16, 0), sincos_table(3, 16, 1)
    assert row[:, 8:].abs().max() == 0 and col[:, :8].abs().max() == 0  # one half per axis
    assert torch.equal(row[:, :8], col[:, 8:])
    steps = row[1:, :8] - row[:-1, :8]  # on 3 cells every coordinate moves one way
    assert ((steps > 0).all(0) | (steps < 0).all(0)).all()
    low = sincos_table(8, 16, 0)[:, 3]  # on 8 cells the lowest frequency still does
    assert (low[1:] > low[:-1]).all()
    al = GridPosAligner(8, 16, 2, grid=3, init="sincos")
    table = al.position_table()
    assert len({tuple(r.tolist()) for r in table}) == 9  # nine distinct cells
    assert al.row_embed.pow(2).mean().sqrt().item() == pytest.approx(0.02, rel=1e-5)
    assert al.row_embed.requires_grad and al.col_embed.requires_grad
    # "left of" is linear: one direction orders the columns of every row
    direction = al.col_embed[2] - al.col_embed[0]
    proj = (table @ direction).reshape(3, 3)
    assert (proj[:, 0] < proj[:, 1]).all() and (proj[:, 1] < proj[:, 2]).all()
    with pytest.raises(ValueError, match="init 'ramp' is not one of normal, sincos"):
        GridPosAligner(8, 16, 2, grid=3, init="ramp")
    with pytest.raises(ConfigError, match="model.und_pos2d_init 'ramp'"):
        UnifiedConfig(und_pos2d=True, und_pos2d_init="ramp")


def test_und_pos2d_model_trains_saves_and_reloads(tiny_assets, tmp_path):
    recipe = tiny_recipe(tiny_assets, tmp_path / "r", [{"name": "s", "steps": 2, "mixture": {"pope": 1}}])
    recipe["model"].update(und_pos2d=True, und_pos2d_init="sincos")
    trainer = Trainer(build_config(recipe), tmp_path / "r", progress=False)
    model_dir = trainer.run()
    model, _ = load_model_dir(model_dir)
    aligner = model.und_encoder.aligner
    assert isinstance(aligner, GridPosAligner) and aligner.grid == 3
    assert model.config.und_pos2d_init == "sincos"
    assert torch.equal(aligner.row_embed, trainer.model.und_encoder.aligner.row_embed.cpu())


def test_extra_questions_append_answers_about_the_same_scene(tiny_assets, tmp_path):
    from utamoe.shapes import Scene

    trainer = _trainer(tiny_assets, tmp_path / "r", [{"name": "s", "steps": 1, "mixture": {"pope": 1}}],
                       extra_questions=3)
    data, sp = trainer.data, trainer.data.encoder.special
    assert data.extra_questions == 3 and data.benchmark.name == "shapesworld"
    batch = data.batch(0, 0, 4, {"pope": 1, "caption": 0}, 0.0)
    tok = trainer.text_tokenizer
    for row in range(4):
        ids = batch.input_ids[row][batch.attention_mask[row] == 1].tolist()
        assert ids.count(sp.sep) == 4 and ids.count(sp.eos) == 4
        answers = [tok.decode([int(t)]).strip() for t in batch.text_labels[row].tolist()
                   if t not in (IGNORE, sp.eos)]
        assert len(answers) == 4 and set(answers) <= {"yes", "no"}
    # the probes are right about the scene they were drawn for
    sample = data.by_task["pope"][0]
    scene = Scene.from_json(sample.meta["scene"])
    import numpy as np

    for q, a in data.benchmark.extra_questions(sample, np.random.default_rng(0), 20):
        color, shape = q.split()[3:5]
        assert (a == "yes") == ((color, shape) in scene.combos())


def test_extra_question_kinds_weigh_the_questions_asked(tiny_assets, tmp_path):
    import numpy as np

    from utamoe.shapes.questions import VQA_TYPES

    trainer = _trainer(tiny_assets, tmp_path / "r", [{"name": "s", "steps": 1, "mixture": {"vqa": 1, "pope": 1}}],
                       extra_questions=4, extra_question_kinds={"relation": 1, "count": 1})
    data = trainer.data
    assert data.extra_question_kinds == {"relation": 1, "count": 1}
    rng = np.random.default_rng(0)
    vqa = [s for s in data.by_task["vqa"] if len(s.meta["scene"]) >= 2]
    asked = [q for s in vqa for q, _ in data.benchmark.extra_questions(s, rng, 4, data.extra_question_kinds)]
    assert asked and all(q.startswith("how many") or " of " in q or " above " in q or " below " in q
                         for q in asked), asked
    pope = data.by_task["pope"][0]  # POPE questions only when `pope` has a weight
    assert data.benchmark.extra_questions(pope, rng, 3, {"relation": 1}) == []
    assert len(data.benchmark.extra_questions(pope, rng, 3, {"pope": 1})) == 3
    kinds = {t: 0 for t in VQA_TYPES}
    with pytest.raises(ConfigError, match="train.extra_question_kinds"):
        data.benchmark.extra_questions(vqa[0], rng, 2, {"colour": 1})
    assert data.benchmark.extra_questions(vqa[0], rng, 2, {**kinds, "pope": 1}) == []


def test_extra_question_kinds_need_extra_questions(tiny_assets, tmp_path):
    with pytest.raises(ConfigError, match="extra_questions is 0"):
        build_config(tiny_recipe(tiny_assets, tmp_path / "r", None, extra_question_kinds={"count": 1}))
    with pytest.raises(ConfigError, match="weights must be numbers >= 0"):
        build_config(tiny_recipe(tiny_assets, tmp_path / "r", None, extra_questions=2,
                                 extra_question_kinds={"count": -1}))


def test_split_by_group_gives_the_same_gradient_as_the_mixed_batch(tiny_assets, tmp_path):
    from utamoe.train.levers import split_by_group

    trainer = _trainer(tiny_assets, tmp_path / "r", None)
    model, data = trainer.model, trainer.data
    batch = data.batch(0, 1, 8, {"vqa": 1, "caption": 1, "t2i": 1, "edit": 1}, 0.0)
    parts = split_by_group(batch)
    assert len(parts) == 2 and sum(p.input_ids.shape[0] for p in parts) == 8
    assert sum(p.input_ids.numel() for p in parts) < batch.input_ids.numel()

    def grads(batches):
        model.zero_grad()
        for b in batches:
            model(b).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, split = grads([batch]), grads(parts)
    assert full.keys() == split.keys()
    for name in full:
        assert torch.allclose(full[name], split[name], atol=1e-5, rtol=1e-4), name


def test_split_groups_trains(tiny_assets, tmp_path):
    cfg = build_config(tiny_recipe(tiny_assets, tmp_path / "r", [{"name": "s", "steps": 3,
                                                                  "mixture": {"vqa": 1, "t2i": 1}}],
                                   split_groups=True))
    Trainer(cfg, tmp_path / "r", progress=False).run()
    recs = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_und" in r and "loss_gen" in r for r in recs)


def test_prompt_loss_covers_the_extra_questions_too(tiny_assets, tmp_path):
    trainer = _trainer(tiny_assets, tmp_path / "r", [{"name": "s", "steps": 1, "mixture": {"vqa": 1}}],
                       extra_questions=2)
    data, sp = trainer.data, trainer.data.encoder.special
    plain = data.batch(0, 0, 4, {"vqa": 1}, 0.0)
    data.prompt_loss_tasks = ("vqa",)
    dense = data.batch(0, 0, 4, {"vqa": 1}, 0.0)
    assert torch.equal(plain.input_ids, dense.input_ids)
    for row in range(4):
        ids = dense.input_ids[row][dense.attention_mask[row] == 1].tolist()
        targets = set((dense.text_labels[row] != IGNORE).nonzero()[:, 0].tolist())
        # every question (after </img> or after an answer's <eos>) is a target up to its <sep>
        starts = [ids.index(sp.image_end) + 1] + [t + 1 for t, x in enumerate(ids) if x == sp.eos][:-1]
        assert len(starts) == 3
        for start in starts:
            stop = ids.index(sp.sep, start)
            assert set(range(start - 1, stop)) <= targets, (row, start, stop)


def test_text_scene_questions_write_the_scene_before_the_question(tiny_assets, tmp_path):
    import numpy as np

    from utamoe.shapes import Scene
    from utamoe.shapes.text import describe

    trainer = _trainer(tiny_assets, tmp_path / "r", [{"name": "s", "steps": 1,
                                                      "mixture": {"vqa": 1, "t2i": 1}}],
                       text_scene_questions=1.0)
    data = trainer.data
    assert data.text_scene_questions == 1.0 and data.benchmark.offers("scene_text")
    sample = data.by_task["vqa"][0]
    text = data.benchmark.scene_text(sample)
    scene = Scene.from_json(sample.meta["scene"])
    assert text.prompt == f"{describe(scene)}. {sample.prompt}" and text.target == sample.target
    # the image is blank: one colour, the background's
    assert len(np.unique(text.image.reshape(-1, 3), axis=0)) == 1
    assert data.benchmark.scene_text(data.by_task["t2i"][0]) is None  # no question, no text form
    # in a batch: every VQA row's prompt is the text form, the t2i rows are unchanged
    rng = np.random.default_rng(0)
    out = data._as_scene_text([sample, data.by_task["t2i"][0]], rng)
    assert out[0].prompt == text.prompt and out[1] is data.by_task["t2i"][0]
    batch = data.batch(0, 0, 6, {"vqa": 1, "t2i": 1}, 0.0)
    for row, prompt in enumerate(batch.prompts):
        if batch.tasks[row] == "vqa":
            assert ". " in prompt and " at " in prompt.split(". ")[0], prompt
    data.text_scene_questions = 0.0
    assert data.batch(0, 0, 6, {"vqa": 1, "t2i": 1}, 0.0).prompts != batch.prompts


def test_text_scene_questions_is_a_share(tiny_assets, tmp_path):
    with pytest.raises(ConfigError, match="text_scene_questions"):
        build_config(tiny_recipe(tiny_assets, tmp_path / "r", None, text_scene_questions=1.5))
