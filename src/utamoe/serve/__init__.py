"""`utamoe serve`: an HTTP API and a web page for a trained model, with dynamic batching.

    app.py       FastAPI routes, errors, limits, streaming (server-sent events)
    handlers.py  what a route does: requests built and checked by the predictor, queued, shaped
    batcher.py   the queue and worker that group concurrent requests into one Predictor.run
    schemas.py   request bodies (typed, bounded, unknown fields refused)
    images.py    images in request bodies (decoded by utamoe.vision.images), as 422s
    metrics.py   Prometheus metrics
    static/      the web page (plain HTML + JavaScript, no build step)
"""
