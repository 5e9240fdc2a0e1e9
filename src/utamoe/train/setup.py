"""Everything a run needs before its first step: data, tokenizers, model, encoded data.

Tokenizers are trained once per run (by the main process) and saved in the run
directory, so a resumed run or another process loads them instead of training
again. The model config is completed from them (vocabulary, codebook, code grid)
and the model is built with the run's seed on every process alike. The image size
is the model's (`model.image_size`): the VQ codec is trained at it (on ShapesWorld
renders for ShapesWorld data, else on the dataset's own images, resized), and a
given codec must match it. A benchmark's data (utamoe.benchmarks) may bring its own codec
renders and reconstruction check.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from utamoe.benchmarks import BenchmarkData, benchmarks
from utamoe.config import ConfigError
from utamoe.data.formats import find_benchmark, load_split, too_long
from utamoe.fsutil import atomic_directory, holds_format
from utamoe.hf.gguf import gguf_path
from utamoe.model.janus import janus_config_from_dir, load_janus
from utamoe.model.unified import UnifiedModel
from utamoe.tasks import get_task, task_names
from utamoe.tasks_exec import registered_tags
from utamoe.text.span_tokens import add_span_tokens, has_span_tokens, strip_span_tokens
from utamoe.text.tokenizer import SpecialIds, load_text_tokenizer, train_text_tokenizer
from utamoe.train.codec import split_images, train_tokenizer
from utamoe.train.config import ExperimentConfig
from utamoe.train.data import TrainData
from utamoe.train.progress import bar
from utamoe.train.stages import preflight
from utamoe.vision.tokenizer import TokenizerConfig, VQTokenizer


@dataclass
class RunParts:
    model: UnifiedModel
    text_tokenizer: object
    data: TrainData
    skipped: int


def load_samples(cfg: ExperimentConfig, log=print):
    root = Path(cfg.data.dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data.dir {root} does not exist (make one with `utamoe data shapes "
                                f"--out DIR` or point it at a dataset in the utamoe format)")
    samples, report = load_split(root / f"{cfg.data.train_split}.jsonl", on_error=cfg.data.on_error,
                                 max_pixels=cfg.data.max_image_pixels)
    if report.skipped:
        log(f"[data] {report.summary()}")
    check_mixtures(cfg, {s.task for s in samples}, root / f"{cfg.data.train_split}.jsonl", log)
    wanted = {t for st in cfg.stages for t, w in st.mixture.items() if w > 0}
    samples = [s for s in samples if s.task in wanted]
    if cfg.data.max_samples_per_task > 0:
        kept, count = [], {}
        for s in samples:
            count[s.task] = count.get(s.task, 0) + 1
            if count[s.task] <= cfg.data.max_samples_per_task:
                kept.append(s)
        samples = kept
    return samples, report.skipped


def check_mixtures(cfg: ExperimentConfig, present: set[str], split: Path, log=print) -> None:
    """Every stage must find data for its mixture before the run starts: a stage whose tasks
    are all absent is a config error; tasks partly absent are named in the log."""
    if not present:
        raise ConfigError(f"{split} has no samples (an empty or blank-only split); add records "
                          "or point data.dir / data.train_split elsewhere")
    for i, st in enumerate(cfg.stages):
        wanted = sorted(t for t, w in st.mixture.items() if w > 0)
        missing = [t for t in wanted if t not in present]
        if missing == wanted:
            raise ConfigError(f"stages.{i} ({st.name}).mixture asks for {wanted} but {split} has "
                              f"none of them (it has {sorted(present)}); change the mixture")
        if missing:
            log(f"[data] stages.{i} ({st.name}): no samples of {missing} in {split}; the stage "
                f"trains on {sorted(set(wanted) - set(missing))} only")


def _once(acc, path: Path, make, load):
    """Create an artefact on the main process (unless it exists), then load it everywhere."""
    if acc.is_main_process and not path.exists():
        make(path)
    acc.wait_for_everyone()
    return load(path)


def marker_tasks(samples) -> list[str]:
    """The tasks a run's text tokenizer gets markers for: every task that is not opt-in, and
    the opt-in ones (UnifiedMLLM's) that the training samples hold."""
    present = {s.task for s in samples}
    return [t for t in task_names() if not get_task(t).opt_in or t in present]


def sample_texts(samples) -> list[str]:
    """Every text of the samples: prompts and targets, and each turn of a conversation."""
    out = []
    for s in samples:
        out += [t for t in (s.prompt, s.target) if t]
        out += [turn.text for turn in (s.turns or ()) if turn.text]
    return out


def text_tokenizer_for(cfg: ExperimentConfig, samples, run_dir: Path, acc):
    """The run's text tokenizer. Data whose answers hold task spans (UnifiedMLLM) adds the task
    and grounding tokens as never-split tokens (utamoe.text.span_tokens)."""
    tasks, span_tasks = marker_tasks(samples), registered_tags()
    texts = sample_texts(samples)
    spans = has_span_tokens(texts, span_tasks)
    if cfg.tokenizers.text:
        tok = load_text_tokenizer(cfg.tokenizers.text, tasks=tasks)
        if spans:
            add_span_tokens(tok, span_tasks)
        return tok

    def make(path: Path) -> None:
        corpus = [strip_span_tokens(t, span_tasks) for t in texts] if spans else texts
        tok = train_text_tokenizer(corpus, cfg.tokenizers.text_vocab_size, tasks)
        if spans:
            add_span_tokens(tok, span_tasks)
        own = holds_format("tokenizer_config.json")
        # a kill mid-save leaves no half tokenizer
        with atomic_directory(path, own, "a text tokenizer directory") as tmp:
            tok.save_pretrained(str(tmp))

    # The run's own tokenizer is loaded as saved: nothing may add a token the model lacks.
    return _once(acc, run_dir / "text_tokenizer", make,
                 lambda p: load_text_tokenizer(p, add_tasks=False))


def benchmark_with(data_dir, hooks: dict[str, str]) -> BenchmarkData:
    """The benchmark of the data in `data_dir` when it offers every hook the config asks for
    (hook -> the config key that asks), else a ConfigError naming the key."""
    bench = find_benchmark(data_dir)
    missing = [key for hook, key in hooks.items() if bench is None or not bench.offers(hook)]
    if missing:
        able = [b.name for b in benchmarks() if all(getattr(b, h) is not None for h in hooks)]
        have = f"it is {bench.name}'s data" if bench is not None else "its manifest names no benchmark"
        raise ConfigError(f"{' and '.join(missing)} need the data of a benchmark that offers them "
                          f"({', '.join(able) or 'none is registered'}); {data_dir}: {have}")
    return bench


def image_tokenizer_for(cfg: ExperimentConfig, run_dir: Path, acc, progress: bool, log=print):
    size = cfg.model.image_size
    if cfg.tokenizers.image:
        tok = VQTokenizer.from_pretrained(cfg.tokenizers.image)
        if tok.config.image_size != size:
            raise ConfigError(f"tokenizers.image ({cfg.tokenizers.image}) codes "
                              f"{tok.config.image_size}x{tok.config.image_size} images but "
                              f"model.image_size is {size}; set model.image_size="
                              f"{tok.config.image_size} or train a codec at {size}")
        return tok
    given = cfg.tokenizers.image_train.get("image_size")
    if given is not None and given != size:
        raise ConfigError(f"tokenizers.image_train.image_size is {given} but model.image_size is "
                          f"{size}; drop the tokenizer one (the model's is used)")

    def make(path: Path) -> None:
        tcfg = TokenizerConfig.from_dict({**cfg.tokenizers.image_train, "image_size": size})
        bench = find_benchmark(cfg.data.dir)
        agreement = bench.codec_agreement() if bench and bench.offers("codec_agreement") else None
        n_renders = cfg.tokenizers.image_train_renders
        if n_renders <= 0 or bench is None or not bench.offers("codec_images"):
            if n_renders > 0:
                log(f"[tokenizer] {cfg.data.dir} is no benchmark's data with codec renders: "
                    f"training the VQ codec on the dataset's own train images (resized to "
                    f"{size}x{size}), not on renders")
            train_tokenizer(cfg.data.dir, tcfg, out_dir=path, seed=cfg.run.seed, progress=progress,
                            agreement=agreement)
            return
        train_tokenizer(bench.codec_images(n_renders, seed=cfg.run.seed + 1), tcfg, out_dir=path,
                        seed=cfg.run.seed, progress=progress, agreement=agreement,
                        eval_images=split_images(cfg.data.dir, "test") or None)

    return _once(acc, run_dir / "image_tokenizer", make, VQTokenizer.from_pretrained)


def janus_model_for(cfg: ExperimentConfig, text_tok) -> UnifiedModel:
    """The run's model from a local Janus / Janus-Pro directory (`model.janus`): its own VQ
    codec and text tokenizer (`tokenizers.text`, with utamoe's special tokens added; the
    vocabulary grows to them). Every process loads the weights from the directory itself.
    The recipe's stages are tried first on the meta device, from config.json alone."""
    m = cfg.model
    if cfg.tokenizers.image:
        raise ConfigError("tokenizers.image: a Janus model brings its own VQ codec (model.janus); "
                          "drop tokenizers.image")
    if not cfg.tokenizers.text:
        raise ConfigError(f"tokenizers.text: set it to the Janus directory ({m.janus}) so that "
                          "the model keeps its own text tokenizer")
    if m.move is not None or m.mole is not None or m.moe is not None:
        raise ConfigError("model.janus: MoVE, MoLE and a model-level moe are not combined with a "
                          "Janus checkpoint here; upcycle it in a stage (stages.N.moe)")
    und_slot = SpecialIds.of(text_tok).und_slot
    ghost = janus_config_from_dir(m.janus)
    preflight(dataclasses.replace(ghost, vocab_size=max(len(text_tok), ghost.vocab_size),
                                  und_slot_id=und_slot), cfg.stages)
    model = load_janus(m.janus, vocab_size=len(text_tok))
    model.config.und_slot_id = und_slot
    return model


def fitting(samples, encoder, model: UnifiedModel, on_error: str, log=print):
    """(the samples whose training sequence fits the model's positions, how many did not): one
    that does not is a DataFormatError naming its record (`data.on_error: raise`), or is skipped
    and counted (`skip`), never trained on past the positions."""
    limit = getattr(model.lm.config, "max_position_embeddings", None)
    if not limit:
        return samples, 0
    kept, errors = [], []
    for sample, n in zip(samples, encoder.lengths(samples, model.config.code_grid ** 2)):
        if n <= limit:
            kept.append(sample)
            continue
        err = too_long(sample, n, limit)
        if on_error == "raise":
            raise err
        errors.append(err)
    if errors:
        log(f"[data] {len(errors)} sample(s) longer than the model's {limit} positions skipped; "
            f"first: {errors[0]}")
    return kept, len(errors)


def check_recipe_files(cfg: ExperimentConfig) -> None:
    """Every path and file the recipe names, read before the first long step (loading the data,
    training tokenizers: minutes): a broken backbone, encoder or tokenizer path is reported
    now. The model is tried on the meta device with stand-in tokenizer sizes (only configs and
    GGUF headers are read); `prepare_run` tries it again with the real ones."""
    t, m = cfg.tokenizers, cfg.model
    if t.image and not Path(t.image).is_dir():
        raise ConfigError(f"tokenizers.image {t.image}: no such directory (a saved VQ tokenizer, "
                          "e.g. RUN/image_tokenizer); or leave it out to train one")
    if t.text and t.text.endswith(".gguf"):
        folder, _, name = t.text.rpartition("/")
        gguf_path(folder or ".", name, "tokenizers.text")
    elif t.text and not Path(t.text).is_dir():
        raise ConfigError(f"tokenizers.text {t.text}: no such directory (a tokenizer directory or "
                          "DIR/NAME.gguf); or leave it out to train one")
    if m.janus is not None:
        janus_config_from_dir(m.janus)
        return
    stand_in = dataclasses.replace(m, vocab_size=max(t.text_vocab_size, 64), num_codes=16,
                                   code_grid=4, und_slot_id=0)
    preflight(stand_in, cfg.stages)


def prepare_run(cfg: ExperimentConfig, run_dir: Path, acc, progress: bool = True) -> RunParts:
    check_recipe_files(cfg)
    samples, skipped = load_samples(cfg)
    text_tok = text_tokenizer_for(cfg, samples, run_dir, acc)
    if cfg.model.janus is not None:
        model = janus_model_for(cfg, text_tok)
        image_tok = model.image_tokenizer
    else:
        image_tok = image_tokenizer_for(cfg, run_dir, acc, progress,
                                        log=print if acc.is_main_process else (lambda *a: None))
        model_cfg = dataclasses.replace(
            cfg.model, vocab_size=len(text_tok), num_codes=image_tok.num_codes,
            code_grid=image_tok.grid_size, und_slot_id=SpecialIds.of(text_tok).und_slot)
        preflight(model_cfg, cfg.stages)
        model = UnifiedModel.build(model_cfg, image_tok)
    encoder = model.sequence_encoder(text_tok)
    samples, too_long = fitting(samples, encoder, model, cfg.data.on_error,
                                log=print if acc.is_main_process else (lambda *a: None))
    data = TrainData(samples, encoder, cfg.run.seed, acc.process_index)
    todo = len(data.code_images())
    with bar(unit="img", enabled=progress) as progress_bar:
        job = progress_bar.add_task("encoding images to VQ codes", total=todo)
        data.precompute_codes(image_tok, progress=lambda n: progress_bar.advance(job, n))
    return RunParts(model, text_tok, data, skipped + too_long)
