"""The embedded default's web server: server.py (the asyncio front) and http11.py (its HTTP/1.1 parser)."""
