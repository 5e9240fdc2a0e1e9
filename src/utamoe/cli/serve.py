"""`utamoe serve`: the HTTP API and web page for a model."""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path

from utamoe.infer.checks import InputError
from utamoe.infer.predictor import Predictor


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from utamoe.serve.app import (  # deferred: fastapi, the optional `serve` extra
        ServeConfig,
        create_app,
    )

    key = args.api_key or os.environ.get("UTAMOE_API_KEY")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print(f"warning: listening on {args.host} without an API key (--api-key or "
              "UTAMOE_API_KEY); anyone who reaches it can use the model", file=sys.stderr)
    check_settings(args)
    predictor = Predictor.load(args.model, args.device)
    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                         queue_size=args.queue_size, timeout_s=args.timeout, api_key=key)
    app = create_app(predictor, config, model_dir=Path(args.model).resolve().name)
    print(f"serving {args.model} on http://{args.host}:{args.port} (page /, API docs /docs)")
    # uvicorn drains on SIGTERM, then raises the signal again for the handler that was there
    # before it: this one, so that a clean drain exits 0 instead of "killed by SIGTERM".
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=max(1, math.ceil(args.timeout)))
    return 0


def check_settings(args: argparse.Namespace) -> None:
    """Every number the server runs with, checked before the model loads."""
    for name in ("max_batch", "queue_size"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a TCP port (1..65535)")
    if not math.isfinite(args.timeout) or args.timeout <= 0:
        raise InputError(f"--timeout {args.timeout} must be a number of seconds > 0")
    if not math.isfinite(args.max_wait_ms) or args.max_wait_ms < 0:
        raise InputError(f"--max-wait-ms {args.max_wait_ms} must be a number >= 0")


def _add_serve_verb(verbs: argparse._SubParsersAction) -> None:
    s = verbs.add_parser("serve", help="HTTP API and web page for a model, with request batching",
                         description="Serve a model: JSON API (/docs), Prometheus metrics "
                                     "(/metrics) and a web page (/). See docs/serve.md.")
    s.add_argument("--model", required=True, help="model directory (e.g. RUN/model)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--api-key", help="require this X-API-Key header (or set UTAMOE_API_KEY)")
    s.add_argument("--device", default="cpu", help="torch device (default cpu)")
    s.add_argument("--max-batch", type=int, default=16, help="requests per batch (default 16)")
    s.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long a batch waits for more requests (default 10 ms)")
    s.add_argument("--queue-size", type=int, default=64, help="waiting requests before 503 (default 64)")
    s.add_argument("--timeout", type=float, default=120.0, help="a request's deadline in s (default 120)")
    s.set_defaults(func=cmd_serve)
