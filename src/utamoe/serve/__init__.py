"""`utamoe serve`: an HTTP API and a web page for a trained model, with dynamic batching.

    app.py       FastAPI routes, errors, limits, streaming (server-sent events)
    batcher.py   the queue and worker that group concurrent requests into mixed batches
    schemas.py   request bodies (typed, bounded, unknown fields refused)
    images.py    images in request bodies, with byte and pixel limits
    metrics.py   Prometheus metrics
    static/      the web page (plain HTML + JavaScript, no build step)
"""
