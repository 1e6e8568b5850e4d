"""The web tier's blueprints and the resources they share (Flask's tutorial layout).

resources.py  attaches the config, model spec and queue to the app (like the tutorial's db.py)
envelope.py   request ids, the JSON error envelope, error handlers, the per-request log line
uploads.py    reads an image and its parameters from a multipart or JSON request
predict.py    POST /predict: upload -> queue -> result -> JSON
ops.py        health, readiness, status, metrics and the page
"""
