"""Dynamic batching in `utamoe serve`: throughput and latency with batching against one request
at a time, at 1, 4 and 16 concurrent clients on loopback, measured in one run.

    python benchmarks/serve_batching.py                      # a demo-sized random model
    python benchmarks/serve_batching.py --model runs/demo/model --requests 32

Each client sends a fixed number of requests, alternating an understanding request (VQA,
greedy, up to 8 answer tokens) and a generation request (t2i, 36 codes, greedy, CFG 1.5), so
every batch mixes both kinds. The same server code runs with `max_batch` 16 (batching) and 1
(one request at a time). Prints requests/s, p50 and p99 latency per setting and the
throughput ratio; the target is >= 3x at 16 clients on CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ helpers, when run from a checkout


def demo_sized_predictor():
    """The demo's architecture (configs/base.yaml), random weights: what serving costs."""
    import torch

    from utamoe.hf.parts import HFPart
    from utamoe.infer.predictor import Predictor
    from utamoe.model.config import UnifiedConfig
    from utamoe.model.unified import UnifiedModel
    from utamoe.text.tokenizer import SpecialIds, train_text_tokenizer
    from utamoe.train.config import load_config
    from utamoe.vision.tokenizer import TokenizerConfig, VQTokenizer

    torch.manual_seed(0)
    tok = train_text_tokenizer(["what color is the circle ?", "a red circle at the top left", "red"] * 50,
                               vocab_size=300)
    vq = VQTokenizer(TokenizerConfig())
    base = load_config("utamoe")
    cfg = UnifiedConfig(backbone=HFPart(config=base.model.backbone.config),
                        vision=HFPart(config=base.model.vision.config),
                        moe=base.stages[2].moe, vocab_size=len(tok), num_codes=vq.num_codes,
                        code_grid=vq.grid_size, und_slot_id=SpecialIds.of(tok).und_slot)
    return Predictor(UnifiedModel.build(cfg, vq), tok)


def run(predictor, max_batch: int, clients: int, per_client: int, image_b64: str) -> dict:
    import httpx

    from tests.serve.conftest import LiveServer
    from utamoe.serve.app import ServeConfig, create_app

    bodies = [("/v1/answer", {"image": image_b64, "question": "what color is the circle ?",
                              "max_new_tokens": 8}),
              ("/v1/generate", {"prompt": "a red circle at the top left", "temperature": 0,
                                "cfg_scale": 1.5})]
    latencies: list[float] = []
    failures = []
    app = create_app(predictor, ServeConfig(max_batch=max_batch, max_wait_ms=5, queue_size=256,
                                            timeout_s=600))
    with LiveServer(app) as server:
        def client(k: int) -> None:
            with httpx.Client(base_url=server.url, timeout=600) as c:
                for i in range(per_client):
                    path, body = bodies[(k + i) % 2]
                    t0 = time.perf_counter()
                    r = c.post(path, json=body)
                    latencies.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        failures.append(r.status_code)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"rps": len(latencies) / wall, "p50": statistics.median(latencies), "p99": q[98],
            "n": len(latencies), "failures": len(failures)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model directory (default: a demo-sized random model)")
    ap.add_argument("--requests", type=int, default=8, help="requests per client (default 8)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = ap.parse_args(argv)
    import numpy as np

    from tests.serve.conftest import png_b64
    from utamoe.infer.predictor import Predictor

    predictor = Predictor.load(args.model) if args.model else demo_sized_predictor()
    image = png_b64(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    run(predictor, 16, 2, 1, image)  # warm-up
    print(f"{'clients':>7} | {'one at a time: req/s  p50 s  p99 s':>34} | "
          f"{'batching: req/s  p50 s  p99 s':>30} | throughput ratio")
    for n in args.clients:
        per = max(args.requests, 1)
        single = run(predictor, 1, n, per, image)
        batched = run(predictor, 16, n, per, image)
        print(f"{n:>7} | {single['rps']:>20.2f} {single['p50']:>6.2f} {single['p99']:>6.2f} | "
              f"{batched['rps']:>16.2f} {batched['p50']:>6.2f} {batched['p99']:>6.2f} | "
              f"{batched['rps'] / single['rps']:.2f}x"
              + (f"  ({single['failures'] + batched['failures']} failed)"
                 if single['failures'] + batched['failures'] else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
