"""`train.report_to`: TensorBoard and Weights & Biases (offline) get every logged metric of a tiny
run at its global step; a reporter that is unknown or not installed stops the run at its start
with a message saying what to do."""

from __future__ import annotations

import json
import struct

import pytest

from utamoe.config import ConfigError
from utamoe.train import reporters
from utamoe.train.config import build_config
from utamoe.train.reporters import check_report_to, scalars
from utamoe.train.trainer import Trainer

from .conftest import UTAMOE_STAGES, tiny_recipe


def test_scalars_spread_lists_and_drop_what_is_not_a_finite_number():
    rec = {"stage": "s", "loss": 2.0, "expert_load_und": [0.25, 0.75], "x": float("nan"), "n": 3}
    assert scalars(rec) == {"loss": 2.0, "expert_load_und/0": 0.25, "expert_load_und/1": 0.75,
                            "n": 3.0}


def test_an_unknown_or_missing_reporter_is_a_clear_error(monkeypatch):
    with pytest.raises(ConfigError, match="unknown reporter 'mlflow'.*tensorboard"):
        check_report_to(["mlflow"])
    monkeypatch.setitem(reporters.PACKAGES, "wandb", "wandb_not_installed_here")
    with pytest.raises(ConfigError, match="names 'wandb' but the wandb_not_installed_here package "
                                          "is not installed"):
        check_report_to(["tensorboard", "wandb"])


def test_a_missing_reporter_stops_the_run_before_any_work(tiny_assets, tmp_path, monkeypatch):
    monkeypatch.setitem(reporters.PACKAGES, "wandb", "wandb_not_installed_here")
    cfg = build_config(tiny_recipe(tiny_assets, tmp_path / "run", report_to=["wandb"]))
    with pytest.raises(ConfigError, match="not installed"):
        Trainer(cfg, tmp_path / "run", progress=False).run()
    assert not (tmp_path / "run" / "text_tokenizer").exists()


def test_tensorboard_and_offline_wandb_get_the_runs_metrics(tiny_assets, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    cfg = build_config(tiny_recipe(tiny_assets, run, UTAMOE_STAGES, report_to=["tensorboard", "wandb"],
                                   wandb_project="utamoe-test"))
    Trainer(cfg, run, progress=False).run()
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last = recs[-1]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(run / "tensorboard"))
    tb.Reload()
    tags = set(tb.Tags()["scalars"])
    assert {"loss", "lr", "tokens_per_s", "loss_und", "loss_gen", "group_router_accuracy",
            "expert_load_und/0"} <= tags
    assert [e.step for e in tb.Scalars("loss")] == [r["global_step"] for r in recs]
    assert tb.Scalars("loss")[-1].value == pytest.approx(last["loss"])

    files = list((run / "wandb").rglob("*.wandb"))
    assert len(files) == 1 and (run / "wandb_run_id").read_text() in files[0].name
    history = _wandb_history(files[0])
    logged = [h for h in history if "loss" in h]
    assert [h["_step"] for h in logged] == [r["global_step"] for r in recs]
    assert logged[-1]["loss"] == pytest.approx(last["loss"])
    assert "expert_load_gen/0" in logged[-1] and "lr" in logged[-1]
    assert wandb.run is None  # finished


def _wandb_history(path) -> list[dict]:
    """The `history` records of an offline .wandb file (a LevelDB-style log of protobuf records:
    a 7-byte file header, 32 KiB blocks, each chunk with a 7-byte header: crc, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, records, part = path.read_bytes(), 7, [], b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # the block's zero padding
            pos += left
            continue
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(part)
            part = b""
    history = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                            for i in record.history.item})
    return history
