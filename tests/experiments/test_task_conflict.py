"""experiments/task_conflict.py, arms.py and summary.py: the arm table builds valid,
step-matched configs; a tiny experiment runs end to end, skips what is complete and resumes
what is not; the summary's mean, std and paired differences are right on hand-made metrics
files. conftest.py puts experiments/ on sys.path, as running the script does."""

from __future__ import annotations

import json
import shlex
import statistics

import arms
import figures
import pytest
import summary
import task_conflict as tc

from utamoe.shapes.world import SHAPES_TASKS
from utamoe.tasks import group_of
from utamoe.train.config import load_config


def _cfg(arm: str, scale: str):
    return arms.load_arm_config(arm, arms.arm_overrides(arm, scale))


def _moe(cfg):
    return [st.moe for st in cfg.stages if "upcycle" in st.surgery][-1]


@pytest.mark.parametrize("scale", ["full", "small", "tiny"])
def test_every_arm_builds_a_valid_config_with_equal_total_steps(scale):
    cfgs = {arm: _cfg(arm, scale) for arm in arms.arm_table()}
    totals = {arm: sum(st.steps for st in c.stages) for arm, c in cfgs.items()}
    assert len(set(totals.values())) == 1, totals
    if scale == "full":
        assert totals["utamoe"] == 1500
    if scale == "small":
        assert totals["utamoe"] == round(1500 * arms.SCALES["small"].step_factor)
    surgeries = {arm: [op for st in c.stages for op in st.surgery] for arm, c in cfgs.items()}
    assert surgeries["utamoe"] == ["split_ffn", "upcycle"]
    assert surgeries["utamoe_one_stage"] == ["upcycle"]  # no stage 1
    assert [st.name for st in cfgs["utamoe_one_stage"].stages] == ["pretrain", "stage2"]
    # one_stage gives stage 1's steps to the MoE stage: the same schedule as joint_topk
    assert ([st.steps for st in cfgs["utamoe_one_stage"].stages]
            == [st.steps for st in cfgs["joint_topk"].stages])
    for arm in ("joint_dense", "und_only", "gen_only", "joint_dense_wide"):
        assert surgeries[arm] == [] and cfgs[arm].model.moe is None
    assert _moe(cfgs["joint_topk"]).routing == "topk"
    assert _moe(cfgs["utamoe_no_shared"]).num_shared_experts == 0
    assert _moe(cfgs["utamoe_oracle"]).group_routing == "oracle"
    assert _moe(cfgs["utamoe_no_group_loss"]).group_loss_coef == 0
    assert _moe(cfgs["utamoe_alpha_fixed"]).alpha == "fixed"
    base = _moe(cfgs["utamoe"])
    assert (base.routing, base.group_routing, base.alpha, base.group_loss_coef > 0) == (
        "task_aware", "learned", "learnable", True)
    for arm in ("joint_topk", "utamoe", "utamoe_no_shared", "utamoe_no_group_loss", "utamoe_oracle",
                "utamoe_one_stage", "utamoe_alpha_fixed"):  # equal active FFNs per token
        m = _moe(cfgs[arm])
        assert m.top_k + m.num_shared_experts == 3 and m.num_experts == 8, arm
    width = cfgs["joint_dense"].model.backbone.config["intermediate_size"]
    assert cfgs["joint_dense_wide"].model.backbone.config["intermediate_size"] == 3 * width
    und = {t for t in SHAPES_TASKS if group_of(t) == "und"}
    assert {t for st in cfgs["und_only"].stages for t in st.mixture} == und
    assert {t for st in cfgs["gen_only"].stages for t in st.mixture} == set(SHAPES_TASKS) - und
    assert arms.trained_tasks("und_only", scale) == und and arms.trained_tasks("utamoe", scale) == set(SHAPES_TASKS)
    assert arms.arm_names() == list(arms.arm_table())


def test_the_recorded_train_command_rebuilds_the_same_config(tmp_path):
    lay = arms.Layout(tmp_path)
    for arm in ("utamoe_one_stage", "utamoe_no_shared"):
        words = shlex.split(arms.train_command(lay, arm, 1, "small"))
        sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        assert words[:4] == ["utamoe", "train", "--config", "utamoe"]
        rebuilt = load_config("utamoe", sets)
        direct = load_config("utamoe", arms.run_overrides(lay, arm, 1, "small"))
        assert rebuilt == direct
        assert rebuilt.run.seed == 1 and rebuilt.data.dir == str(lay.data(1))
        assert rebuilt.tokenizers.image == str(lay.tokenizers(1) / "image_tokenizer")


def _fake_run(lay, arm, seed, test: dict, heldout: dict, train_s=10.0):
    d = lay.run(arm, seed)
    d.mkdir(parents=True)
    for split, metrics in (("test", test), ("heldout", heldout)):
        (d / f"metrics-{split}.json").write_text(json.dumps(
            {"arm": arm, "seed": seed, "split": split, "metrics": metrics, "seconds": 2.0}))
    (d / "train_done.json").write_text(json.dumps({"seconds": train_s}))


def test_summary_mean_std_and_paired_differences(tmp_path):
    lay = arms.Layout(tmp_path)
    vqa = {"joint_dense": [0.5, 0.6, 0.7], "utamoe": [0.6, 0.8, 0.7]}
    for arm, values in vqa.items():
        for seed, v in enumerate(values):
            _fake_run(lay, arm, seed, {"vqa_accuracy": v, "edit_psnr": 20.0 + seed},
                      {"vqa_accuracy": v / 2})
    _fake_run(lay, "und_only", 0, {"vqa_accuracy": 0.9}, {"vqa_accuracy": 0.4})
    s = summary.summarize(lay)
    got = s["metrics"]["test"]["utamoe"]["vqa_accuracy"]
    assert got["mean"] == pytest.approx(0.7) and got["n"] == 3
    assert got["std"] == pytest.approx(statistics.stdev([0.6, 0.8, 0.7]))
    assert s["metrics"]["heldout"]["joint_dense"]["vqa_accuracy"]["mean"] == pytest.approx(0.3)
    assert s["metrics"]["test"]["und_only"]["vqa_accuracy"]["std"] is None  # one seed
    assert "edit_psnr" not in s["metrics"]["heldout"]["utamoe"]
    delta = s["deltas"]["test"]["utamoe - joint_dense"]["vqa_accuracy"]
    assert delta["values"] == pytest.approx([0.1, 0.2, 0.0])
    assert delta["std"] == pytest.approx(0.1)
    # paired on the seeds both arms have: und_only has seed 0 only
    assert s["deltas"]["test"]["joint_dense - und_only"]["vqa_accuracy"]["values"] == pytest.approx([-0.4])
    assert s["time"]["utamoe"] == {"runs": 3, "train_s_mean": 10.0, "eval_s_mean": 4.0, "total_s": 42.0}
    md = (tmp_path / "summary.md").read_text()
    assert "| utamoe | 3 | 0.700 ± 0.100 |" in md
    assert "| utamoe - joint_dense | 3 | +0.100 ± 0.100 |" in md
    assert json.loads((tmp_path / "summary.json").read_text())["metrics"] == json.loads(
        json.dumps(s["metrics"]))
    png = tmp_path / "summary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_summary_figure_needs_a_finished_run(tmp_path):
    assert figures.plot_summary({"metrics": {"test": {}, "heldout": {}}}, tmp_path / "s.png") is None
    assert not (tmp_path / "s.png").exists()


TINY = ["--scale", "tiny", "--seeds", "0", "--only", "joint_dense", "utamoe_one_stage", "--quiet"]


def test_tiny_experiment_runs_end_to_end_then_skips_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "exp"
    assert tc.main(["--out", str(out), *TINY, "--keep-checkpoints"]) == 0
    s = json.loads((out / "summary.json").read_text())
    for split in ("test", "heldout"):
        for arm in ("joint_dense", "utamoe_one_stage"):
            assert {"vqa_accuracy", "pope_f1", "t2i_correct_all", "edit_psnr"} <= set(s["metrics"][split][arm])
    assert set(s) >= {"experiment", "commands", "hardware", "arms", "metrics", "deltas", "train",
                      "model", "time", "total"}
    assert s["hardware"]["cores"] >= 1 and s["commands"][0].startswith("python experiments/task_conflict.py")
    assert "utamoe_one_stage - joint_dense" not in s["deltas"]["test"]  # not a listed pair
    assert s["model"]["utamoe_one_stage"]["params_active"] < s["model"]["utamoe_one_stage"]["params_total"]
    assert 0 <= s["train"]["utamoe_one_stage"]["group_router_accuracy"] <= 1
    assert (out / "summary.md").is_file()
    # the two arms share one dataset and one codec
    cfgs = [(out / "runs" / a / "seed-0" / "config.yaml").read_text() for a in ("joint_dense", "utamoe_one_stage")]
    assert all(f"image: {out / 'tokenizers' / 'seed-0' / 'image_tokenizer'}" in c for c in cfgs)

    # A rerun does nothing: no training, no evaluation, no data or tokenizer work.
    def boom(*a, **k):
        raise AssertionError("a complete run was redone")

    prep = [out / "data" / "seed-0" / "dataset.json", out / "tokenizers" / "seed-0" / "image_tokenizer"]
    stamps = [p.stat().st_mtime_ns for p in prep]
    monkeypatch.setattr(tc, "do_run", boom)
    assert tc.main(["--out", str(out), *TINY]) == 0
    monkeypatch.undo()
    assert [p.stat().st_mtime_ns for p in prep] == stamps

    # A missing evaluation is redone alone; a training without its end marker resumes.
    run = out / "runs" / "utamoe_one_stage" / "seed-0"
    (run / "metrics-heldout.json").unlink()
    test_before = (run / "metrics-test.json").read_text()
    dense = out / "runs" / "joint_dense" / "seed-0"
    (dense / "train_done.json").unlink()
    for split in ("test", "heldout"):
        (dense / f"metrics-{split}.json").unlink()
    assert tc.main(["--out", str(out), *TINY]) == 0
    assert (run / "metrics-heldout.json").is_file() and (run / "metrics-test.json").read_text() == test_before
    assert json.loads((dense / "train_done.json").read_text())["resumed"] is True
    assert not (dense / "checkpoints").exists()  # pruned once the run finished


def test_a_stopped_invocation_still_leaves_its_command_for_the_summary(tmp_path, monkeypatch):
    out = tmp_path / "exp"

    def stopped(*a, **k):
        raise KeyboardInterrupt  # as SIGTERM / Ctrl-C stop the runs

    monkeypatch.setattr(tc, "_prepare_seeds", lambda lay, args: None)
    monkeypatch.setattr(tc, "run_all", stopped)
    with pytest.raises(KeyboardInterrupt):
        tc.main(["--out", str(out), *TINY])
    lines = [json.loads(x) for x in (out / "invocations.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines] == ["start"] and "wall_s" not in lines[0]
    assert tc.main(["--out", str(out), "--summarize-only"]) == 0
    assert f"python experiments/task_conflict.py --out {out}" in (out / "summary.md").read_text()


def test_another_scale_in_the_same_out_dir_is_refused(tmp_path):
    (tmp_path / "experiment.json").write_text(json.dumps(
        {"scale": "full", "sizes": arms.SCALES["full"].sizes, "step_factor": 1.0}))
    with pytest.raises(SystemExit, match="holds a `full` experiment"):
        tc.main(["--out", str(tmp_path), *TINY])


@pytest.mark.slow
def test_parallel_jobs_run_in_subprocesses(tmp_path):
    out = tmp_path / "exp"
    assert tc.main(["--out", str(out), *TINY, "--jobs", "2"]) == 0
    for arm in ("joint_dense", "utamoe_one_stage"):
        assert (out / "runs" / arm / "seed-0" / "log.txt").is_file()
    assert set(json.loads((out / "summary.json").read_text())["metrics"]["test"]) == {
        "joint_dense", "utamoe_one_stage"}
