"""How much of ShapesWorld's relation questions a partial answerer gets right, and what a model's
answers to them follow (issue 24).

A relation question ("is the red circle left of the blue square?") needs both objects' positions.
An answerer that knows less is measured by its best possible (Bayes) accuracy over N questions
drawn by the generator's own `relation_qa` (the test split's distribution): knowing the relation
word only, the relation and A's position, the relation and B's position, or both. With
`--run RUN` it also reads RUN/eval/predictions.jsonl and RUN/data/test.jsonl (what `utamoe demo`
writes; `--eval` and `--data` name other folders, e.g. `utamoe eval --out`'s) and reports, for the model's answers to the test split's relation questions, its
accuracy, its share of "yes", and how often it agrees with the best answerer from A's position
alone. Prints a markdown table.

    python experiments/relation_shortcuts.py --n 40000 --run runs/demo
    python experiments/relation_shortcuts.py --run RUN --eval RUN/eval-test --data data/shapes
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from utamoe.shapes.questions import RELATIONS, SampleContext, relation_qa
from utamoe.shapes.text import resolve
from utamoe.shapes.world import Scene, ShapesWorldConfig

_QUESTION = re.compile(r"is (the .+?) (" + "|".join(RELATIONS) + r") (the .+)\?")


def parts(question: str, scene: Scene, world: ShapesWorldConfig):
    """(relation, A, B) of a relation question about `scene`."""
    a, rel, b = _QUESTION.fullmatch(question).groups()
    return rel, resolve(a, scene, world), resolve(b, scene, world)


def drawn(n: int, world: ShapesWorldConfig, seed: int) -> list[tuple[str, object, object, str]]:
    """n relation questions as the generator draws them: (relation, A, B, answer)."""
    rng, out = np.random.default_rng(seed), []
    while len(out) < n:
        ctx = SampleContext(world, rng, heldout=False)
        scene = ctx.scene(min_objects=2)
        qa = relation_qa(ctx, scene)
        if qa is not None:
            out.append((*parts(qa[0], scene, world), qa[1]))
    return out


KNOWS = {"the relation word": lambda r, a, b: r,
         "the relation and A's position": lambda r, a, b: (r, a.row, a.col),
         "the relation and B's position": lambda r, a, b: (r, b.row, b.col),
         "the relation and both positions": lambda r, a, b: (r, a.row, a.col, b.row, b.col)}


def best_answers(questions, key) -> dict:
    """For each value of `key(relation, A, B)`, the answer that is right most often."""
    counts: dict = defaultdict(Counter)
    for rel, a, b, answer in questions:
        counts[key(rel, a, b)][answer] += 1
    return {k: c.most_common(1)[0][0] for k, c in counts.items()}


def bayes_accuracy(questions, key) -> float:
    best = best_answers(questions, key)
    return sum(best[key(r, a, b)] == ans for r, a, b, ans in questions) / len(questions)


def model_answers(run: Path, world: ShapesWorldConfig, eval_dir: Path | None = None,
                  data_dir: Path | None = None):
    """(relation, A, B, truth, prediction) of the test split's relation questions in RUN (its
    predictions in `eval_dir`, default RUN/eval; the split in `data_dir`, default RUN/data)."""
    eval_dir, data_dir = eval_dir or run / "eval", data_dir or run / "data"
    records = map(json.loads, (eval_dir / "predictions.jsonl").open())
    preds = {r["id"]: r["prediction"].strip() for r in records if "prediction" in r}
    rows = []
    for rec in map(json.loads, (data_dir / "test.jsonl").open()):
        if rec["task"] == "vqa" and rec.get("meta", {}).get("qtype") == "relation" and rec["id"] in preds:
            scene = Scene.from_json(rec["meta"]["scene"])
            rows.append((*parts(rec["prompt"], scene, world), rec["target"], preds[rec["id"]]))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40000, help="relation questions to draw")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", type=Path, action="append", default=[],
                    help="a `utamoe demo` / `utamoe train` output with eval/ and data/ (repeatable)")
    ap.add_argument("--eval", type=Path, help="the runs' predictions folder instead of RUN/eval")
    ap.add_argument("--data", type=Path, help="the dataset folder instead of RUN/data")
    args = ap.parse_args(argv)
    world = ShapesWorldConfig()
    questions = drawn(args.n, world, args.seed)
    print(f"| an answerer that knows | best accuracy on {args.n} relation questions |\n|---|---|")
    for name, key in KNOWS.items():
        print(f"| {name} | {bayes_accuracy(questions, key):.3f} |")
    if args.run:
        a_rule = best_answers(questions, KNOWS["the relation and A's position"])
        print("\n| run | relation questions | accuracy | share of yes | agrees with the A-position answerer |"
              "\n|---|---|---|---|---|")
        for run in args.run:
            rows = model_answers(run, world, args.eval, args.data)
            n = len(rows)
            acc = sum(t == p for *_, t, p in rows) / n
            yes = sum(p == "yes" for *_, p in rows) / n
            agree = sum(a_rule[(r, a.row, a.col)] == p for r, a, b, t, p in rows) / n
            print(f"| {run} | {n} | {acc:.3f} | {yes:.2f} | {agree:.2f} |")


if __name__ == "__main__":
    main()
