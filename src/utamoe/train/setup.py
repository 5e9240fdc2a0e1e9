"""Everything a run needs before its first step: data, tokenizers, model, encoded data.

Tokenizers are trained once per run (by the main process) and saved in the run
directory, so a resumed run or another process loads them instead of training
again. The model config is completed from them (vocabulary, codebook, code grid)
and the model is built with the run's seed on every process alike. The image size
is the model's (`model.image_size`): the VQ codec is trained at it (on ShapesWorld
renders for ShapesWorld data, else on the dataset's own images, resized), and a
given codec must match it. A benchmark's data (utamoe.benchmarks) may bring its own codec
renders and reconstruction check.

A split read from disk (`data.loading`, utamoe.train.data) is indexed once (the index saved in
`<run>/data_cache/`, so a resumed run skips the pass), its texts stream into the text
tokenizer's trainer, its images into the codec's, and the VQ codes of its generation images
are computed once into a file there (utamoe.train.code_cache); nothing holds the split.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utamoe.benchmarks import BenchmarkData, benchmarks
from utamoe.config import ConfigError
from utamoe.data.formats import DataFormatError, find_benchmark, load_split, overlong
from utamoe.data.ondisk import DiskSplit, SplitIndex, build_index, fingerprint, overlong_records
from utamoe.fsutil import atomic_directory, holds_format
from utamoe.hf.gguf import gguf_path
from utamoe.model.janus import janus_config_from_dir, load_janus
from utamoe.model.unified import UnifiedModel
from utamoe.tasks import get_task, task_names
from utamoe.tasks_exec import registered_tags
from utamoe.text.span_tokens import add_span_tokens, has_span_tokens, strip_span_tokens
from utamoe.text.tokenizer import SpecialIds, load_text_tokenizer, train_text_tokenizer
from utamoe.train.code_cache import CodeCache, code_items
from utamoe.train.codec import DiskImages, split_images, train_tokenizer
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


def _data_dir(cfg: ExperimentConfig) -> Path:
    root = Path(cfg.data.dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data.dir {root} does not exist (make one with `utamoe data shapes "
                                f"--out DIR` or `utamoe data import`, or point it at a dataset in "
                                f"the utamoe format)")
    return root


def on_disk(cfg: ExperimentConfig) -> bool:
    """Whether the run reads its training split from disk (`data.loading`; "auto": a benchmark's
    generated data is held in memory, anything else is read from disk)."""
    if cfg.data.loading != "auto":
        return cfg.data.loading == "disk"
    return find_benchmark(_data_dir(cfg)) is None


def load_samples(cfg: ExperimentConfig, log=print):
    root = _data_dir(cfg)
    samples, report = load_split(root / f"{cfg.data.train_split}.jsonl", on_error=cfg.data.on_error,
                                 max_pixels=cfg.data.max_image_pixels, draft=cfg.model.image_size)
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


@dataclass
class DiskData:
    """The training split on disk: its index, random access to it, the record positions per
    task that the run uses, and its texts for the text tokenizer (in file order, as
    `sample_texts` gives them for samples in memory)."""

    index: SplitIndex
    split: DiskSplit
    by_task: dict[str, np.ndarray]

    @property
    def tasks(self) -> set[str]:
        return set(self.by_task)

    def texts(self) -> Iterator[str]:
        for pos in np.sort(np.concatenate(list(self.by_task.values()))):
            rec = self.split.record(int(pos))
            turns = rec.get("turns") or []
            prompt = turns[0]["text"] if turns else rec.get("prompt")
            yield from (t for t in (prompt, rec.get("target")) if t)
            yield from (t["text"] for t in turns if t.get("text"))


def disk_data(cfg: ExperimentConfig, run_dir: Path, acc, log=print,
              progress: bool = True) -> DiskData:
    """Index the training split once (main process; saved for the other processes and a resumed
    run) and select what the stages' mixtures use, as `load_samples` does in memory."""
    path = _data_dir(cfg) / f"{cfg.data.train_split}.jsonl"
    cache = run_dir / "data_cache" / f"index-{cfg.data.train_split}.npz"
    index = None
    if acc.is_main_process:
        index = SplitIndex.load(cache, path, fingerprint(path)) if path.is_file() else None
        if index is None:
            with bar(unit="record", enabled=progress) as progress_bar:
                job = progress_bar.add_task(f"indexing {path.name}", total=None)
                index = build_index(path, on_error=cfg.data.on_error,
                                    progress=lambda n: progress_bar.advance(job, n))
                progress_bar.update(job, total=len(index), completed=len(index))  # done
            index.save(cache)
    acc.wait_for_everyone()
    if index is None:
        index = SplitIndex.load(cache, path, fingerprint(path))
    if index.report.skipped:
        log(f"[data] {index.report.summary()}")
    check_mixtures(cfg, set(index.counts()), path, log)
    wanted = {t for st in cfg.stages for t, w in st.mixture.items() if w > 0}
    by_task = index.by_task(wanted, cfg.data.max_samples_per_task)
    return DiskData(index, DiskSplit(index, cfg.data.max_image_pixels, cfg.model.image_size),
                    by_task)


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
    span_tasks = registered_tags()
    if isinstance(samples, DiskData):  # streamed from disk, twice: never held
        present, texts = samples.tasks, samples.texts
    else:
        present, corpus = {s.task for s in samples}, sample_texts(samples)
        texts = lambda: corpus  # noqa: E731
    tasks = [t for t in task_names() if not get_task(t).opt_in or t in present]
    spans = has_span_tokens(texts(), span_tasks)
    if cfg.tokenizers.text:
        tok = load_text_tokenizer(cfg.tokenizers.text, tasks=tasks)
        if spans:
            add_span_tokens(tok, span_tasks)
        return tok

    def make(path: Path) -> None:
        corpus = (strip_span_tokens(t, span_tasks) for t in texts()) if spans else texts()
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


def _disk_images(cfg: ExperimentConfig, disk: DiskData) -> tuple[DiskImages, DiskImages | None]:
    """The codec's images of a split on disk: every image of the train split's valid records,
    and for evaluation those of the test split (else val; else a held-out part of train)."""
    size, root = cfg.model.image_size, _data_dir(cfg)
    train = DiskImages(DiskSplit(disk.index, cfg.data.max_image_pixels, size), size)
    for name in ("test", "val"):
        if (root / f"{name}.jsonl").is_file():
            return train, DiskImages.of_split(root / f"{name}.jsonl", size)
    return train, None


def image_tokenizer_for(cfg: ExperimentConfig, run_dir: Path, acc, progress: bool, log=print,
                        disk: DiskData | None = None):
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
            if disk is not None:
                images, evals = _disk_images(cfg, disk)
                train_tokenizer(images, tcfg, out_dir=path, seed=cfg.run.seed, progress=progress,
                                agreement=agreement, eval_images=evals, workers=cfg.data.workers)
                return
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


def _positions(model: UnifiedModel) -> int | None:
    return getattr(model.lm.config, "max_position_embeddings", None)


def _lengths(encoder, model: UnifiedModel):
    """samples -> their training sequences' token counts for this model (no image touched)."""
    return functools.partial(encoder.lengths, codes=model.config.code_grid ** 2)


def _settle(errors: list[DataFormatError], on_error: str, limit: int, log) -> None:
    if errors and on_error == "raise":
        raise errors[0]
    if errors:
        log(f"[data] {len(errors)} sample(s) longer than the model's {limit} positions skipped; "
            f"first: {errors[0]}")


def fitting(samples, encoder, model: UnifiedModel, on_error: str, log=print):
    """(the samples whose training sequence fits the model's positions, how many did not): one
    that does not is a DataFormatError naming its record (`data.on_error: raise`), or is skipped
    and counted (`skip`), never trained on past the positions."""
    limit = _positions(model)
    errors = overlong(samples, _lengths(encoder, model), limit)
    _settle([e for _, e in errors], on_error, limit, log)
    drop = {k for k, _ in errors}
    return [s for k, s in enumerate(samples) if k not in drop], len(errors)


def fitting_on_disk(cfg: ExperimentConfig, disk: DiskData, encoder, model: UnifiedModel,
                    run_dir: Path, acc, progress: bool = True, log=print) -> int:
    """`fitting` for a split on disk: every record the run uses is read without its images and
    counted (main process, once: the positions of the records that do not fit are saved in
    `<run>/data_cache/`, keyed by the split, the selection, the tokenizer and the model's
    sizes, so a resumed run and the other processes skip the pass). One that does not fit
    raises naming its file and line, or (`skip`) is taken out of `disk.by_task` and counted.
    Returns how many were skipped."""
    limit = _positions(model)
    if not limit or not disk.by_task:
        return 0
    positions = np.sort(np.concatenate(list(disk.by_task.values())))  # file order, as in memory
    file = run_dir / "data_cache" / f"overlong-{cfg.data.train_split}.json"
    tok = encoder.tokenizer
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    key = {"index": disk.index.source, "limit": limit, "codes": model.config.code_grid ** 2,
           "und_tokens": encoder.und_tokens, "tokens": len(tok),
           "vocab": hashlib.sha1(json.dumps(sorted(vocab.items())).encode()).hexdigest(),
           "positions": hashlib.sha1(positions.astype(np.int64).tobytes()).hexdigest()}
    if acc.is_main_process and _read_json(file).get("key") != key:
        with bar(unit="record", enabled=progress) as progress_bar:
            job = progress_bar.add_task("checking sequence lengths", total=len(positions))
            found = overlong_records(disk.split, positions, _lengths(encoder, model), limit,
                                     progress=lambda n: progress_bar.advance(job, n))
        errors = [[p, e.path, e.line, e.message] for p, e in found]
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(file.name + ".tmp")
        tmp.write_text(json.dumps({"key": key, "overlong": errors}), encoding="utf-8")
        os.replace(tmp, file)
    acc.wait_for_everyone()
    found = _read_json(file).get("overlong", [])
    _settle([DataFormatError(path, line, msg) for _, path, line, msg in found],
            cfg.data.on_error, limit, log)
    if found:
        drop = np.asarray([p for p, *_ in found], np.int64)
        disk.by_task = {t: kept for t, pos in disk.by_task.items()
                        if len(kept := pos[~np.isin(pos, drop)])}
    return len(found)


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


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
    log = print if acc.is_main_process else (lambda *a: None)
    disk = disk_data(cfg, run_dir, acc, log, progress) if on_disk(cfg) else None
    samples, skipped = (disk, disk.index.report.skipped) if disk else load_samples(cfg)
    text_tok = text_tokenizer_for(cfg, samples, run_dir, acc)
    if cfg.model.janus is not None:
        model = janus_model_for(cfg, text_tok)
        image_tok = model.image_tokenizer
    else:
        image_tok = image_tokenizer_for(cfg, run_dir, acc, progress, log=log, disk=disk)
        model_cfg = dataclasses.replace(
            cfg.model, vocab_size=len(text_tok), num_codes=image_tok.num_codes,
            code_grid=image_tok.grid_size, und_slot_id=SpecialIds.of(text_tok).und_slot)
        preflight(model_cfg, cfg.stages)
        model = UnifiedModel.build(model_cfg, image_tok)
    encoder = model.sequence_encoder(text_tok)
    if disk is not None:
        too_long = fitting_on_disk(cfg, disk, encoder, model, run_dir, acc, progress, log)
        data = TrainData(disk.split, encoder, cfg.run.seed, acc.process_index, disk.by_task)
        data.on_error = cfg.data.on_error
        data.code_cache = codes_on_disk(cfg, disk, encoder, image_tok, run_dir, acc, progress)
        return RunParts(model, text_tok, data, skipped + too_long)
    samples, too_long = fitting(samples, encoder, model, cfg.data.on_error, log=log)
    data = TrainData(samples, encoder, cfg.run.seed, acc.process_index)
    todo = len(data.code_images())
    with bar(unit="img", enabled=progress) as progress_bar:
        job = progress_bar.add_task("encoding images to VQ codes", total=todo)
        data.precompute_codes(image_tok, progress=lambda n: progress_bar.advance(job, n))
    return RunParts(model, text_tok, data, skipped + too_long)


def codes_on_disk(cfg: ExperimentConfig, disk: DiskData, encoder, image_tok, run_dir: Path, acc,
                  progress: bool) -> CodeCache:
    """The VQ codes of the split's generation images, computed once by the main process into
    `<run>/data_cache/` (resumable; utamoe.train.code_cache)."""
    cache = CodeCache(run_dir / "data_cache", cfg.data.train_split,
                      code_items(disk.split, disk.by_task), len(disk.index))
    if acc.is_main_process:
        todo = len(cache.items) - cache.done()
        with bar(unit="img", enabled=progress and todo > 0) as progress_bar:
            job = progress_bar.add_task("encoding images to VQ codes (once, to disk)", total=todo)
            cache.build(disk.split, encoder.process, image_tok, cfg.data.workers,
                        progress=lambda n: progress_bar.advance(job, n))
    acc.wait_for_everyone()
    return cache
