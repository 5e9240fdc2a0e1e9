"""What the task-conflict experiment runs, and where: arms, scales, each run's config and files.

An arm is a shipped recipe plus `--set` overrides; a scale multiplies every stage's steps
and sets the ShapesWorld sizes. `run_overrides` / `train_command` give the exact
`utamoe train` of one arm x seed, and `Layout` says where its data, codec and run live.
Kept apart from the run loop (task_conflict.py) and the aggregation (summary.py) so that
the table of arms can be read, and tested, on its own. See experiments/README.md.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SPLITS = ("test", "heldout")  # every run is evaluated on both


# ---------------------------------------------------------------- arms


@dataclass(frozen=True)
class Arm:
    recipe: str
    overrides: tuple[str, ...] = ()
    group: str = ""
    about: str = ""
    default: bool = True  # part of the default set (the arms)
    ffn_mult: int = 1  # backbone FFN width times this (of the scale's model)


def _one_stage_stages() -> str:
    """The UTAMoE recipe without stage 1: pretrain, then upcycle the dense FFN straight to
    TA-MoE; stage 1's steps go to the MoE stage (the same schedule as joint_topk)."""
    import yaml

    from utamoe.train.config import read_yaml, recipe_path

    pretrain, stage1, stage2 = read_yaml(recipe_path("utamoe"))["stages"]
    stage2 = {**stage2, "steps": stage1["steps"] + stage2["steps"]}
    flow = yaml.safe_dump([pretrain, stage2], default_flow_style=True, width=1 << 20)
    return "stages=" + flow.strip()


@lru_cache(maxsize=1)
def arm_table() -> dict[str, Arm]:
    moe = "stages.2.moe"
    return {
        "und_only": Arm("und_only", (), "conflict", "understanding tasks only"),
        "gen_only": Arm("gen_only", (), "conflict", "generation tasks only"),
        "joint_dense": Arm("joint_dense", (), "conflict+remedy", "all tasks, dense"),
        "joint_topk": Arm("joint_topk", (), "remedy", "dense pretrain -> plain top-k MoE (8 experts, top-2 + 1 shared)"),
        "utamoe": Arm("utamoe", (), "remedy", "pretrain -> stage 1 (task FFNs) -> stage 2 (TA-MoE 2x4, top-2 + 1 shared)"),
        # top_k=3 keeps the active FFNs per token at 3 (2 routed + 1 shared in the others).
        "utamoe_no_shared": Arm("utamoe", (f"{moe}.num_shared_experts=0", f"{moe}.top_k=3"),
                                "ablation", "no shared expert; top-3 in the group (same active params)"),
        "utamoe_no_group_loss": Arm("utamoe", (f"{moe}.group_loss_coef=0",), "ablation",
                                    "no group-supervision loss in stage 2"),
        "utamoe_oracle": Arm("utamoe", (f"{moe}.group_routing=oracle",), "ablation",
                             "the task label picks the group (train and eval)"),
        "utamoe_one_stage": Arm("utamoe", (_one_stage_stages(),), "ablation",
                                "no stage 1: pretrain -> TA-MoE upcycled from the dense FFN"),
        "utamoe_alpha_fixed": Arm("utamoe", (f"{moe}.alpha=fixed",), "ablation", "alpha fixed at 0.5"),
        "joint_dense_wide": Arm("joint_dense", (), "extra", "dense with 3x FFN width = the MoE "
                                "arms' active FFN params", default=False, ffn_mult=3),
        # The recipe's documented option: stage 2 trains everything (vision tower and attention
        # included) like joint_dense's second stage does, to separate "TA-MoE" from "LoRA".
        "utamoe_full_ft": Arm("utamoe", ("stages.2.lora=null", "stages.2.trainable=[]"), "extra",
                              "stage 2 fully fine-tuned (no LoRA, nothing frozen)", default=False),
    }


def arm_names() -> list[str]:
    # Names only: no recipe is read here, so --help stays fast (a test checks it matches).
    return ["und_only", "gen_only", "joint_dense", "joint_topk", "utamoe", "utamoe_no_shared",
            "utamoe_no_group_loss", "utamoe_oracle", "utamoe_one_stage", "utamoe_alpha_fixed",
            "joint_dense_wide", "utamoe_full_ft"]


# ---------------------------------------------------------------- scales


@dataclass(frozen=True)
class Scale:
    sizes: dict  # ShapesWorld samples per task and split
    step_factor: float  # every stage's steps (and the warmup) times this
    overrides: tuple[str, ...] = ()
    eval_batch: int = 32
    about: str = ""


TINY = ("tokenizers.image_train={steps: 10, batch_size: 8, restart_every: 5, hidden_channels: 32,"
        " latent_channels: 16, codebook_size: 32}",
        "tokenizers.image_train_renders=48", "tokenizers.text_vocab_size=300",
        "model.backbone.config.hidden_size=32", "model.backbone.config.intermediate_size=64",
        "model.backbone.config.num_hidden_layers=2", "model.backbone.config.num_attention_heads=4",
        "model.backbone.config.num_key_value_heads=4",
        "model.vision.config.hidden_size=32", "model.vision.config.intermediate_size=64",
        "model.vision.config.num_hidden_layers=1", "model.vision.config.patch_size=16",
        "model.code_embed_dim=8", "train.batch_size=4", "train.log_every=1", "train.ckpt_every=2")

# The demo's data (configs/demo.yaml): fresh scenes every batch and 3 extra questions per POPE /
# VQA image, which is what lets the base stage bind questions to images (issue 24).
DEMO_DATA = ("data.stream=true", "train.extra_questions=3")

SCALES = {
    "full": Scale({"train": 2000, "val": 50, "test": 200, "heldout": 200}, 1.0, DEMO_DATA,
                  about="the recipes' steps (1500 per arm), 200 test and 200 held-out samples "
                        "per task"),
    # 41 min for 10 arms x 3 seeds with --jobs 2 on 2 CPU cores (measured; experiments/README.md).
    "small": Scale({"train": 2000, "val": 50, "test": 200, "heldout": 100}, 0.14,
                   ("train.log_every=10", *DEMO_DATA),
                   about="0.14 x the recipes' steps (210 per arm), 200 test and 100 held-out "
                         "samples per task"),
    "tiny": Scale({"train": 6, "val": 2, "test": 2, "heldout": 2}, 0.004, TINY, eval_batch=8,
                  about="toy model and data for tests (seconds per arm)"),
}


def scaled_steps(cfg, factor: float) -> list[str]:
    """Overrides that scale every stage's steps and the warmup (totals stay equal across arms
    as long as factor x each stage's steps is a whole number; tests check the shipped arms)."""
    if factor == 1.0:
        return []
    out = [f"stages.{i}.steps={max(1, round(st.steps * factor))}" for i, st in enumerate(cfg.stages)]
    out.append(f"train.warmup_steps={max(1, round(cfg.train.warmup_steps * factor))}")
    out += [f"stages.{i}.warmup_steps={max(1, round(st.warmup_steps * factor))}"
            for i, st in enumerate(cfg.stages) if st.warmup_steps is not None]
    return out


# ---------------------------------------------------------------- arm x scale -> config


def load_arm_config(name: str, overrides: list[str]):
    """The arm's recipe with these overrides."""
    from utamoe.train.config import load_config

    return load_config(arm_table()[name].recipe, overrides)


def arm_overrides(name: str, scale: str) -> list[str]:
    """The arm's overrides plus the scale's (steps scaled), without paths or seed."""
    arm, sc = arm_table()[name], SCALES[scale]
    base = [*sc.overrides, *arm.overrides]
    if arm.ffn_mult != 1:
        width = load_arm_config(name, base).model.backbone.config["intermediate_size"]
        base.append(f"model.backbone.config.intermediate_size={width * arm.ffn_mult}")
    return base + scaled_steps(load_arm_config(name, base), sc.step_factor)


def trained_tasks(arm: str, scale: str) -> set[str]:
    """Tasks in the arm's data mixture: the only ones it is scored on (und_only is not asked
    to draw, gen_only not to answer)."""
    cfg = load_arm_config(arm, arm_overrides(arm, scale))
    return {t for st in cfg.stages for t, w in st.mixture.items() if w > 0}


# ---------------------------------------------------------------- where things live


@dataclass
class Layout:
    out: Path

    def data(self, seed: int) -> Path:
        return self.out / "data" / f"seed-{seed}"

    def tokenizers(self, seed: int) -> Path:
        return self.out / "tokenizers" / f"seed-{seed}"

    def run(self, arm: str, seed: int) -> Path:
        return self.out / "runs" / arm / f"seed-{seed}"


def run_overrides(lay: Layout, arm: str, seed: int, scale: str) -> list[str]:
    tok = lay.tokenizers(seed)
    return [*arm_overrides(arm, scale), f"data.dir={lay.data(seed)}", f"run.seed={seed}",
            f"run.out={lay.run(arm, seed)}", f"tokenizers.image={tok / 'image_tokenizer'}",
            f"tokenizers.text={tok / 'text_tokenizer'}"]


def train_command(lay: Layout, arm: str, seed: int, scale: str) -> str:
    sets = " ".join(f"--set {shlex.quote(o)}" for o in run_overrides(lay, arm, seed, scale))
    return f"utamoe train --config {arm_table()[arm].recipe} {sets} --out {lay.run(arm, seed)}"


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)  # atomic: a killed run never leaves half a file that looks complete


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def run_complete(lay: Layout, arm: str, seed: int) -> bool:
    d = lay.run(arm, seed)
    return (d / "train_done.json").is_file() and all((d / f"metrics-{s}.json").is_file() for s in SPLITS)
