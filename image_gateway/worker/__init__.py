"""The model worker.

loop.py     Worker: claim a batch, predict it in one call, publish each result, heartbeat; WorkerGroup
host.py     ModelHost: every model version one process serves, kept in step with the repository
threads.py  how many batches run at once, and TensorFlow's thread counts
main.py     the worker process (`python classify_worker.py`, `gateway-worker`)
"""
