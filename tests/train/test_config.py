"""The experiment config: bad keys, unknown tasks and impossible values fail at load with
the key named; broken data stops (or is skipped) with file:line; shipped recipes validate."""

from __future__ import annotations

import shutil

import pytest

from utamoe.config import ConfigError
from utamoe.data.formats import DataFormatError
from utamoe.train.config import build_config, load_config
from utamoe.train.trainer import Trainer
from utamoe.vision.tokenizer import TokenizerConfig

from .conftest import tiny_recipe


def test_bad_config_and_bad_data_errors(tiny_assets, tmp_path):
    with pytest.raises(ConfigError, match=r"train.lrr.*did you mean 'lr'"):
        build_config({"train": {"lrr": 1}})
    with pytest.raises(ConfigError, match=r"stages\[0\] \(x\).mixture: unknown tasks \['vqaa'\]"):
        build_config({"stages": [{"name": "x", "mixture": {"vqaa": 1}}]})
    with pytest.raises(ConfigError, match="needs stages\\[0\\].moe"):
        build_config({"stages": [{"surgery": ["upcycle"]}]})
    with pytest.raises(ConfigError, match="is not a shipped recipe"):
        load_config("no_such_recipe")
    with pytest.raises(ConfigError, match="must be int"):
        load_config("utamoe", ["train.batch_size=big"])
    broken = tmp_path / "data"
    broken.mkdir()
    lines = (tiny_assets / "data" / "train.jsonl").read_text().splitlines()
    (broken / "train.jsonl").write_text("\n".join(lines[:3] + ["{not json"] + lines[3:]) + "\n")
    shutil.copytree(tiny_assets / "data" / "images", broken / "images")
    raw = tiny_recipe(tiny_assets, tmp_path / "run")
    raw["data"]["dir"] = str(broken)
    with pytest.raises(DataFormatError, match=r"train.jsonl:4"):
        Trainer(build_config(raw), tmp_path / "run", progress=False).run()
    raw["data"]["on_error"] = "skip"
    Trainer(build_config(raw), tmp_path / "run2", progress=False).run()


def test_shipped_recipes_validate():
    for name in ("utamoe", "joint_dense", "joint_topk", "und_only", "gen_only", "demo"):
        cfg = load_config(name)  # the ShapesWorld recipes share base.yaml's architecture
        assert cfg.stages and cfg.model.backbone.config["model_type"] == "qwen3"
        assert cfg.train.optimizer == "muon" and cfg.model.und_pos2d
    demo, utamoe = load_config("demo"), load_config("utamoe")
    assert [s.surgery for s in demo.stages] == [s.surgery for s in utamoe.stages]  # the same recipe
    assert demo.stages[2].optimizer == "adamw" and demo.data.stream and demo.train.extra_questions
    # the demo's codec writes one code per ShapesWorld cell (48 px / 16), the others 2x2
    assert TokenizerConfig.from_dict(demo.tokenizers.image_train).grid_size == 3
    assert TokenizerConfig.from_dict(utamoe.tokenizers.image_train).grid_size == 6
    topk = load_config("joint_topk").stages[1].moe
    ta = load_config("utamoe").stages[2].moe
    active = lambda m: m.top_k + m.num_shared_experts  # noqa: E731
    assert active(topk) == active(ta) and topk.num_experts == ta.num_experts


def test_moe_group_names_must_be_the_registry_groups():
    with pytest.raises(ConfigError, match=r"stages.0.moe.group_names is \['und', 'image'\]"):
        build_config({"stages": [{"surgery": ["upcycle"], "moe": {"group_names": ["und", "image"]}}]})
    cfg = build_config({"stages": [{"surgery": ["upcycle"], "moe": {"group_names": ["gen", "und"]}}]})
    assert cfg.stages[0].moe.group_names == ("gen", "und")


def test_vision_image_size_conflicting_with_the_model_is_an_error():
    from utamoe.hf.parts import build_vision

    with pytest.raises(ConfigError, match="model.vision.config.image_size is 32 but model.image_size is 48"):
        build_vision(load_config("utamoe", ["model.vision.config.image_size=32"]).model.vision, 48)


@pytest.mark.parametrize("override, message", [
    ("train.betas=[0.9]", "train.betas"), ("train.betas=[0.9, 1.5]", "train.betas"),
    ("stages.1.lr=-1", "stages[1] (stage1).lr"), ("stages.1.lr=0", "leave it out"),
    ("run.seed=-1", "run.seed"), ("model.backbone.config.model_type=lama", "not a Hugging Face model type"),
    ("model.backbone.config.num_attention_heads=5", "not divisible"),
    ("train={oops", "not valid YAML"), ("train.lr=.inf", "train.lr"), ("stages=null", "must be a list"),
    ("train.weight_decay=-1", "train.weight_decay"), ("train.warmup_steps=-3", "train.warmup_steps"),
    ("data.max_image_pixels=0", "data.max_image_pixels"),
])
def test_values_that_would_fail_later_fail_at_load(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config("utamoe", [override])


def test_stage_globs_and_lora_targets_are_checked_before_training(tiny_assets, tmp_path):
    for stage, message in ((dict(trainable=["lm.layer.*.mlp.*"]), "match no parameter"),
                           (dict(lora={"rank": 2, "targets": ["q_prj"]}), "q_prj")):
        raw = tiny_recipe(tiny_assets, tmp_path / "run", [{"name": "a", "steps": 1},
                                                          {"name": "b", "steps": 1, **stage}])
        trainer = Trainer(build_config(raw), tmp_path / "run", progress=False)
        with pytest.raises(ConfigError, match=rf"stages.1 \(b\): .*{message}"):
            trainer.run(fresh=True)
        assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained first


def test_moved_keys_of_older_configs_are_read_at_their_new_place(tiny_assets, tmp_path):
    """model.cfg_dropout is train.cfg_dropout now, train.pack_questions train.extra_questions:
    a resumed run's config.yaml written before still builds; giving both names is an error."""
    recipe = tiny_recipe(tiny_assets, tmp_path / "r", [{"name": "s", "steps": 1}])
    old = {**recipe, "model": {**recipe["model"], "cfg_dropout": 0.25},
           "train": {**recipe["train"], "pack_questions": 2}}
    cfg = build_config(old)
    assert cfg.train.cfg_dropout == 0.25 and cfg.train.extra_questions == 2
    both = {**old, "train": {**old["train"], "cfg_dropout": 0.5}}
    with pytest.raises(ConfigError, match="model.cfg_dropout is the old name of train.cfg_dropout"):
        build_config(both)


def test_extends_never_echoes_a_file_that_is_not_a_recipe(tmp_path):
    """Issue 28, item 19: `extends: /etc/shadow` printed the file's first line in the error."""
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$SECRETHASH:19000:0:99999:7:::\n")
    for target in (str(secret), "shadow"):
        (tmp_path / "r.yaml").write_text(f"extends: {target}\n")
        with pytest.raises(ConfigError, match="must name a .yaml recipe") as err:
            load_config(str(tmp_path / "r.yaml"))
        assert "SECRETHASH" not in str(err.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: {lr: SECRETVALUE\n")
    (tmp_path / "r.yaml").write_text("extends: broken.yaml\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML \(.* at line \d+") as err:
        load_config(str(tmp_path / "r.yaml"))
    assert "SECRETVALUE" not in str(err.value)
