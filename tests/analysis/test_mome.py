"""MoME's routing analysis (utamoe.analysis.mome): per task, the MoVE router's weight on
each encoder and each MoLE adapter's share per layer, as JSON, markdown and PNG heatmaps; part
of `utamoe analyze` (run_analysis) for MoME models, absent for the others."""

from __future__ import annotations

import json

import pytest

from utamoe.analysis.mome import mome_routing, write_mome_outputs
from utamoe.analysis.report import markdown_report, write_analysis_outputs
from utamoe.analysis.run import run_analysis
from utamoe.data.sequences import collate

from ..model.helpers import mixed_samples, perturb_mome, tiny_model, tiny_mome_model


def _by_task(encoder):
    out = {}
    for s in mixed_samples():
        out.setdefault(s.task, []).append(collate([encoder.sample(s)], encoder.special.pad))
    return out


def test_router_weights_and_adapter_shares_per_task(tmp_path):
    model, _, enc = tiny_mome_model()
    perturb_mome(model)
    by_task = _by_task(enc)
    r = mome_routing(model, by_task)
    assert r.encoders == ["vit", "dino", "codec"]
    # only understanding-input tasks send images through the mixture
    assert set(r.encoder_weights) == {"vqa", "caption", "grounding"}
    for w in r.encoder_weights.values():
        assert sum(w) == pytest.approx(1.0) and all(0 <= x <= 1 for x in w)
    # the router's weights for one sample equal what the model computes directly
    batch = by_task["vqa"][0]
    direct = model.und_encoder.weights(model.instance_embeddings(batch), 1, "cpu")[0]
    assert r.encoder_weights["vqa"] == pytest.approx(direct.tolist(), abs=1e-6)
    assert r.mole_experts == 3 and len(r.mole_layers) == 2 and r.mole_layers[0] == "layers.0.mlp"
    for layer in r.mole_layers:
        assert set(r.mole_shares[layer]) == set(by_task)
        for share in r.mole_shares[layer].values():
            assert sum(share) == pytest.approx(1.0)
            assert max(share) == pytest.approx(1.0)  # instance top-1: one adapter per sample
    paths = write_mome_outputs(r, tmp_path)
    assert json.loads(paths["mome"].read_text())["encoders"] == r.encoders
    assert paths["mome_encoders_png"].stat().st_size > 0 and paths["mome_adapters_png"].stat().st_size > 0


def test_analyze_reports_mome_routing_only_for_mome_models(tmp_path):
    from utamoe.data.formats import Sample

    model, _, enc = tiny_mome_model()
    samples = [Sample(f"{s.id}-{k}", s.task, s.prompt, image=s.image, target=s.target,
                      target_image=s.target_image) for k in range(2) for s in mixed_samples()]
    result = run_analysis(model, enc, samples, batches=1, batch_size=2, progress=False)
    assert result.mome is not None and result.mome.encoders == ["vit", "dino", "codec"]
    paths = write_analysis_outputs(result, tmp_path)
    assert {"mome", "mome_encoders_png", "mome_adapters_png"} <= set(paths)
    report = paths["report"].read_text()
    assert "## MoME routing" in report and "| vqa |" in report
    plain, _, enc2 = tiny_model()
    result = run_analysis(plain, enc2, samples, batches=1, batch_size=2, progress=False)
    assert result.mome is None and "MoME" not in markdown_report(result)
