"""Saving and loading a UnifiedModel as one self-describing directory.

    DIR/utamoe.json          format name/version, UnifiedConfig (HF part configs inlined),
                             the image tokenizer's kind
    DIR/model.safetensors    every weight except the image tokenizer's
    DIR/text_tokenizer/      the text tokenizer (save_pretrained)
    DIR/image_tokenizer/     the image tokenizer (its own save_pretrained)
    DIR/sentence_encoder/    MoME's frozen sentence encoder, when the model reads one

Saving writes a sibling temporary directory and renames it over DIR only when
everything is on disk, so an interrupted save never replaces a good model.
Loading rebuilds the architecture from the saved configs (never from the
original checkpoint paths) and loads the weights strictly. A model directory holds every part
it needs: a `utamoe.json` that names a path or a package anyway (a backbone, GGUF file,
vision tower, Janus or sentence-encoder path, a `pkg:` module) or an `auto_map` is refused
(`ModelDirError`), so a downloaded model cannot make a loader read another directory or
import a module; `follow_paths=True` is the explicit way to load such a directory once (e.g.
one saved before the sentence encoder was saved inside) and re-save it. Format versions:
1 kept the vision tower as `und_encoder.*` and its aligner as `und_aligner.*`;
2 (current) folds both into the understanding encoder (`und_encoder.tower.*`,
`und_encoder.aligner.*`; a MoVE mixture: `und_encoder.experts.N.*`). Version-1 directories load as they are (their weights are
renamed in memory); re-saving writes version 2. A newer version is refused.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from safetensors.torch import load_file, load_model, save_model

from utamoe.config import from_dict, to_dict
from utamoe.fsutil import atomic_directory, disk_errors, holds_format
from utamoe.hf.local import has_auto_map
from utamoe.hf.parts import HFPart
from utamoe.model.config import UnifiedConfig
from utamoe.model.unified import UnifiedModel
from utamoe.text.tokenizer import load_text_tokenizer
from utamoe.vision.encoders import get_encoder_kind
from utamoe.vision.tokenizer import VQTokenizer

FORMAT, VERSION = "utamoe-model", 2


class ModelDirError(OSError):
    """A model directory that is missing a file, damaged or from an unknown format version;
    the message names the file and says what to do."""


CONFIG_FILE, WEIGHTS_FILE = "utamoe.json", "model.safetensors"
SENTENCE_DIR = "sentence_encoder"  # UnifiedConfig.sentence_encoder of a saved model: inside it
RETIRED_KEYS = ("cfg_dropout",)  # in the config of directories saved before it moved to training


def _image_tokenizer_class(kind: str):
    if kind == "VQTokenizer":
        return VQTokenizer
    raise ModelDirError(f"unknown image tokenizer kind {kind!r} in {CONFIG_FILE}")


def _without_image_tokenizer(model: UnifiedModel) -> UnifiedModel:
    """A shallow view of `model` without its image tokenizer, which is saved on its own.

    `safetensors.torch.save_model` / `load_model` are used (not save_file) because they
    handle tied weights (e.g. lm_head tied to the embedding table)."""
    view = copy.copy(model)
    view._modules = {k: v for k, v in model._modules.items() if k != "image_tokenizer"}
    return view


def _frozen_parts(model: UnifiedModel) -> UnifiedConfig:
    """The config with each HF part inlined as its current config (no paths)."""
    cfg = copy.deepcopy(model.config)
    cfg.janus = None  # a saved model is its own checkpoint
    if cfg.sentence_encoder is not None:  # saved inside (save_model_dir), read from there
        cfg.sentence_encoder = SENTENCE_DIR if model.sentence_encoder is not None else None
    tied = model.lm_head.weight is model.lm.get_input_embeddings().weight
    cfg.backbone = HFPart(config={**model.lm.config.to_dict(), "tie_word_embeddings": tied})
    if cfg.move is not None:  # MoVE: each encoder as its kind saves it (HF: config inlined)
        for spec, expert in zip(cfg.move.encoders, model.und_encoder.experts):
            get_encoder_kind(spec.kind).saved(spec, expert)
    else:
        cfg.vision = HFPart(config=model.und_encoder.tower.config.to_dict())
    return cfg


def save_model_dir(model: UnifiedModel, out_dir: str | Path, text_tokenizer=None,
                   replace: bool = False, trained_tasks: list[str] | None = None) -> Path:
    """Write the model directory atomically; an existing `out_dir` is replaced only when it is a
    utamoe model directory or empty (else utamoe.fsutil.NotOurs), or with `replace`.
    `trained_tasks` (the tasks its training saw) is recorded, so that evaluation can say which
    scores measure nothing learned."""
    with disk_errors(out_dir, "the model"), \
            atomic_directory(out_dir, holds_format(CONFIG_FILE, FORMAT), "a utamoe model directory",
                             replace) as tmp:
        tok = model.image_tokenizer
        meta = {"format": FORMAT, "version": VERSION, "config": to_dict(_frozen_parts(model)),
                "image_tokenizer": type(tok).__name__ if tok is not None else None}
        if trained_tasks is not None:
            meta["trained_tasks"] = sorted(trained_tasks)
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        save_model(_without_image_tokenizer(model), str(tmp / WEIGHTS_FILE))
        if tok is not None:
            tok.save_pretrained(tmp / "image_tokenizer")
        if text_tokenizer is not None:
            text_tokenizer.save_pretrained(str(tmp / "text_tokenizer"))
        if model.sentence_encoder is not None:
            model.sentence_encoder.model.save_pretrained(tmp / SENTENCE_DIR)
            model.sentence_encoder.tokenizer.save_pretrained(str(tmp / SENTENCE_DIR))
    return Path(out_dir)


def read_config(model_dir: str | Path) -> tuple[UnifiedConfig, dict]:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ModelDirError(
            f"{model_dir} is not a utamoe model directory (no {CONFIG_FILE}); "
            f"give the directory that `utamoe train` or `utamoe demo` wrote (e.g. RUN/model)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, absurd nesting or numbers
        raise ModelDirError(f"{path}: not valid JSON ({type(err).__name__}: {str(err)[:200]}); "
                            "the model directory is damaged") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelDirError(f"{path}: format {got!r} is not {FORMAT!r}")
    version = meta.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise ModelDirError(f"{path}: format version {version!r} is not one this utamoe reads "
                            f"(1..{VERSION}); a newer version needs a newer utamoe")
    if not isinstance(meta.get("config"), dict):
        raise ModelDirError(f"{path}: no 'config' mapping; the model directory is damaged")
    # Keys a model's config no longer holds: cfg_dropout is training's (train.cfg_dropout).
    config = {k: v for k, v in meta["config"].items() if k not in RETIRED_KEYS}
    return from_dict(UnifiedConfig, config, str(path)), meta


def _named_paths(cfg: UnifiedConfig) -> list[str]:
    """The keys of a saved config that name a path, a file or a package to load from."""
    named = [f"{k}.{f}" for k in ("backbone", "vision") for f in ("path", "gguf_file")
             if getattr(getattr(cfg, k), f) is not None]
    named += [f"move.encoders.{i}.path" for i, e in enumerate(cfg.move.encoders if cfg.move else ())
              if getattr(e, "path", None) is not None]
    named += ["janus"] if cfg.janus is not None else []
    if cfg.sentence_encoder not in (None, SENTENCE_DIR):
        named.append("sentence_encoder")
    return named


def _self_contained(cfg: UnifiedConfig, meta: dict, model_dir: Path, follow_paths: bool) -> None:
    """Refuse a saved config that points outside the directory (see the module docstring);
    point the sentence encoder at the copy inside it."""
    path = model_dir / CONFIG_FILE
    if has_auto_map(meta["config"]):
        raise ModelDirError(f"{path}: the config has an `auto_map` (a request to run Python code); "
                            "utamoe never runs code named by a model directory")
    named = [] if follow_paths else _named_paths(cfg)
    if named:
        raise ModelDirError(
            f"{path} names {', '.join(f'{k}={_get(cfg, k)!r}' for k in named)}: a saved model "
            "holds all its parts, and loading never follows a path or imports a package that a "
            "model directory names. If you trust this directory, load it once with "
            "utamoe.model.io.load_model_dir(DIR, follow_paths=True) and save it again")
    if cfg.sentence_encoder == SENTENCE_DIR:
        inside = model_dir / SENTENCE_DIR
        if not (inside / "config.json").is_file():
            raise ModelDirError(f"{inside} is missing; the model directory is incomplete")
        cfg.sentence_encoder = str(inside.resolve())


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[int(part)] if part.isdigit() else getattr(cfg, part)
    return cfg


def load_model_dir(model_dir: str | Path, device: str = "cpu", follow_paths: bool = False):
    """(UnifiedModel, text tokenizer or None) from a directory written by `save_model_dir`;
    `follow_paths` (never the default) also loads one whose utamoe.json names paths."""
    model_dir = Path(model_dir)
    cfg, meta = read_config(model_dir)
    _self_contained(cfg, meta, model_dir, follow_paths)
    image_tok = None
    if meta.get("image_tokenizer"):
        image_tok = _image_tokenizer_class(meta["image_tokenizer"]).from_pretrained(
            model_dir / "image_tokenizer")
    model = UnifiedModel.build(cfg, image_tok)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelDirError(f"{weights} is missing; the model directory is incomplete")
    try:
        if meta["version"] == 1:
            _load_version_1(model, weights, device)
        else:
            load_model(_without_image_tokenizer(model), str(weights), strict=True, device=device)
    except ModelDirError:
        raise
    except Exception as err:  # safetensors' own errors (truncated, garbage) and shape mismatches
        raise ModelDirError(f"{weights}: cannot be loaded into the model {CONFIG_FILE} describes "
                            f"({type(err).__name__}: {str(err)[:300]}); the directory is damaged "
                            "or its files come from different models") from err
    text_dir = model_dir / "text_tokenizer"
    try:
        text_tok = load_text_tokenizer(text_dir, add_tasks=False) if text_dir.is_dir() else None
    except Exception as err:  # tokenizers raise many types on a damaged file
        raise ModelDirError(f"{text_dir}: the text tokenizer cannot be loaded ({type(err).__name__}: "
                            f"{str(err)[:200]}); the model directory is damaged") from err
    return model.to(device).eval(), text_tok


# Version 1 -> 2: the understanding encoder became one module; a LoRA expert bank owns its base.
V1_RENAMES = ((re.compile(r"^und_aligner\."), "und_encoder.aligner."),
              (re.compile(r"^und_encoder\."), "und_encoder.tower."),
              (re.compile(r"\.mlp\.base\."), ".mlp.experts.base."))


def current_name(key: str) -> str:
    """A parameter name (or a glob of them) of model format 1 in the current layout."""
    for old, new in V1_RENAMES:
        key, n = old.subn(new, key)
        if n and old.pattern.startswith("^"):
            break
    return key


def _load_version_1(model: UnifiedModel, weights: Path, device: str) -> None:
    """Weights of a version-1 directory, renamed to the current module layout."""
    renamed = {current_name(key): value for key, value in load_file(str(weights), device=device).items()}
    view = _without_image_tokenizer(model)
    missing, unexpected = view.load_state_dict(renamed, strict=False)
    tied = {"lm_head.weight"} if model.lm_head.weight is model.lm.get_input_embeddings().weight else set()
    if unexpected or set(missing) - tied:
        raise ModelDirError(f"{weights}: version-1 weights do not match the model (missing "
                         f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}); "
                         "the model directory is damaged")
