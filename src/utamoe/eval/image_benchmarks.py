"""Images for the field's generation benchmarks, in the layouts their own scorers read.

GenEval (`evaluation/evaluate_images.py IMAGEDIR`) reads, per prompt of its
`evaluation_metadata.jsonl` (one JSON object a line: `tag`, `include`, `prompt`, ...):

    OUT/00000/metadata.jsonl        that line's object, as given
    OUT/00000/samples/0000.png ...  N samples of the prompt
    OUT/utamoe_settings.json        how they were drawn (GenEval skips what is not a number)

DPG-Bench (`compute_dpg_bench.py --image-root-path OUT --resolution S`) reads, per prompt file
`prompts/NAME.txt`, one image `OUT/NAME.png` holding 4 samples as a 2 x 2 grid of S x S tiles.

Sample j of a prompt is drawn with seed + j by its own generator (Predictor.run), so an image
depends on its prompt and seed only, not on what it was batched with; prompts are the model's
input as written (no rewriting). A prompt folder or grid already complete is kept, so a stopped
run continues where it stopped. `utamoe geneval` and `utamoe dpg-bench` are the commands.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from utamoe.eval.settings import eval_settings
from utamoe.infer.checks import InputError
from utamoe.infer.sampling import SamplingConfig
from utamoe.progress import Progress

SETTINGS = "utamoe_settings.json"


def read_geneval_metadata(path: str | Path) -> list[dict]:
    """GenEval's prompts: one JSON object with a non-empty `prompt` per line."""
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            meta = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{n}: not JSON ({err.msg})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("prompt"), str) \
                or not meta["prompt"].strip():
            raise InputError(f"{path}:{n}: a GenEval metadata line is an object with a "
                             "non-empty \"prompt\"")
        out.append(meta)
    if not out:
        raise InputError(f"{path} holds no prompts")
    return out


def read_dpg_prompts(folder: str | Path) -> list[tuple[str, str]]:
    """DPG-Bench's prompts: (NAME, text) of every `NAME.txt` in `folder`, by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of DPG-Bench prompt files (NAME.txt)")
    out = []
    for f in sorted(folder.glob("*.txt")):
        text = f.read_text(encoding="utf-8").strip()
        if not text:
            raise InputError(f"{f} is empty; every prompt file needs its prompt")
        out.append((f.stem, text))
    if not out:
        raise InputError(f"{folder} has no NAME.txt prompt files")
    return out


def _draws(predictor, prompts: list[str], n: int, sampling: SamplingConfig,
           batch_size: int) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(prompt index, its n images), prompts batched, sample j with seed + j."""
    jobs = [(i, j) for i in range(len(prompts)) for j in range(n)]
    images: dict[int, list] = {}
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        reqs = [predictor.request("t2i", prompts[i],
                                  sampling=dataclasses.replace(sampling, seed=sampling.seed + j))
                for i, j in chunk]
        for (i, _), res in zip(chunk, predictor.run(reqs)):
            images.setdefault(i, []).append(res.image)
            if len(images[i]) == n:
                yield i, images.pop(i)


def _settings(predictor, harness: str, sampling: SamplingConfig, n: int, source: str) -> dict:
    return eval_settings(harness, predictor, ["t2i"], dataclasses.asdict(sampling),
                         samples_per_prompt=n, seeds=f"seed + j for sample j (j < {n})",
                         source=source)


def write_geneval(predictor, metadata: list[dict], out: str | Path, n_samples: int = 4,
                  sampling: SamplingConfig | None = None, batch_size: int = 8,
                  source: str = "", progress: bool = True) -> dict:
    """GenEval's layout in `out` (see the module docstring); returns the settings recorded."""
    out, sampling = Path(out), sampling or SamplingConfig(temperature=1.0, cfg_scale=3.0)
    if n_samples < 1 or batch_size < 1:
        raise InputError("--n-samples and --batch-size must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(predictor, "geneval layout", sampling, n_samples, source)
    (out / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    todo = [i for i, meta in enumerate(metadata) if not _complete(out / f"{i:05d}", meta, n_samples)]
    with Progress(disable=not progress, unit="prompt") as bar:
        job = bar.add_task("GenEval prompts", total=len(metadata), completed=len(metadata) - len(todo))
        for k, images in _draws(predictor, [metadata[i]["prompt"] for i in todo], n_samples,
                                sampling, batch_size):
            folder = out / f"{todo[k]:05d}"
            (folder / "samples").mkdir(parents=True, exist_ok=True)
            for j, img in enumerate(images):
                Image.fromarray(img).save(folder / "samples" / f"{j:04d}.png")
            # Written last: a folder with its metadata is complete.
            (folder / "metadata.jsonl").write_text(json.dumps(metadata[todo[k]]) + "\n",
                                                   encoding="utf-8")
            bar.advance(job)
    return settings


def _complete(folder: Path, meta: dict, n: int) -> bool:
    try:
        same = json.loads((folder / "metadata.jsonl").read_text(encoding="utf-8")) == meta
    except (OSError, json.JSONDecodeError):
        return False
    return same and all((folder / "samples" / f"{j:04d}.png").is_file() for j in range(n))


def write_dpg_bench(predictor, prompts: list[tuple[str, str]], out: str | Path,
                    sampling: SamplingConfig | None = None, batch_size: int = 8,
                    source: str = "", progress: bool = True) -> dict:
    """DPG-Bench's layout in `out`: NAME.png, a 2 x 2 grid of 4 samples per prompt."""
    out, sampling = Path(out), sampling or SamplingConfig(temperature=1.0, cfg_scale=3.0)
    if batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(predictor, "dpg-bench layout", sampling, 4, source)
    settings["tile"] = predictor.processor.size
    (out / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    todo = [(name, text) for name, text in prompts if not (out / f"{name}.png").is_file()]
    with Progress(disable=not progress, unit="prompt") as bar:
        job = bar.add_task("DPG-Bench prompts", total=len(prompts), completed=len(prompts) - len(todo))
        for k, images in _draws(predictor, [t for _, t in todo], 4, sampling, batch_size):
            top, bottom = np.concatenate(images[:2], axis=1), np.concatenate(images[2:], axis=1)
            tmp = out / f".{todo[k][0]}.png.tmp"
            Image.fromarray(np.concatenate([top, bottom], axis=0)).save(tmp, format="PNG")
            tmp.replace(out / f"{todo[k][0]}.png")
            bar.advance(job)
    return settings
