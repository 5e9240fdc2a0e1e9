"""Every verb, given bad input, answers with `error: ...` (exit 2) and never a traceback: a
user's mistake is named, with what to do. Run in-process, so any escaping exception fails."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from utamoe.cli import main
from utamoe.model.io import save_model_dir

from .model.helpers import tiny_model
from .owndata import write_digits


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model, tok, _ = tiny_model()
    save_model_dir(model, root / "m", tok)
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(root / "img.png")
    (root / "bad.png").write_bytes(b"not a png")
    write_digits(root / "data", {"train": 4, "test": 2})
    (root / "data" / "empty.jsonl").write_text("\n\n")
    (root / "damaged").mkdir()
    for f in ("utamoe.json",):
        (root / "damaged" / f).write_text("{not json")
    (root / "future").mkdir()
    meta = json.loads((root / "m" / "utamoe.json").read_text())
    (root / "future" / "utamoe.json").write_text(json.dumps({**meta, "version": 99}))
    import shutil

    shutil.copytree(root / "m", root / "truncated")
    (root / "truncated" / "model.safetensors").write_bytes((root / "m" / "model.safetensors").read_bytes()[:500])
    return root


CASES = [
    (["data", "check", "{r}/nope"], "not a directory"),
    (["data", "shapes", "--out", "{r}/s", "--sizes", "train=x"], "SPLIT=N"),
    (["tokenizer", "train", "--data", "{r}/data", "--out", "{r}/vq", "--steps", "0"], "at least 1"),
    (["tokenizer", "train", "--data", "{r}/nope", "--out", "{r}/vq"], "nope"),
    (["train", "--config", "{r}/nope.yaml"], "does not exist"),
    (["train", "--config", "utamoe", "--set", "train={oops"], "not valid YAML"),
    (["train", "--config", "utamoe", "--set", "train.betas=[0.9]"], "train.betas"),
    (["train", "--config", "utamoe", "--set", "data.dir={r}/nope", "--out", "{r}/run"], "does not exist"),
    (["train", "--config", "utamoe", "--set", "data.dir={r}/data", "--set", "data.train_split=empty",
      "--out", "{r}/run2"], "has no samples"),
    (["train", "--config", "utamoe", "--set", "data.dir={r}/data", "--set",
      "stages=[{name: a, steps: 1, mixture: {edit: 1}}]", "--out", "{r}/run3"], "none of them"),
    (["train", "--resume", "{r}/nope"], "not a run directory"),
    (["eval", "--model", "{r}/m", "--data", "{r}/data", "--split", "empty"], "has no samples"),
    (["eval", "--model", "{r}/m", "--data", "{r}/data", "--split", "val"], "no split 'val'"),
    (["eval", "--model", "{r}/damaged", "--data", "{r}/data"], "not valid JSON"),
    (["eval", "--model", "{r}/future", "--data", "{r}/data"], "format version 99"),
    (["eval", "--model", "{r}/truncated", "--data", "{r}/data"], "cannot be loaded"),
    (["analyze", "--model", "{r}/m", "--data", "{r}/data", "--batches", "0"], "at least 1"),
    (["generate", "--model", "{r}/m", "--prompt", "x", "--out", "{r}/o.png", "--num-images", "0"], "--num-images"),
    (["generate", "--model", "{r}/m", "--prompt", "x", "--out", "{r}/o.png", "--temperature", "nan"], "--temperature"),
    (["generate", "--model", "{r}/m", "--prompt", "x", "--out", "{r}/o.png", "--top-k", "-1"], "--top-k"),
    (["generate", "--model", "{r}/m", "--prompt", "x", "--out", "{r}/o.png", "--device", "foo"], "not a torch device"),
    (["generate", "--model", "{r}/m", "--prompt", "x", "--out", "{r}/o.jpg"], "must end in .png"),
    (["answer", "--model", "{r}/m", "--image", "{r}/bad.png", "--question", "q"], "cannot read image"),
    (["answer", "--model", "{r}/m", "--image", "{r}/img.png", "--question", "q " * 600], "positions"),
    (["answer", "--model", "{r}/m", "--image", "{r}/img.png", "--question", "q", "--task", "ocr"], "unknown task"),
    (["answer", "--model", "{r}/m", "--image", "{r}/img.png", "--question", "q", "--temperature", "-1"], "--temperature"),
    (["demo", "--quick", "--out", "{r}/img.png"], "img.png"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0][:2]) + f" #{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_an_error_message_not_a_traceback(env, capsys, argv, message):
    code = main([a.replace("{r}", str(env)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error:") and message in err, err
    assert "Traceback" not in err


def test_ctrl_c_is_a_message(monkeypatch, capsys):
    import utamoe.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_version", interrupted)
    assert main(["version"]) == 130 and "interrupted" in capsys.readouterr().err
