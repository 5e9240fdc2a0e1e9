"""The MoME tables experiment (experiments/mome_tables.py): every arm is a valid model that
differs from the reference only where its row says, the paper's groups come from the right
metrics, and the summary pairs seeds and prints the paper beside ours."""

from __future__ import annotations

import json

import mome_tables as mt
import pytest
import torch

from utamoe.train.config import load_config


def _config(arm: str):
    return load_config("mome", [*mt.ARMS[arm][2], "model.sentence_encoder=null"])


@pytest.mark.parametrize("arm", list(mt.ARMS))
def test_every_arm_builds_its_row(arm):
    from utamoe.model.unified import UnifiedModel

    cfg = _config(arm)
    move, mole = cfg.model.move, cfg.model.mole
    label = mt.ARMS[arm][1]
    names = [e.name for e in move.encoders]
    assert (names == ["vit", "conv", "codec"]) == label.startswith("MoVE")
    full = label == "MoVE · MoLE-I"  # Table 2's MoVE is the full mixture (ADT + router)
    assert move.transform == ("adt" if "ADT" in label or full else "avgpool")
    assert move.aggregate == ("router" if "router" in label or full else "add")
    assert (mole.num_experts == 1) == (mt.ARMS[arm][0] == "1")
    assert mole.gumbel == ("GS" in label) and (mole.balance_loss_coef > 0) == ("LB" in label)
    want = {"MoLE-IT": "instance_token", "MoLE-T": "token"}.get(label.split(" · ")[-1].split(" ")[0],
                                                                 "instance")
    assert mole.routing == want
    assert cfg.stages[0].mixture == mt.UND
    m = cfg.model
    m.vocab_size, m.num_codes, m.code_grid, m.und_slot_id = 64, 32, 6, 5
    with torch.device("meta"):
        model = UnifiedModel.build(m)
    assert model.und_tokens == 36


def test_paper_groups_from_headline_metrics():
    g = mt.paper_groups({"vqa_accuracy": 0.6, "pope_accuracy": 0.5, "grounding_acc50": 0.3,
                         "caption_f1": 0.9})
    assert g == pytest.approx({"General": 0.55, "REC": 0.3, "REG": 0.9, "Avg": (0.55 + 0.3 + 0.9) / 3})


def test_summary_pairs_seeds_and_shows_the_paper(tmp_path):
    lay = mt.Layout(tmp_path)
    for arm, base in (("t1_vit_avg", 0.5), ("t1_move_adt_router", 0.6)):
        for seed in (0, 1, 2):
            d = lay.run(arm, seed)
            d.mkdir(parents=True)
            m = {"vqa_accuracy": base + seed / 100, "pope_accuracy": 0.5, "grounding_acc50": base,
                 "caption_f1": base}
            m.update(mt.paper_groups(m))
            (d / "metrics.json").write_text(json.dumps({"seed": seed, "metrics": m, "train_seconds": 1.0}))
            (d / "train_done.json").write_text(json.dumps({"steps": 7}))
    s = mt.summarize(lay)
    assert s["arms"]["t1_vit_avg"]["REC"]["n"] == 3
    d = s["deltas"]["t1_move_adt_router - t1_vit_avg"]
    assert d["REC"]["mean"] == pytest.approx(0.1) and d["REC"]["std"] == pytest.approx(0.0, abs=1e-12)
    md = (tmp_path / "summary.md").read_text()
    assert "7 steps per arm" in md and "79.0 / 81.9 / 63.8 / 69.4" in md
    assert "| MoVE · one adapter | 3 |" in md  # Table 2 reuses Table 1's run
