"""WSGI entry point for gunicorn: ``gunicorn 'api.wsgi:app'`` (``coalition serve`` does this)."""

from __future__ import annotations

from api.app import configure_logging, create_app

configure_logging()
app = create_app()
