"""Train a recipe and score POPE / VQA on the test split every N steps (issue 12's curve).

    python experiments/binding_curve.py --config und_only --data DATA --out RUN \
        --set "stages.0.mixture={pope: 1}" --set stages.0.steps=400 --every 100

Runs `utamoe.train.Trainer` unchanged, except that every `--every` global steps (and at
the end of each stage) the model being trained is put in eval mode and the first
`--max-per-task` test samples of each of `--tasks` are answered and scored with
`utamoe.eval.run.evaluate_model`, sampled as the demo samples (greedy text; images greedy
with CFG 1.5: `utamoe.demo.demo_sampling`). Scoring does not touch the training data stream (batches
are a pure function of their position), so the trained model is the one `utamoe train`
would give. Writes RUN/curve.jsonl: one record per evaluation with the global step, the
samples seen (global step x batch size x grad accum), the stage, the wall and CPU seconds
of training so far (evaluation excluded) and the metrics. experiments/plot_binding_curve.py
draws the figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="und_only")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--tasks", default="pope,vqa")
    ap.add_argument("--max-per-task", type=int, default=200)
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)

    from utamoe.data.formats import find_benchmark, load_split
    from utamoe.demo import demo_sampling
    from utamoe.eval.run import evaluate_model
    from utamoe.infer.predictor import Predictor
    from utamoe.train.config import load_config
    from utamoe.train.trainer import Trainer

    out = Path(args.out)
    # Checkpoints are where the trainer hands over control between steps: score there.
    cfg = load_config(args.config, [f"data.dir={args.data}", f"run.out={out}",
                                    f"train.ckpt_every={args.every}", *args.overrides])
    tasks = args.tasks.split(",")
    test, _ = load_split(Path(args.data) / f"{args.split}.jsonl")
    test = [s for s in test if s.task in tasks]
    curve = out / "curve.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    curve.write_text("")
    # wall seconds, and CPU seconds of the process (all threads): on a shared machine the CPU
    # time is what the same work costs on a quiet one
    clock = {"train": 0.0, "since": time.perf_counter(), "cpu": 0.0, "cpu_since": time.process_time()}

    class CurveTrainer(Trainer):
        def _score(self, state) -> None:
            clock["train"] += time.perf_counter() - clock["since"]
            clock["cpu"] += time.process_time() - clock["cpu_since"]
            model = self.accelerator.unwrap_model(self.prepared)
            res = evaluate_model(Predictor(model, self.text_tokenizer), test,
                                 demo_sampling(self.cfg.run.seed), max_per_task=args.max_per_task,
                                 progress=False, benchmark=find_benchmark(args.data))
            model.train()
            t = self.cfg.train
            rec = {"global_step": state.global_step, "stage": self.cfg.stages[state.stage].name,
                   "samples_seen": state.global_step * t.batch_size * t.grad_accum,
                   "train_seconds": round(clock["train"], 1),
                   "train_cpu_seconds": round(clock["cpu"], 1)}
            for task, metrics in res.per_task.items():
                rec.update({f"{task}_{k}": v for k, v in metrics.items()
                            if isinstance(v, (int, float))})
            with curve.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps({k: v for k, v in rec.items() if "accuracy" in k or k in
                              ("global_step", "train_seconds")}), flush=True)
            clock["since"], clock["cpu_since"] = time.perf_counter(), time.process_time()

        def _checkpoint(self, state):
            stage = self.cfg.stages[state.stage]
            if state.global_step % args.every == 0 or state.step == stage.steps:
                self._score(state)
            return super()._checkpoint(state)

    CurveTrainer(cfg, out, progress=False).run()


if __name__ == "__main__":
    main()
