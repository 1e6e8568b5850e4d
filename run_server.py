"""The gateway's web tier (a thin entry point; the code lives in the `image_gateway` package).

    python run_server.py                # embedded default: own redis-server + a worker process, :5000
    REDIS_URL=redis://host:6379/0 gunicorn -c deploy/gunicorn.conf.py run_server:app   # web tier only

`gunicorn image_gateway.wsgi:app` is the same app for an installed package.
"""
if __name__ == "__main__":
    from image_gateway.embedded import main
    main()
else:
    from image_gateway.wsgi import app  # noqa: F401  (gunicorn run_server:app)
