"""The training config: what to train, on what data, in which stages (YAML, validated).

    run:    out dir, seed
    data:   dataset dir (our JSONL+PNG format), error policy, which splits
    tokenizers: image tokenizer (a saved dir, or train one here) and text tokenizer
    model:  UnifiedConfig (backbone, vision, moe, ...)
    train:  optimiser, precision, batch, logging and checkpoint cadence (defaults for stages)
    stages: the recipe: a list of stages run in order

Every key is checked on load: unknown keys, wrong types and impossible values are
errors naming the key (`stages[1].lora.rank must be >= 1`). `--set a.b=c`
overrides use the same dotted paths (`--set train.lr=3e-4`,
`--set stages.1.steps=200`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from utamoe.config import ConfigError, from_dict, to_dict
from utamoe.model.config import UnifiedConfig
from utamoe.moe import MoEConfig
from utamoe.tasks import default_tasks, group_index, group_of, is_task, task_names

SURGERIES = ("split_ffn", "upcycle")


@dataclass
class RunConfig:
    out: str = "runs/utamoe"
    seed: int = 0


@dataclass
class DataConfig:
    dir: str = ""
    train_split: str = "train"
    on_error: Literal["raise", "skip"] = "raise"
    # Records with an image over this many pixels are errors (on_error decides what follows).
    max_image_pixels: int = 64_000_000
    # Drop samples whose task is not in any stage's mixture (saves tokenizing them).
    max_samples_per_task: int = 0  # 0 = all
    # A benchmark's data that offers it (ShapesWorld): draw every training sample fresh from
    # its generator (same config and split distribution as data.dir's train split) instead of
    # cycling the stored samples; a batch is still a pure function of its position (issue 12).
    stream: bool = False
    # Where the training split lives during the run (utamoe.train.data): "memory" (every sample
    # and processed image held, as ShapesWorld always was), "disk" (an index of the split file;
    # records read, images decoded and VQ codes taken from a file computed once, when a batch
    # needs them: memory does not grow with the dataset), "auto": memory for a benchmark's
    # generated data (its manifest names a generator), disk for anything else.
    loading: Literal["auto", "memory", "disk"] = "auto"
    # Processes that compute the next batches ahead of the training loop (torch.utils.data);
    # 0: the loop computes each batch itself. The batches are the same either way.
    workers: int = 0


@dataclass
class TokenizersConfig:
    image: str | None = None  # a saved image tokenizer dir; None = train one (image_train)
    image_train: dict[str, Any] = field(default_factory=dict)  # TokenizerConfig overrides
    # 0: train the image tokenizer on the train split's images. N > 0 (a benchmark's data with
    # codec renders, utamoe.benchmarks; ShapesWorld):
    # on N fresh renders covering every colour-shape pair, so that the codec can draw the
    # held-out pairs (it never sees them in any task; docs/tokenizer.md).
    image_train_renders: int = 0
    text: str | None = None  # a saved/HF text tokenizer dir; None = train BPE on the data
    text_vocab_size: int = 512


@dataclass
class TrainConfig:
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    # "adamw", or "muon": the hidden matrices (2-D weights, and expert banks per expert) on Muon,
    # embeddings, heads, routers, norms and biases on AdamW (utamoe.train.optim).
    optimizer: Literal["adamw", "muon"] = "adamw"
    muon_lr: float = 0.0  # Muon's base rate (AdamW-matched RMS); 0 = the stage's learning rate
    muon_momentum: float = 0.95
    # "cosine" (warmup, cosine decay to min_lr_ratio) or "wsd" (warmup, constant, then a
    # (1 - sqrt) cooldown over the last `decay_frac` of each stage's steps).
    schedule: Literal["cosine", "wsd"] = "cosine"
    decay_frac: float = 0.2
    clip_grad: float = 1.0
    # Probability that a generation sample's prompt is replaced by <null> tokens, so the same
    # model also predicts unconditionally (classifier-free guidance at inference).
    cfg_dropout: float = 0.1
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    log_every: int = 10
    # Where the logged metrics go besides RUN/metrics.jsonl: any of "tensorboard", "wandb"
    # (utamoe.train.reporters); a named one that is not installed stops the run at its start.
    report_to: list[str] = field(default_factory=list)
    wandb_project: str = "utamoe"
    ckpt_every: int = 200
    max_bad_steps: int = 5  # consecutive non-finite losses before the run stops
    collapse_share: float = 0.9  # warn when one expert serves this share of its group's tokens
    collapse_patience: int = 5  # ... for this many logged steps in a row
    # Levers for learning question-image binding from scratch (utamoe.train.levers, issue 12).
    # Understanding tasks whose prompt words get a language-model loss too (e.g. [pope, vqa]).
    prompt_loss_tasks: list[str] = field(default_factory=list)
    qk_init_std: float = 0.0  # > 0: re-draw the backbone's q/k projections from N(0, std^2)
    # > 0: start QK-norm weights at sqrt(gain): attention logits `gain` x sharper (a learned
    # temperature; backbones with q_norm/k_norm such as qwen3).
    qk_norm_gain: float = 0.0
    attn_lr_mult: float = 1.0  # learning-rate multiplier of the backbone's q/k projections
    # A benchmark's data that offers it (ShapesWorld): k extra questions about the same image
    # after each answer (utamoe.train.data): k + 1 answers per image encoding.
    extra_questions: int = 0
    # Weights of the benchmark's question kinds for those extra questions (empty: its own mix;
    # ShapesWorld: pope and the VQA types, e.g. {relation: 3, count: 3}; a kind left out is
    # not asked).
    extra_question_kinds: dict[str, float] = field(default_factory=dict)
    # A benchmark's data that offers it (ShapesWorld): the share of its POPE / VQA training
    # samples shown as text-only questions, the scene described before the question and the
    # image blank (a first step for the lookup circuit, learnt on words).
    text_scene_questions: float = 0.0
    # One forward/backward per task group of each micro-batch, each cut to its own longest
    # sequence: und rows stop paying for the gen rows' padding (utamoe.train.levers.split_by_group).
    split_groups: bool = False
    # Sequence packing (utamoe.data.packing): each micro-batch's samples laid end to end in
    # rows of at most `pack_tokens` tokens, each sample attending only to itself; the same
    # samples and losses as padded batches, without computing the padding. 0: one row per
    # micro-batch (FlashAttention's variable-length kernels). Off here; the shipped recipes
    # (configs/base.yaml) turn it on, where it measured faster.
    pack: bool = False
    pack_tokens: int = 256
    # Recompute the backbone's decoder-layer activations in backward (less memory, about a
    # third more compute; utamoe.train.engines).
    activation_checkpointing: bool = False


@dataclass
class LoraStageConfig:
    rank: int = 16
    alpha: float = 32.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    dropout: float = 0.0


@dataclass
class StageConfig:
    name: str = "stage"
    steps: int = 100
    # Task -> weight of the data mixture (tasks absent here are not sampled).
    # Default: every registered task but the opt-in ones (UnifiedMLLM's: name them).
    mixture: dict[str, float] = field(default_factory=lambda: {t: 1.0 for t in default_tasks()})
    # Model surgery at the start of the stage: "split_ffn" (one FFN copy per task group,
    # oracle-routed) or "upcycle" (FFNs -> TA-MoE; from split FFNs when present).
    surgery: list[str] = field(default_factory=list)
    moe: MoEConfig | None = None  # the TA-MoE / top-k config used by "upcycle"
    # Trainable parameters: globs over names; empty = everything; `frozen` wins over it.
    trainable: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    lora: LoraStageConfig | None = None  # LoRA (PEFT) on these modules, merged at stage end
    lr: float | None = None  # None = train.lr
    warmup_steps: int | None = None
    optimizer: Literal["adamw", "muon"] | None = None  # None = train.optimizer


@dataclass
class ExperimentConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizers: TokenizersConfig = field(default_factory=TokenizersConfig)
    model: UnifiedConfig = field(default_factory=UnifiedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])

    def validate(self) -> ExperimentConfig:
        t = self.train
        for key in ("batch_size", "grad_accum", "log_every", "ckpt_every", "max_bad_steps"):
            if getattr(t, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(t, key)}")
        if not (math.isfinite(t.lr) and t.lr > 0) or not 0 <= t.min_lr_ratio <= 1:
            raise ConfigError(f"train.lr must be a finite number > 0 (got {t.lr}) and "
                              f"train.min_lr_ratio in [0, 1] (got {t.min_lr_ratio})")
        if not (0 < t.decay_frac <= 1 and 0 <= t.muon_momentum < 1 and t.muon_lr >= 0):
            raise ConfigError(f"train.decay_frac must be in (0, 1] (got {t.decay_frac}), "
                              f"train.muon_momentum in [0, 1) (got {t.muon_momentum}) and "
                              f"train.muon_lr >= 0 (got {t.muon_lr}; 0 = the stage's rate)")
        if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), e.g. [0.9, 0.95]; got "
                              f"{list(t.betas)}")
        for key in ("weight_decay", "warmup_steps", "clip_grad"):
            value = getattr(t, key)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"train.{key} must be >= 0, got {value}")
        if self.run.seed < 0:
            raise ConfigError(f"run.seed must be >= 0, got {self.run.seed}")
        if self.data.workers < 0:
            raise ConfigError(f"data.workers must be >= 0 (0: no worker processes), got "
                              f"{self.data.workers}")
        if self.data.max_image_pixels < 1:
            raise ConfigError(f"data.max_image_pixels must be >= 1, got {self.data.max_image_pixels}")
        _check_backbone(self.model.backbone, "model.backbone")
        _check_backbone(self.model.vision, "model.vision")
        if not self.stages:
            raise ConfigError("stages: the recipe needs at least one stage")
        bad = [k for k in t.prompt_loss_tasks if not is_task(k) or group_of(k) != "und"]
        if bad:
            raise ConfigError(f"train.prompt_loss_tasks: {bad} are not understanding tasks")
        if t.pack_tokens < 0:
            raise ConfigError(f"train.pack_tokens must be >= 0 (0 = one row per micro-batch), got "
                              f"{t.pack_tokens}")
        if t.pack and t.split_groups:
            raise ConfigError("train.pack and train.split_groups both remove padding; choose one "
                              "(pack also removes it inside each group; the shipped recipes pack: "
                              "add --set train.pack=false to use split_groups)")
        if not 0.0 <= t.cfg_dropout < 1.0:
            raise ConfigError(f"train.cfg_dropout must be in [0, 1), got {t.cfg_dropout}")
        if t.qk_init_std < 0 or t.attn_lr_mult <= 0 or t.extra_questions < 0 or t.qk_norm_gain < 0:
            raise ConfigError("train.qk_init_std, train.qk_norm_gain and train.extra_questions must be "
                              ">= 0, train.attn_lr_mult > 0")
        if t.extra_question_kinds and t.extra_questions == 0:
            raise ConfigError("train.extra_question_kinds weighs the extra questions, but "
                              "train.extra_questions is 0: set it to how many to add per image")
        if not 0.0 <= t.text_scene_questions <= 1.0:
            raise ConfigError(f"train.text_scene_questions is a share of the question samples, "
                              f"in [0, 1]; got {t.text_scene_questions}")
        if any(not isinstance(w, (int, float)) or w < 0 for w in t.extra_question_kinds.values()):
            raise ConfigError(f"train.extra_question_kinds: weights must be numbers >= 0, got "
                              f"{dict(t.extra_question_kinds)}")
        for i, st in enumerate(self.stages):
            where = f"stages[{i}] ({st.name})"
            if st.steps < 1:
                raise ConfigError(f"{where}.steps must be >= 1, got {st.steps}")
            if st.lr is not None and not (math.isfinite(st.lr) and st.lr > 0):
                raise ConfigError(f"{where}.lr must be a finite number > 0, got {st.lr} (leave it "
                                  "out to use train.lr)")
            if st.warmup_steps is not None and st.warmup_steps < 0:
                raise ConfigError(f"{where}.warmup_steps must be >= 0, got {st.warmup_steps}")
            bad = [k for k in st.mixture if not is_task(k)]
            if bad:
                raise ConfigError(f"{where}.mixture: unknown tasks {bad}; known: "
                                  f"{', '.join(task_names())} (register your own with "
                                  "utamoe.tasks.register_task)")
            if st.moe is not None and st.moe.routing == "task_aware":
                group_index(st.moe.group_names, f"stages.{i}.moe.group_names")
            if not any(w > 0 for w in st.mixture.values()) or any(w < 0 for w in st.mixture.values()):
                raise ConfigError(f"{where}.mixture: weights must be >= 0 with at least one > 0")
            unknown = [s for s in st.surgery if s not in SURGERIES]
            if unknown:
                raise ConfigError(f"{where}.surgery: unknown {unknown}; known: {', '.join(SURGERIES)}")
            if "upcycle" in st.surgery and st.moe is None and self.model.moe is None:
                raise ConfigError(f"{where}: surgery 'upcycle' needs stages[{i}].moe (a MoE config)")
            if st.lora is not None and st.lora.rank < 1:
                raise ConfigError(f"{where}.lora.rank must be >= 1, got {st.lora.rank}")
        return self


def _check_backbone(part, where: str) -> None:
    """A Hugging Face part built from a config: a known model_type and consistent sizes."""
    if part.path is not None or not part.config:
        return
    from transformers import CONFIG_MAPPING

    kind = part.config.get("model_type")
    if kind not in CONFIG_MAPPING and kind != "janus_vision_model":
        raise ConfigError(f"{where}.config.model_type {kind!r} is not a Hugging Face model type "
                          "(e.g. llama, qwen3, gemma3_text, siglip_vision_model)")
    hidden, heads = part.config.get("hidden_size"), part.config.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and (heads < 1 or hidden % heads):
        raise ConfigError(f"{where}.config: hidden_size {hidden} is not divisible by "
                          f"num_attention_heads {heads}")
    kv = part.config.get("num_key_value_heads")
    if isinstance(kv, int) and isinstance(heads, int) and (kv < 1 or heads % kv):
        raise ConfigError(f"{where}.config: num_attention_heads {heads} is not a multiple of "
                          f"num_key_value_heads {kv}")


def _stage_list(data: dict) -> dict:
    stages = data.get("stages")
    if stages is not None and not isinstance(stages, list):
        raise ConfigError("stages must be a list of stage mappings")
    return data


# Keys that moved or were renamed, still read from older configs (a resumed run's config.yaml):
# (old section, old key) -> (new section, new key).
MOVED_KEYS = {("model", "cfg_dropout"): ("train", "cfg_dropout"),
              ("train", "pack_questions"): ("train", "extra_questions")}


def _moved_keys(data: dict, where: str) -> dict:
    """`data` with the keys of MOVED_KEYS at their new places (an error if both are given)."""
    for (sec, key), (new_sec, new_key) in MOVED_KEYS.items():
        section = data.get(sec)
        if not isinstance(section, dict) or key not in section:
            continue
        section = dict(section)
        value = section.pop(key)
        target = dict(data.get(new_sec) or {}) if new_sec != sec else section
        if new_key in target and target[new_key] != value:
            raise ConfigError(f"{where}: {sec}.{key} is the old name of {new_sec}.{new_key}; "
                              "give only the new one")
        target[new_key] = value
        data = {**data, sec: section, new_sec: target} if new_sec != sec else {**data, sec: target}
    return data


def build_config(data: dict, where: str = "config") -> ExperimentConfig:
    data = _moved_keys(_stage_list(dict(data)), where)
    if "stages" in data and not isinstance(data["stages"], list):
        raise ConfigError(f"{where}: stages must be a list of stages, got {data['stages']!r}")
    stages = data.pop("stages", None)
    try:
        cfg = from_dict(ExperimentConfig, data)
    except ConfigError as err:  # "recipe.yaml: config key 'train.lr' ...", not "recipe.yaml.train.lr"
        raise ConfigError(f"{where}: {err}") from None
    if stages is not None:
        cfg.stages = [from_dict(StageConfig, s, f"{where}: stages[{i}]") for i, s in enumerate(stages)]
    return cfg.validate()


def _parse_value(text: str, key: str = "") -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}={text}: the value is not valid YAML ({str(err).splitlines()[0]}); "
                          "quote strings and close brackets, e.g. --set 'train={lr: 1e-3}'") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=c` overrides on the raw mapping (list items by index: stages.1.steps=5)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE with a dotted key, got {item!r}")
        node: Any = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: depth + 1]))
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, key)] = _parse_value(raw, key)
        else:
            node[last] = _parse_value(raw, key)
    return data


def _index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {key}: '{part}' is not an index of a list of {len(node)}")
    return int(part)


def _child(node: Any, part: str, key: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, key)]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {key}: cannot descend into a {type(node).__name__}")
    return node.setdefault(part, {})


RECIPES = Path(__file__).resolve().parent.parent / "configs"


def recipe_path(name: str) -> Path:
    """A config file path, or the name of a recipe shipped with utamoe (`utamoe`, `joint_dense`)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = RECIPES / (name if name.endswith(".yaml") else f"{name}.yaml")
    if packaged.is_file():
        return packaged
    known = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    raise ConfigError(f"config file {name} does not exist and is not a shipped recipe "
                      f"({', '.join(known)})")


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path, seen: tuple = ()) -> dict:
    """A YAML mapping; `extends: other.yaml` (relative to this file) is merged under it."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `extends` loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({_where(err)}); a recipe is a YAML mapping of "
                          "sections (see configs/)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or Path(base).suffix not in (".yaml", ".yml"):
        raise ConfigError(f"{path}: `extends` must name a .yaml recipe file, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"{path}: extends {base}, but {base_path} does not exist")
    return _deep_merge(read_yaml(base_path, (*seen, path.resolve())), data)


def _where(err: Exception) -> str:
    """Where a YAML file is broken and how, without quoting it: the file may not be a recipe at
    all (an `extends` pointing at a private file must not print its lines)."""
    mark = getattr(err, "problem_mark", None)
    at = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unreadable"
    problem = getattr(err, "problem", None) or type(err).__name__
    return f"{problem} at {at}"


def load_config(path: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a config file or shipped recipe, apply `--set` overrides, validate."""
    file = recipe_path(path)
    return build_config(apply_overrides(read_yaml(file), overrides or []), str(file))


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
