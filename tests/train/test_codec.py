"""Training the VQ image tokenizer (utamoe.train.codec): a short run lowers the loss and round-trips,
dead codes are revived, codebook usage is reported; the default codec reads ShapesWorld back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.owndata import write_digits
from utamoe.cli import main
from utamoe.shapes import ShapesWorldConfig, render, sample_scene
from utamoe.shapes.benchmark import parse_agreement
from utamoe.shapes.benchmark import renders as shapes_images
from utamoe.train.codec import DiskImages, codebook_usage, train_tokenizer
from utamoe.vision import TokenizerConfig, VQTokenizer

TINY = TokenizerConfig(hidden_channels=32, latent_channels=32, codebook_size=32, steps=40,
                       batch_size=8)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.stack(shapes_images(n, seed=seed))


def test_short_training_lowers_loss_and_round_trips():
    imgs = _images(64)
    model, report = train_tokenizer(list(imgs), TINY, seed=0, progress=False)
    assert report["final_recon_loss"] < 0.5 * report["recon_loss_start"]
    ev = report["eval"]
    assert ev["n_images"] == 6 and 0 < ev["codes_used"] <= 32 and ev["psnr"] > 10
    assert ev["dead_codes"] == 32 - ev["codes_used"] and ev["perplexity"] >= 1
    # the trained codec reconstructs far better than an untrained one
    torch.manual_seed(0)
    x = torch.as_tensor(imgs[:8]).float()

    def err(m):
        return float((torch.as_tensor(m.to_uint8(m.decode(m.encode(imgs[:8])))).float() - x).abs().mean())

    assert err(model) < 0.5 * err(VQTokenizer(TINY))


def test_dead_code_restart_revives_codes():
    torch.manual_seed(0)
    model = VQTokenizer(TINY)
    q = model.quantize
    with torch.no_grad():  # every code the same vector: all but one can never win
        q.embedding.weight[:] = torch.tensor([1.0] + [0.0] * (TINY.code_dim - 1))
    z = model.latents(model.to_pixels(_images(8)))
    model.train()
    _, codes, _ = q(z)
    assert len(codes.unique()) == 1
    z_ND = torch.nn.functional.normalize(z.permute(0, 2, 3, 1).flatten(0, 2), dim=-1)
    revived = q.restart_dead(z_ND.detach(), torch.Generator().manual_seed(0))
    assert revived == TINY.codebook_size - 1
    _, codes, _ = q(z)
    assert len(codes.unique()) > 3
    assert float(q.usage.sum()) == codes.numel()  # counts restarted at zero, then this batch


def test_codebook_usage_report():
    stats = codebook_usage(torch.tensor([0, 0, 1, 1]), 4)
    assert stats["codes_used"] == 2 and stats["dead_codes"] == 2
    assert stats["perplexity"] == pytest.approx(2.0)


@pytest.mark.slow
def test_default_tokenizer_parses_back_99_percent():
    """The default recipe on ShapesWorld: >= 99% of 200 test scenes parse back the same."""
    shapes = ShapesWorldConfig()
    rng = np.random.default_rng(123)
    test = [render(sample_scene(rng, shapes, shapes.allowed_combos()), shapes) for _ in range(200)]
    _, report = train_tokenizer(shapes_images(9000, shapes, seed=0), TokenizerConfig(),
                                seed=0, progress=False, eval_images=test,
                                agreement=parse_agreement(shapes))
    assert report["eval"]["parse_agreement"] >= 0.99, report["eval"]


def test_codec_trains_on_images_read_from_disk_per_step(tmp_path, capsys):
    """A dataset that is not a benchmark's: the codec reads each step's images from disk (the
    same batches with worker processes), evaluated on the test split's images."""
    root = write_digits(tmp_path / "d", {"train": 12, "test": 3}, size=(40, 30), mode="RGB")
    images = DiskImages.of_split(root / "train.jsonl", 16)
    assert len(images) == 48 and images.load([0, 47]).shape == (2, 16, 16, 3)
    cfg = TokenizerConfig(image_size=16, base_channels=8, channel_multiplier=(1, 2),
                          latent_channels=8, codebook_size=16)
    runs = []
    for workers in (0, 2):
        model, report = train_tokenizer(DiskImages.of_split(root / "train.jsonl", 16), cfg,
                                        steps=4, batch_size=4, seed=1, progress=False,
                                        eval_images=DiskImages.of_split(root / "test.jsonl", 16),
                                        workers=workers)
        runs.append(report)
        assert report["train_images"] == 48 and report["eval"]["n_images"] == 12
    assert runs[0]["final_recon_loss"] == runs[1]["final_recon_loss"]
    assert main(["tokenizer", "train", "--data", str(root), "--out", str(tmp_path / "vq"),
                 "--quick", "--steps", "3"]) == 0
    assert "tokenizer written" in capsys.readouterr().out
