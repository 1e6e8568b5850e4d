"""image_gateway: an image-recognition inference gateway (Flask web tier, Redis queue, model workers).

Follow a request: web/predict.py (the route) -> web/jobs.py (queue it, wait) -> protocol/queue.py (the
Lua that moves it) -> worker/loop.py (claim a batch, predict, publish) -> back to web/jobs.py.

web/        the Flask app (web/app.py: create_app), its blueprints and request helpers; static/ is the page
front/      the embedded default's asyncio HTTP front and its strict HTTP/1.1 parser
protocol/   every Redis key (keys.py), wire message, Lua script and the queue and task stores
worker/     the batch loop, the model host (versions, hot update) and the worker process
models/     model specs, runtimes (LiteRT, Keras), the repository, detectors, postprocessing
client/     the command-line client: single images, folders, tasks
settings.py every setting; errors.py every error code; logs.py, metrics.py, imaging.py (decode, resize),
urlfetch.py (URL input behind the SSRF guard), redis_server.py (redis-server children),
processes.py (child processes), embedded.py (the one-command default), wsgi.py (gunicorn's app),
startup.py (process-wide set-up of the entry points)
"""
__version__ = "3.0.0"
