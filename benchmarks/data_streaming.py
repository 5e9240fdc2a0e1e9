"""Training on a dataset too large for memory (issue 26): peak memory and training tokens/s of a
split read from disk, against the same steps with the images in memory, and the demo's speed on
both paths, in one run.

1. writes a synthetic dataset of --records records (50 % vqa, 40 % caption, 10 % t2i) with a
   256x256 JPEG per record (copies of --pool distinct drawn images, one file each) under --root
   (default /tmp/utamoe-stream), with a `subset` split of its first --subset records; the whole
   folder is deleted at the end unless --keep;
2. `utamoe data check --sample 1000` of it: time and peak memory;
3. `big`:    the default recipe's model (configs/base.yaml via utamoe.yaml; its dense `pretrain`
             stage) trained --steps steps on the full split read from disk (`data.loading: disk`,
             `data.workers`), the VQ codec trained on it first from disk (images read per step)
             and the t2i targets encoded once to a file;
   `subset`: the same steps with the subset held in memory (`data.loading: memory`, the codec of
             `big`): the reference for tokens/s;
4. `demo-memory` / `demo-disk`: the demo's recipe on ShapesWorld (default sizes, an untrained codec
   standing in: the codec does not change the step's cost) with its split in memory (today's
   path) and read from disk, --demo-steps steps each, run twice in turns (memory, disk, memory,
   disk); the median of each. `big` and `subset` also run twice in turns.

Each training runs in its own process; the parent samples that process tree's memory every
0.5 s (PSS summed over the main process and its workers, so pages they share count once) and
prints the peak beside the main process's own peak RSS. tokens/s = real tokens of the steps
after the first --warmup, over their wall time, the batch draw included (a step's time counts
the wait for its batch); beside it, per CPU-second of the process and its workers (less
sensitive to other jobs on a shared machine, and it counts the workers' reading), and the time
one batch takes to draw in the main process alone (after training; 20 draws), the data path's
own cost against the step's. Targets: big peak memory < 4 GB, big/subset tokens/s >= 0.9,
demo-disk/demo-memory >= 0.95.

    python benchmarks/data_streaming.py [--records 200000] [--steps 300] [--workers 1] [--json]
    python benchmarks/data_streaming.py --records 3000 --steps 6 --demo-steps 6 --warmup 2  # smoke test
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/README.md

import numpy as np  # noqa: E402
import psutil  # noqa: E402

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220),
          "yellow": (230, 210, 40), "purple": (150, 60, 190), "orange": (240, 140, 30)}
SHAPES = ("square", "circle")


def pool_images(n: int, seed: int = 0) -> list[tuple[bytes, str, str]]:
    """n distinct 256x256 JPEGs (a gradient and two shapes) with a caption and a colour answer."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    names = list(COLORS)
    out = []
    for _ in range(n):
        base = rng.integers(0, 255, 3)
        ramp = np.linspace(0, 1, 256)[:, None, None] * rng.integers(-80, 80, 3)
        arr = np.clip(base + ramp + np.zeros((256, 256, 3)), 0, 255).astype(np.uint8)
        im = Image.fromarray(arr)
        draw = ImageDraw.Draw(im)
        words = []
        for _ in range(2):
            color, shape = names[int(rng.integers(len(names)))], SHAPES[int(rng.integers(2))]
            x, y, r = (int(v) for v in rng.integers([20, 20, 20], [200, 200, 60]))
            box = (x, y, x + r, y + r)
            (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLORS[color])
            words.append((color, shape))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        caption = " and ".join(f"a {c} {s}" for c, s in words)
        out.append((buf.getvalue(), caption, words[0][0]))
    return out


def write_dataset(root: Path, records: int, subset: int, pool: int) -> dict:
    start = time.perf_counter()
    images = pool_images(pool)
    (root / "images").mkdir(parents=True, exist_ok=True)
    size = 0
    with open(root / "train.jsonl", "w") as fh, open(root / "subset.jsonl", "w") as sub:
        for i in range(records):
            data, caption, color = images[i % pool]
            rel = f"images/{i // 1000:04d}/{i:07d}.jpg"
            if i % 1000 == 0:
                (root / rel).parent.mkdir(exist_ok=True)
            (root / rel).write_bytes(data)
            size += len(data)
            kind = i % 10
            if kind < 5:
                rec = {"task": "vqa", "group": "und", "prompt": "what color is the first shape?",
                       "image": rel, "target": color}
            elif kind < 9:
                rec = {"task": "caption", "group": "und", "prompt": "describe the image",
                       "image": rel, "target": caption}
            else:
                rec = {"task": "t2i", "group": "gen", "prompt": f"draw {caption}",
                       "target_image": rel}
            line = json.dumps({"id": f"r{i:07d}", **rec}) + "\n"
            fh.write(line)
            if i < subset:
                sub.write(line)
    return {"records": records, "image_bytes": size, "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------- one training, in a child


def child(spec: dict) -> None:
    """Train one configuration (spec) and print its figures as one JSON line."""
    import resource

    import torch

    from utamoe.train.config import load_config
    from utamoe.train.trainer import Trainer

    cfg = load_config("utamoe", spec["sets"])
    cfg.stages = cfg.stages[:1]
    cfg.stages[0].steps = spec["steps"]
    timed = {"tokens": 0, "seconds": 0.0, "steps": 0, "cpu": 0.0}
    original = Trainer._step
    me = psutil.Process()

    def cpu() -> float:  # CPU seconds of this process and its (live) workers
        total = 0.0
        for p in [me, *me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def step(self, *args):
        start, c0 = time.perf_counter(), cpu()
        out = original(self, *args)
        timed["steps"] += 1
        if timed["steps"] > spec["warmup"]:
            timed["seconds"] += time.perf_counter() - start
            timed["cpu"] += cpu() - c0
            timed["tokens"] += out[1]
        return out

    Trainer._step = step
    start = time.perf_counter()
    trainer = Trainer(cfg, spec["out"], progress=False)
    trainer.run()
    wall = time.perf_counter() - start
    # The data's own cost: batches drawn in this process alone (no worker), after training.
    t, stage = cfg.train, cfg.stages[0]
    draw = time.perf_counter()
    for k in range(spec["draws"]):
        trainer.data.batch(0, 10**6 + k, t.batch_size, stage.mixture, t.cfg_dropout)
    batch_ms = (time.perf_counter() - draw) / max(spec["draws"], 1) * 1000
    main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"tokens_per_s": timed["tokens"] / max(timed["seconds"], 1e-9),
                      "tokens_per_cpu_s": timed["tokens"] / max(timed["cpu"], 1e-9),
                      "timed_steps": timed["steps"] - spec["warmup"],
                      "step_ms": timed["seconds"] / max(timed["steps"] - spec["warmup"], 1) * 1000,
                      "batch_ms": batch_ms,
                      "wall_s": wall, "main_peak_rss": main_rss,
                      "worker_peak_rss": kids, "threads": torch.get_num_threads()}))


def tree_memory(proc: psutil.Process) -> int:
    """PSS (else RSS) summed over a process and its children."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run(args: list[str], what: str) -> dict:
    """Run a command, sampling its process tree's memory; its last stdout line as JSON (if any)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, peak, start = psutil.Process(proc.pid), 0, time.perf_counter()
    while proc.poll() is None:
        peak = max(peak, tree_memory(ps))
        time.sleep(0.5)
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"{what} failed ({proc.returncode}):\n{err[-3000:]}")
    last = out.strip().splitlines()[-1] if out.strip() else "{}"
    try:
        res = json.loads(last)
    except ValueError:
        res = {}
    return {**res, "tree_peak": peak, "seconds": time.perf_counter() - start}


def train(name: str, sets: list[str], out: Path, steps: int, warmup: int) -> dict:
    spec = {"sets": sets, "out": str(out), "steps": steps, "warmup": warmup, "draws": 20}
    res = run([sys.executable, __file__, "--child", json.dumps(spec)], name)
    print(f"  {name:<12} {res['tokens_per_s']:9.0f} tok/s ({res['tokens_per_cpu_s']:.0f} per CPU-s) "
          f"over {res['timed_steps']} steps ({res['step_ms']:.0f} ms a step; drawing a batch "
          f"alone {res['batch_ms']:.0f} ms); "
          f"peak memory {res['tree_peak'] / 2**30:.2f} GB (tree PSS), main "
          f"{res['main_peak_rss'] / 2**30:.2f} GB RSS; {res['seconds']:.0f} s", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--subset", type=int, default=4000)
    ap.add_argument("--pool", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--demo-steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--root", default="/tmp/utamoe-stream")
    ap.add_argument("--keep", action="store_true", help="keep the dataset and runs")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not 0 <= a.warmup < min(a.steps, a.demo_steps):  # else no step is timed (found after minutes)
        ap.error(f"--warmup {a.warmup} must be below --steps and --demo-steps")
    if a.child:
        child(json.loads(a.child))
        return
    root = Path(a.root)
    if root.exists():
        sys.exit(f"{root} exists; remove it or pass another --root")
    results: dict = {"load_before": os.getloadavg(), "cpus": os.cpu_count(), "args": vars(a)}
    try:
        results.update(measure(a, root))
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    summary(results)
    if a.json:
        print(json.dumps(results, indent=1, default=str))


def measure(a, root: Path) -> dict:
    data, runs = root / "data", root / "runs"
    ds = write_dataset(data, a.records, a.subset, a.pool)
    print(f"wrote {ds['records']} records, {ds['image_bytes'] / 2**30:.2f} GB of 256x256 JPEGs, in "
          f"{ds['seconds']:.0f} s", flush=True)
    check = run([sys.executable, "-m", "utamoe.cli", "data", "check", str(data), "--sample",
                 "1000"], "data check")
    print(f"data check --sample 1000: {check['seconds']:.0f} s, peak memory "
          f"{check['tree_peak'] / 2**30:.2f} GB", flush=True)
    common = ["tokenizers.image_train={steps: 60, batch_size: 32}",
              "tokenizers.image_train_renders=0", "train.log_every=50", "train.ckpt_every=100000"]
    print("training (the default recipe's model, its dense pretrain stage), in turns; the second "
          "`big` reuses the first's index, codec and code file:", flush=True)
    out: dict = {"dataset": ds, "check": check, "big": [], "subset": []}
    codec = runs / "big" / "image_tokenizer"
    for turn in range(2):
        out["big"].append(train("big", [f"data.dir={data}", "data.loading=disk",
                                        f"data.workers={a.workers}", *common],
                                runs / "big", a.steps, a.warmup))
        out["subset"].append(train("subset", [f"data.dir={data}", "data.train_split=subset",
                                              "data.loading=memory", f"tokenizers.image={codec}",
                                              *common], runs / f"subset{turn}", a.steps, a.warmup))
    return {**out, **demo_pair(a, root, common)}


def demo_pair(a, root: Path, common: list[str]) -> dict:
    """The demo's recipe on ShapesWorld, split in memory and on disk, twice each in turns."""
    import torch

    from utamoe.cli import main as cli
    from utamoe.vision.tokenizer import TokenizerConfig, VQTokenizer

    shapes, codec = root / "shapes", root / "shapes-vq"
    cli(["data", "shapes", "--out", str(shapes)])
    torch.manual_seed(0)
    VQTokenizer(TokenizerConfig()).save_pretrained(codec)
    print("the demo's recipe on ShapesWorld (memory: today's path; disk: read per batch):",
          flush=True)
    out: dict = {"demo-memory": [], "demo-disk": []}
    for turn in range(2):
        for kind, extra in (("memory", []), ("disk", [f"data.workers={a.workers}"])):
            sets = [f"data.dir={shapes}", f"data.loading={kind}", f"tokenizers.image={codec}",
                    *common[2:], *extra]
            out[f"demo-{kind}"].append(train(f"demo-{kind}", sets, root / "runs" / f"d{kind}{turn}",
                                             a.demo_steps, a.warmup))
    return out


def summary(r: dict) -> None:
    def med(key: str, field: str = "tokens_per_s") -> float:
        return float(np.median([x[field] for x in r[key]]))

    print(f"\nload average before {r['load_before'][0]:.2f}, after {r['load_after'][0]:.2f} "
          f"({r['cpus']} CPUs)")
    peak = max(x["tree_peak"] for x in r["big"])
    print(f"big: peak memory {peak / 2**30:.2f} GB (target < 4 GB); big/subset tokens/s "
          f"{med('big') / med('subset'):.3f} (target >= 0.9; medians {med('big'):.0f} / "
          f"{med('subset'):.0f}; per CPU-second {med('big', 'tokens_per_cpu_s') / med('subset', 'tokens_per_cpu_s'):.3f})")
    print(f"demo: disk/memory tokens/s {med('demo-disk') / med('demo-memory'):.3f} (target >= "
          f"0.95; medians {med('demo-disk'):.0f} / {med('demo-memory'):.0f}; per CPU-second "
          f"{med('demo-disk', 'tokens_per_cpu_s') / med('demo-memory', 'tokens_per_cpu_s'):.3f})")


if __name__ == "__main__":
    main()
