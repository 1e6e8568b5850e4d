"""The embedded default's web server.

server.py     the asyncio front: reads each request whole, then a thread runs the app
http11.py     its strict HTTP/1.1 parser and its own error answers
admission.py  per-peer connection cap, and the API key checked from the headers before any body
wsgi.py       the WSGI environ of a parsed request, and the call into the app
"""
