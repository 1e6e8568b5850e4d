"""The web tier: the app factory, its blueprints and the helpers they share (Flask's tutorial layout).

app.py                 create_app: registers the blueprints, attaches resources; no side effects
resources.py           attaches the config, router, metrics, pipelines and task store (like the tutorial's db.py)
envelope.py            request ids, the JSON error envelope, error handlers, the per-request log line
uploads.py             reads an image and its parameters from a multipart or JSON request
jobs.py                queue a job for a served model version and wait for its result (every route's core)
routing.py             which model version a request goes to
predict.py             POST /predict and /v1/models/<name>[/versions/<v>]/predict
discovery.py           GET /v1/models
plans.py, pipelines.py the PIPELINES file's plans, and GET/POST /v1/pipelines
tasks.py, feeder.py    POST/GET/DELETE /v1/tasks, and the feeder thread that queues a task's images
v2.py                  the Open Inference Protocol (/v2)
openapi.py, openapi_operations.py   GET /openapi.json and /docs
ops.py                 health, readiness, status, metrics and the page (static/)
"""
