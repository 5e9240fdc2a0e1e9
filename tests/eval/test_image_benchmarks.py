"""GenEval's and DPG-Bench's layouts: the folders and files their scorers read, N samples per
prompt equal to the predictor's for seed + j, the settings recorded, bad metadata named by line,
and a stopped run that continues without redrawing what is done."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from tests.model.helpers import tiny_model
from utamoe.cli import main
from utamoe.eval.image_benchmarks import (
    read_geneval_metadata,
    write_dpg_bench,
    write_geneval,
)
from utamoe.infer.checks import InputError
from utamoe.infer.predictor import Predictor
from utamoe.infer.sampling import SamplingConfig
from utamoe.model.io import save_model_dir

META = [{"tag": "single_object", "include": [{"class": "bench", "count": 1}],
         "prompt": "a red circle"},
        {"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "blue"}],
         "prompt": "a blue square at the top left"}]


@pytest.fixture(scope="module")
def predictor():
    model, tok, _ = tiny_model()
    return Predictor(model, tok)


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_geneval_layout_holds_n_samples_per_prompt_and_the_settings(predictor, tmp_path):
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in META))
    sampling = SamplingConfig(temperature=1.0, cfg_scale=2.0, seed=4)
    write_geneval(predictor, read_geneval_metadata(tmp_path / "meta.jsonl"), tmp_path / "out",
                  n_samples=3, sampling=sampling, batch_size=4, progress=False)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "utamoe_settings.json"]
    for i, meta in enumerate(META):
        folder = out / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == meta
        names = sorted(p.name for p in (folder / "samples").iterdir())
        assert names == ["0000.png", "0001.png", "0002.png"]
        assert all(re.match(r"\d+\.png", n) for n in names)  # what evaluate_images.py picks
        for j, name in enumerate(names):
            want = predictor.generate(meta["prompt"], SamplingConfig(temperature=1.0, cfg_scale=2.0,
                                                                     seed=4 + j))[0]
            assert np.array_equal(_png(folder / "samples" / name), want)
    settings = json.loads((out / "utamoe_settings.json").read_text())
    assert settings["harness"] == "geneval layout" and settings["seed"] == 4
    assert settings["cfg_scale"] == 2.0 and settings["temperature"] == 1.0
    assert settings["samples_per_prompt"] == 3 and settings["prompt_rewriting"] == "off"
    assert settings["prompt_templates"] == {"t2i": "<bos> <t2i> {prompt} <img>"}
    assert "torch" in settings["versions"] and "utamoe" in settings["versions"]


def test_a_stopped_geneval_run_continues_where_it_stopped(predictor, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_geneval(predictor, META[:1], out, n_samples=2, progress=False)
    before = (out / "00000" / "samples" / "0000.png").stat().st_mtime_ns
    drawn = []
    real = predictor.run
    monkeypatch.setattr(predictor, "run", lambda reqs, **kw: drawn.extend(reqs) or real(reqs, **kw))
    write_geneval(predictor, META, out, n_samples=2, progress=False)
    assert [r.prompt for r in drawn] == [META[1]["prompt"]] * 2  # only the missing prompt
    assert (out / "00000" / "samples" / "0000.png").stat().st_mtime_ns == before


@pytest.mark.parametrize("text, where", [('{"tag": "x"}\n', ":1:"), ('\n{"prompt": "a"}\nnot json\n', ":3:"),
                                         ('{"prompt": ""}\n', ":1:"), ("", "holds no prompts")])
def test_bad_geneval_metadata_is_named_by_file_and_line(tmp_path, text, where):
    (tmp_path / "m.jsonl").write_text(text)
    with pytest.raises(InputError, match=re.escape(where)):
        read_geneval_metadata(tmp_path / "m.jsonl")


def test_dpg_bench_writes_two_by_two_grids(predictor, tmp_path):
    prompts = [("dog", "a red circle"), ("cat", "a blue square")]
    write_dpg_bench(predictor, prompts, tmp_path / "dpg", SamplingConfig(temperature=1.0, seed=1),
                    progress=False)
    side = predictor.processor.size
    grid = _png(tmp_path / "dpg" / "dog.png")
    assert grid.shape == (2 * side, 2 * side, 3)
    tiles = [grid[:side, :side], grid[:side, side:], grid[side:, :side], grid[side:, side:]]
    for j, tile in enumerate(tiles):
        want = predictor.generate("a red circle", SamplingConfig(temperature=1.0, seed=1 + j))[0]
        assert np.array_equal(tile, want)
    settings = json.loads((tmp_path / "dpg" / "utamoe_settings.json").read_text())
    assert settings["harness"] == "dpg-bench layout" and settings["tile"] == side


def test_the_cli_verbs_write_the_layouts(predictor, tmp_path, capsys):
    save_model_dir(predictor.model, tmp_path / "m", predictor.tokenizer)
    (tmp_path / "meta.jsonl").write_text(json.dumps(META[0]) + "\n")
    assert main(["geneval", "--model", str(tmp_path / "m"), "--metadata", str(tmp_path / "meta.jsonl"),
                 "--out", str(tmp_path / "g"), "--n-samples", "2", "--seed", "3"]) == 0
    assert len(list((tmp_path / "g" / "00000" / "samples").glob("*.png"))) == 2
    assert "evaluate_images.py" in capsys.readouterr().out
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "p1.txt").write_text("a red circle\n")
    assert main(["dpg-bench", "--model", str(tmp_path / "m"), "--prompts", str(tmp_path / "prompts"),
                 "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "p1.png").is_file()
    assert main(["dpg-bench", "--model", str(tmp_path / "m"), "--prompts", str(tmp_path / "none"),
                 "--out", str(tmp_path / "d")]) == 2
    assert "not a folder of DPG-Bench prompt files" in capsys.readouterr().err
