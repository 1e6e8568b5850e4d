"""The gateway's Python client (`python simple_request.py`, `gateway-client`).

cli.py     the command line: arguments, exit codes
images.py  single images and folders through POST /predict; the model listing
tasks.py   many images as one task (POST /v1/tasks), its progress and results
http.py    the gateway's URLs, retries after 503, how an answer prints
"""
