"""What a run checks before its first long step (issue 28, items 9, 11 and 12): every path and
file the recipe names, before tokenizers train; every sample's sequence against the model's
positions, an over-long one an error naming its file and line (or skipped and counted); a run
of an older utamoe resumes, its parameter names converted."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from utamoe.config import ConfigError
from utamoe.data.formats import DataFormatError, load_split
from utamoe.data.ondisk import DiskSplit, build_index
from utamoe.model.io import load_model_dir
from utamoe.train import setup
from utamoe.train.checkpoint import latest_checkpoint
from utamoe.train.config import build_config, load_config
from utamoe.train.trainer import Trainer

from ..model.helpers import tiny_model
from .conftest import Killed, tiny_recipe


def _records(root, prompts):
    root.mkdir(parents=True, exist_ok=True)
    lines = [{"id": f"s{i}", "task": "caption", "group": "und", "prompt": p, "target": "a circle",
              "image": "x.png"} for i, p in enumerate(prompts)]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    Image.new("RGB", (48, 48)).save(root / "x.png")
    return root / "train.jsonl"


def test_a_sequence_past_the_positions_names_its_record_or_is_skipped(tmp_path):
    model, tok, enc = tiny_model(moe=None)  # 256 positions
    split = _records(tmp_path / "d", ["describe", "describe", "word " * 400, "describe"])
    samples, _ = load_split(split)
    with pytest.raises(DataFormatError, match=r"train\.jsonl:3: sample 's2' is \d+ tokens long; "
                                              r"the model has 256 positions"):
        setup.fitting(samples, enc, model, "raise")
    logged = []
    kept, skipped = setup.fitting(samples, enc, model, "skip", log=logged.append)
    assert [s.id for s in kept] == ["s0", "s1", "s3"] and skipped == 1
    assert "1 sample(s) longer than the model's 256 positions skipped" in logged[0]
    lengths = enc.lengths(samples, model.config.code_grid ** 2)
    assert lengths[0] == len(enc.sample(samples[0]).input_ids)  # counted = built


class _OneProcess:
    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass


def test_a_split_on_disk_is_length_checked_once_per_run(tmp_path, monkeypatch):
    """The same check for a split read from disk (issue 26 x issue 28, item 9): every record
    the run uses is counted; an over-long one raises naming its line, or is taken out of the
    run's positions and counted; the result is kept in data_cache, so a resumed run skips it."""
    model, tok, enc = tiny_model(moe=None)  # 256 positions
    split = _records(tmp_path / "d", ["describe", "describe", "word " * 400, "describe"])
    index = build_index(split)

    def disk():
        return setup.DiskData(index, DiskSplit(index), index.by_task())

    def cfg(on_error):
        return SimpleNamespace(data=SimpleNamespace(train_split="train", on_error=on_error))

    with pytest.raises(DataFormatError, match=r"train\.jsonl:3: sample 's2' is \d+ tokens long"):
        setup.fitting_on_disk(cfg("raise"), disk(), enc, model, tmp_path / "run", _OneProcess())
    logged, data = [], disk()
    assert setup.fitting_on_disk(cfg("skip"), data, enc, model, tmp_path / "run", _OneProcess(),
                                 progress=False, log=logged.append) == 1
    assert data.by_task["caption"].tolist() == [0, 1, 3] and "1 sample(s) longer" in logged[0]

    def counted_again(*args, **kwargs):
        raise AssertionError("the lengths were counted again")

    monkeypatch.setattr(setup, "overlong_records", counted_again)
    again = disk()
    assert setup.fitting_on_disk(cfg("skip"), again, enc, model, tmp_path / "run", _OneProcess(),
                                 progress=False, log=logged.append) == 1
    assert again.by_task["caption"].tolist() == [0, 1, 3]


def test_a_broken_backbone_path_is_reported_before_tokenizers_train(tiny_assets, tmp_path,
                                                                    monkeypatch):
    raw = tiny_recipe(tiny_assets, tmp_path / "run")
    raw["tokenizers"] = {"text_vocab_size": 300}  # both tokenizers would be trained (minutes)
    raw["model"]["backbone"] = {"path": str(tmp_path / "no-such-backbone")}

    def trained(*args, **kwargs):
        raise AssertionError("a tokenizer trained before the recipe's paths were checked")

    monkeypatch.setattr(setup, "train_tokenizer", trained)
    monkeypatch.setattr(setup, "train_text_tokenizer", trained)
    monkeypatch.setattr(setup, "load_samples", trained)
    with pytest.raises(FileNotFoundError, match="model.backbone: directory .*no-such-backbone"):
        setup.prepare_run(build_config(raw), tmp_path / "run", acc=None)
    raw["model"]["backbone"] = tiny_recipe(tiny_assets, tmp_path)["model"]["backbone"]
    raw["tokenizers"]["text"] = str(tmp_path / "no-such-tokenizer")
    with pytest.raises(ConfigError, match="tokenizers.text .*no-such-tokenizer"):
        setup.prepare_run(build_config(raw), tmp_path / "run", acc=None)


def _as_format_1(name: str) -> str:
    """A current parameter name (or glob) as model format 1 spelled it."""
    return name.replace("und_encoder.aligner.", "und_aligner.").replace("und_encoder.tower.",
                                                                          "und_encoder.")


def test_a_run_of_an_older_utamoe_resumes_converted(tiny_assets, tmp_path, monkeypatch, capsys):
    """Issue 28, item 11: a run made by the previous release (format-1 parameter names in its
    checkpoint and its config's globs) was refused, blaming "a typo" in a glob."""
    stages = [{"name": "pretrain", "steps": 4},
              {"name": "aligners", "steps": 2, "trainable": ["und_encoder.aligner.*", "gen_head.*"]}]
    cfg = build_config(tiny_recipe(tiny_assets, tmp_path / "a", stages))
    whole = Trainer(cfg, tmp_path / "a", progress=False).run()
    run = tmp_path / "b"
    original, calls = Trainer._step, {"n": 0}

    def dying_step(self, *args):
        calls["n"] += 1
        if calls["n"] == 6:
            raise Killed
        return original(self, *args)

    monkeypatch.setattr(Trainer, "_step", dying_step)
    with pytest.raises(Killed):
        Trainer(build_config(tiny_recipe(tiny_assets, run, stages)), run, progress=False).run()
    monkeypatch.setattr(Trainer, "_step", original)
    # Make it an older utamoe's run: its config's globs and its checkpoint's names.
    (run / "config.yaml").write_text(_as_format_1((run / "config.yaml").read_text()))
    ckpt = latest_checkpoint(run / "checkpoints")
    state = torch.load(ckpt / "pytorch_model.bin", weights_only=True)
    torch.save({_as_format_1(k): v for k, v in state.items()}, ckpt / "pytorch_model.bin")
    assert "und_aligner.*" in (run / "config.yaml").read_text()

    resumed = Trainer(load_config(str(run / "config.yaml")), run, progress=False).run(resume=True)
    assert "written by an older utamoe" in capsys.readouterr().out
    assert (ckpt / "pytorch_model.bin.old-names").is_file()
    a, b = load_model_dir(whole)[0].state_dict(), load_model_dir(resumed)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # as if it had never stopped
    trained = json.loads((resumed / "utamoe.json").read_text())["trained_tasks"]
    assert "vqa" in trained and trained == sorted(trained)  # what eval's notes read
