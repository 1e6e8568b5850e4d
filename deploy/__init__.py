"""Deployment: gunicorn and nginx configuration, systemd units, and the loopback cluster launcher.

Run its tools from the checkout root: `python -m deploy.cluster`, `python -m deploy.nginx_conf`.
"""
