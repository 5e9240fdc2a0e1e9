"""Training and evaluation of the VQ image tokenizer (`utamoe tokenizer train`).

`train_tokenizer` fits a `VQTokenizer` on a dataset directory in the utamoe format
(every input and target image of the train split, deduplicated) or on a list of
uint8 images, then evaluates it on held-out images: reconstruction PSNR and SSIM
(scikit-image), an optional agreement rate given by the caller (for ShapesWorld: does
the decoded image parse back to the same scene? see the benchmark registry, utamoe.benchmarks)
and codebook usage (codes used, perplexity, dead codes). Nothing here knows a
benchmark; images of another size than the config's are resized to it.

Loss = L1 + L2 reconstruction + the quantizer's codebook and commitment terms. No
perceptual or GAN loss: ShapesWorld images are flat colours on a flat background,
with no texture for an adversary or a VGG feature to sharpen, and what matters
downstream (colour, shape, size, cell) is exactly what a pixel loss measures; both
would also cost more CPU time than the whole budget. Dead codes (a known VQ failure)
are revived every `restart_every` steps from random encoder outputs of the batch.

A dataset too large for memory is given as `DiskImages` (its images read when a step needs
them, by `workers` processes ahead of the loop): memory then holds one batch, not the dataset.
Its batches are drawn by their own seeded generator, all up front, so prefetching changes
nothing; images are not deduplicated by content (that needs every image decoded), only the
evaluation images are a seeded random subset.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from utamoe.data.formats import load_split
from utamoe.data.ondisk import HAS_IMAGE, HAS_TARGET_IMAGE, DiskSplit, build_index
from utamoe.fsutil import check_replaceable
from utamoe.progress import Progress
from utamoe.vision.processor import to_rgb
from utamoe.vision.tokenizer import IS_OWN as TOKENIZER_IS_OWN
from utamoe.vision.tokenizer import TokenizerConfig, VQTokenizer

REPORT_FILE = "train_report.json"


# ---------------------------------------------------------------- data


def dedupe(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Images with byte-identical duplicates removed, first occurrence kept (the same
    scene is rendered by several tasks; duplicates would only weight it more)."""
    seen, out = set(), []
    for img in images:
        arr = np.ascontiguousarray(img, dtype=np.uint8)
        key = hashlib.blake2b(arr.tobytes() + str(arr.shape).encode(), digest_size=16).digest()
        if key not in seen:
            seen.add(key)
            out.append(arr)
    return out


def split_images(data_dir: str | os.PathLike, split: str, draft: int | None = None) -> list[np.ndarray]:
    """Every input and target image of one split of a dataset directory, deduplicated (`draft`:
    JPEGs decoded at a reduced scale still at least that side, utamoe.vision.images)."""
    samples, _ = load_split(Path(data_dir) / f"{split}.jsonl", draft=draft)
    images = [img for s in samples for img in (s.image, s.target_image) if img is not None]
    return dedupe(images)


class DiskImages:
    """The input and target images of a split on disk (utamoe.data.ondisk), read and resized to
    `size` when asked for: `load(indices)` -> uint8 (n, size, size, 3)."""

    def __init__(self, split: DiskSplit, size: int):
        flags = split.index.flags
        self.split, self.size = split, size
        self.items = np.asarray([(p, k) for p in range(len(flags)) for k, bit in
                                 enumerate((HAS_IMAGE, HAS_TARGET_IMAGE)) if flags[p] & bit],
                                np.int64).reshape(-1, 2)

    @classmethod
    def of_split(cls, path: str | os.PathLike, size: int) -> DiskImages:
        """The images of a split file (its broken records are left out: `utamoe data check`
        names them)."""
        return cls(DiskSplit(build_index(path, on_error="skip"), draft=size), size)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, indices) -> np.ndarray:
        out = []
        for pos, kind in self.items[np.asarray(indices, np.int64)]:
            s = self.split.read(int(pos))
            out.append(to_rgb(s.image if kind == 0 else s.target_image, self.size))
        return np.stack(out)

    def subset(self, n: int, seed: int) -> np.ndarray:
        """At most n of the images, a seeded random choice, in memory."""
        pick = np.arange(len(self))
        if len(pick) > n:
            pick = np.sort(np.random.default_rng(seed).choice(len(pick), n, replace=False))
        return self.load(pick) if len(pick) else np.zeros((0, self.size, self.size, 3), np.uint8)


class _StepImages(torch.utils.data.Dataset):
    """Step k -> its batch of images (what a DataLoader's workers compute)."""

    def __init__(self, images: DiskImages, order: torch.Tensor):
        self.images, self.order = images, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> np.ndarray:
        return self.images.load(self.order[k].numpy())


def _disk_data(data: DiskImages, eval_images, eval_max: int, seed: int, size: int):
    """(train DiskImages, eval uint8 (M, size, size, 3)): eval from `eval_images` (a DiskImages
    or arrays), else a held-out 10 % of the train images."""
    if len(data) == 0:
        raise ValueError("no training images found in the split")
    if isinstance(eval_images, DiskImages):
        return data, eval_images.subset(eval_max, seed)
    if eval_images is not None:
        return data, np.stack([to_rgb(img, size) for img in list(eval_images)[:eval_max]])
    n_eval = max(1, len(data) // 10) if len(data) > 1 else 0
    held = np.arange(len(data) - n_eval, len(data))
    if len(held) > eval_max:
        held = np.sort(np.random.default_rng(seed).choice(held, eval_max, replace=False))
    evals = data.load(held) if len(held) else data.load([0])
    data.items = data.items[:len(data) - n_eval]
    return data, evals


def _resolve_data(data, eval_images, eval_max: int, seed: int, size: int):
    """(train uint8 (N, size, size, 3), eval uint8 (M, size, size, 3))."""
    if isinstance(data, DiskImages):
        return _disk_data(data, eval_images, eval_max, seed, size)
    if isinstance(data, (str, os.PathLike)):
        root = Path(data)
        train = split_images(root, "train", size)
        if eval_images is None:
            eval_split = "test" if (root / "test.jsonl").is_file() else "val"
            eval_images = split_images(root, eval_split, size) \
                if (root / f"{eval_split}.jsonl").is_file() else []
            if not eval_images:  # no test/val split: hold out 10% of train
                n_eval = max(1, len(train) // 10)
                train, eval_images = train[:-n_eval] or train, train[-n_eval:]
    else:
        train = dedupe(list(data))
        if eval_images is None:  # hold out 10% (at least one image) for evaluation
            n_eval = max(1, len(train) // 10)
            if len(train) < 2:
                raise ValueError("train_tokenizer needs >= 2 images (or pass eval_images)")
            train, eval_images = train[:-n_eval], train[-n_eval:]
    if not train:
        raise ValueError(f"no training images found in {data!r}")
    rng = np.random.default_rng(seed)
    eval_list = list(eval_images)
    if len(eval_list) > eval_max:
        eval_list = [eval_list[i] for i in sorted(rng.choice(len(eval_list), eval_max, replace=False))]
    return (np.stack([to_rgb(img, size) for img in train]),
            np.stack([to_rgb(img, size) for img in eval_list]))


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_tokenizer(model: VQTokenizer, images, agreement=None, batch_size: int = 64) -> dict:
    """Reconstruction PSNR/SSIM, the rate of `agreement(original, reconstruction) -> bool`
    when given (ShapesWorld: parse agreement) and codebook usage of `model` on uint8 images
    (N, H, W, 3)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    model.eval()
    images = np.asarray(images, dtype=np.uint8)
    codes, recon = [], []
    for i in range(0, len(images), batch_size):
        c = model.encode(images[i:i + batch_size])
        codes.append(c)
        recon.append(model.to_uint8(model.decode(c)))
    codes_all, rec = torch.cat(codes), np.concatenate(recon)
    psnr = [peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(images, rec)]
    ssim = [structural_similarity(a, b, channel_axis=-1, data_range=255) for a, b in zip(images, rec)]
    out = {"n_images": len(images), "psnr": float(np.mean(np.minimum(psnr, 100.0))),
           "ssim": float(np.mean(ssim)), **codebook_usage(codes_all, model.num_codes)}
    if agreement is not None:
        out["parse_agreement"] = float(np.mean([agreement(a, b) for a, b in zip(images, rec)]))
    return out


def codebook_usage(codes: torch.Tensor, num_codes: int) -> dict:
    """Codes used / codebook size, perplexity (exp of the code entropy) and dead codes."""
    counts = torch.bincount(codes.flatten().cpu(), minlength=num_codes).double()
    p = counts / counts.sum().clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((counts > 0).sum())
    return {"codes_used": used, "codebook_size": num_codes, "usage": used / num_codes,
            "perplexity": float(entropy.exp()), "dead_codes": num_codes - used}


# ---------------------------------------------------------------- training


def _lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 10% of `lr`."""
    warm = max(1, steps // 20)
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _edge_weight(x: torch.Tensor, strength: float) -> torch.Tensor:
    """1 + strength * local gradient magnitude (B, 1, H, W): the pixels that tell a small
    circle from a small square are a few corner pixels, which a plain mean over a
    mostly-flat image lets the quantizer merge into one code."""
    if strength <= 0:
        return torch.ones_like(x[:, :1])
    gx = F.pad((x[..., :, 1:] - x[..., :, :-1]).abs(), (0, 1, 0, 0))
    gy = F.pad((x[..., 1:, :] - x[..., :-1, :]).abs(), (0, 0, 0, 1))
    g = (gx + gy).amax(dim=1, keepdim=True)
    g = torch.maximum(g, F.max_pool2d(g, 3, 1, 1))  # both sides of an edge
    return 1 + strength * g


def _train_step(model, opt, batch: torch.Tensor, cfg: TokenizerConfig) -> dict:
    recon, _, vq = model(batch)
    err = (recon - batch).abs() + (recon - batch) ** 2
    rec_loss = (err * _edge_weight(batch, cfg.edge_weight)).mean()
    loss = rec_loss + cfg.codebook_weight * vq["codebook"] + cfg.commitment_weight * vq["commitment"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": loss.item(), "recon": rec_loss.item()}


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]:.1f} it/s"), TimeElapsedColumn(), "<",
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not enabled)


def _batches(model: VQTokenizer, images, steps: int, batch_size: int, gen: torch.Generator,
             workers: int):
    """The training batches: drawn with `gen` step by step from images in memory, or for a
    DiskImages from a generator of their own, up front, read by `workers` processes."""
    if isinstance(images, DiskImages):
        order = torch.randint(len(images), (steps, batch_size),
                              generator=torch.Generator().manual_seed(int(gen.initial_seed()) + 1))
        for batch in torch.utils.data.DataLoader(_StepImages(images, order), batch_size=None,
                                                 num_workers=workers,
                                                 generator=torch.Generator().manual_seed(0)):
            yield model.to_pixels(batch)
        return
    data = model.to_pixels(images)  # all in memory: 48x48 images are ~27 KB each as float
    for _ in range(steps):
        yield data[torch.randint(len(data), (batch_size,), generator=gen)]


def fit(model: VQTokenizer, images, steps: int, batch_size: int, lr: float,
        seed: int = 0, progress: bool = True, workers: int = 0) -> dict:
    """Train `model` in place on uint8 images (N, H, W, 3) or a DiskImages; returns the
    training log."""
    cfg = model.config
    # Flat backgrounds can make GroupNorm outputs (hence activations and gradients)
    # tiny, and denormal floats slow CPU steps 10-100x: denormals are flushed to zero
    # process-wide, on every thread, when utamoe is imported (utamoe/_runtime.py; a
    # call here would reach only this thread, not torch's OpenMP workers).
    gen = torch.Generator().manual_seed(seed)
    batches = _batches(model, images, steps, batch_size, gen, workers)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    last_restart = int(steps * cfg.restart_until)
    log = {"loss": [], "recon": [], "restarts": [], "revived": 0}
    model.train()
    model.quantize.usage.zero_()
    start = time.perf_counter()
    with _progress(progress) as bar:
        job = bar.add_task("tokenizer", total=steps, rate=0.0, info="")
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, steps, lr)
            batch = next(batches)
            out = _train_step(model, opt, batch, cfg)
            log["loss"].append(out["loss"])
            log["recon"].append(out["recon"])
            if (step + 1) % cfg.restart_every == 0 and step < last_restart:
                with torch.no_grad():
                    z = F.normalize(model.latents(batch).permute(0, 2, 3, 1).flatten(0, 2), dim=-1)
                n = model.quantize.restart_dead(z, gen)
                log["restarts"].append((step + 1, n))
                log["revived"] += n
            rate = (step + 1) / max(time.perf_counter() - start, 1e-9)
            bar.update(job, advance=1, rate=rate, info=f"loss {out['recon']:.4f}")
    log["seconds"] = time.perf_counter() - start
    model.eval()
    return log


def train_tokenizer(
    data: str | os.PathLike | Sequence[np.ndarray],
    config: TokenizerConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    progress: bool = True,
    *,
    eval_images: Sequence[np.ndarray] | DiskImages | None = None,
    agreement=None,
    eval_max: int = 200,
    workers: int = 0,
    replace: bool = False,
) -> tuple[VQTokenizer, dict[str, Any]]:
    """Train a VQ tokenizer; returns (model, report) and saves both to `out_dir` if given.

    `data`: a dataset directory (train split in, test split -- else val -- evaluated),
    uint8 images (N, H, W, 3) (10% held out unless `eval_images` is given), or a DiskImages
    (images read when a step needs them, by `workers` processes; see the module docstring).
    `steps`/`batch_size`/`lr` default to the config's; images are resized to the config's
    image_size. `agreement(original, reconstruction) -> bool` adds its rate to the report
    (ShapesWorld's parse agreement). At most `eval_max` evaluation images are used (a
    seeded random subset). An existing `out_dir` that is not a tokenizer is refused before
    training starts (utamoe.fsutil.NotOurs), unless `replace`.
    """
    config = config or TokenizerConfig()
    steps = config.steps if steps is None else steps
    batch_size = config.batch_size if batch_size is None else batch_size
    lr = config.lr if lr is None else lr
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"train_tokenizer: steps and batch_size must be >= 1 and lr > 0 (got "
                         f"{steps}, {batch_size}, {lr})")
    if out_dir is not None:  # before minutes of training, not after
        check_replaceable(out_dir, TOKENIZER_IS_OWN, "a VQ image tokenizer directory", replace)
    train, evals = _resolve_data(data, eval_images, eval_max, seed, config.image_size)
    torch.manual_seed(seed)
    model = VQTokenizer(config)
    log = fit(model, train, steps, batch_size, lr, seed, progress, workers)
    metrics = evaluate_tokenizer(model, evals, agreement)
    report = {
        "config": config.to_dict(), "steps": steps, "batch_size": batch_size, "lr": lr,
        "seed": seed, "train_images": len(train), "train_seconds": round(log["seconds"], 2),
        "final_recon_loss": float(np.mean(log["recon"][-10:])),
        "recon_loss_start": float(np.mean(log["recon"][:5])),
        "codes_revived": log["revived"], "restarts": log["restarts"], "eval": metrics,
    }
    if out_dir is not None:
        path = model.save_pretrained(out_dir, replace=replace)
        tmp = path / f".{REPORT_FILE}.tmp"
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path / REPORT_FILE)
    return model, report


def format_report(report: dict) -> str:
    """A few human-readable lines for the CLI."""
    m = report["eval"]
    lines = [f"trained {report['steps']} steps (batch {report['batch_size']}) on "
             f"{report['train_images']} images in {report['train_seconds']:.1f} s; "
             f"recon loss {report['recon_loss_start']:.4f} -> {report['final_recon_loss']:.4f}",
             f"eval on {m['n_images']} images: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}"
             + (f", parse agreement {m['parse_agreement']:.1%}" if "parse_agreement" in m else ""),
             f"codebook: {m['codes_used']}/{m['codebook_size']} codes used, perplexity "
             f"{m['perplexity']:.1f}, {m['dead_codes']} dead; {report['codes_revived']} codes "
             "revived during training"]
    return "\n".join(lines)
