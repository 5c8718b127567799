"""The Flask application factory: one Api, one blueprint per resource, one error shape.

``create_app(settings)`` wires the database, the ledger kernel and (on SQLite) an inline
integrator; views reach them through ``current_app.extensions["coalition"]``. Nothing is read from
the environment here except through :class:`api.config.Settings`.
"""

from __future__ import annotations

import http
import json
import logging
import time
from dataclasses import dataclass

from flask import Flask, Response, g, request
from flask_smorest import Api
from flask_smorest.utils import prepare_response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

import ledger.tables  # noqa: F401
import partners.tables  # noqa: F401
from api.config import Settings
from api.errors import PROBLEM_JSON, ProblemSchema, register_error_handlers, request_id
from audit.log import log_integrator
from ledger.db import Database, create_engine
from ledger.keys import load_key
from ledger.note import NoteSigner
from ledger.service import Ledger
from partners.vault import MasterKey

log = logging.getLogger("coalition.api")


@dataclass
class Services:
    """What the views need, built once per application."""

    db: Database
    ledger: Ledger
    signer: NoteSigner | None
    inline_integration: bool
    master_key: MasterKey | None

    def integrate(self) -> None:
        """On SQLite, append new entries to the log right after the write commits."""
        if self.inline_integration and self.signer is not None:
            log_integrator(self.signer).integrate_all(self.db)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, with the request id; never a secret or personal value."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(g, "request_id", None) if _in_request() else None,
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _in_request() -> bool:
    from flask import has_request_context

    return has_request_context()


class ProblemApi(Api):
    """flask-smorest's Api, documenting every error response as RFC 9457 problem+json.

    flask-smorest documents its error responses (``default`` on every operation, 422 where a
    request is parsed) with its own ``Error`` schema as ``application/json``; ours are
    :class:`api.errors.ProblemSchema` as ``application/problem+json``, so the document says so.
    """

    ERROR_SCHEMA = ProblemSchema

    def _register_responses(self) -> None:
        for status in http.HTTPStatus:
            response: dict = {"description": status.phrase}
            if not (100 <= status < 200) and status not in (204, 304):
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, PROBLEM_JSON)
            self.spec.components.response(status.name, response, lazy=True)
        default = {"description": "Any error, as a problem", "schema": self.ERROR_SCHEMA}
        prepare_response(default, self.spec, PROBLEM_JSON)
        self.spec.components.response(self.DEFAULT_ERROR_RESPONSE_NAME, default, lazy=True)


def create_app(settings: Settings | None = None, *, database: Database | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask("coalition")
    app.config.update(
        API_TITLE="Coalition Ledger",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
        JSON_SORT_KEYS=False,
    )
    db = database or Database(create_engine(settings.database_url, role=settings.database_role))
    signer = _signer(settings)
    app.extensions["coalition"] = Services(
        db=db,
        ledger=Ledger(),
        signer=signer,
        inline_integration=db.engine.dialect.name == "sqlite",
        master_key=settings.vault_key(),
    )
    api = ProblemApi(app, spec_kwargs={"info": {"description": _DESCRIPTION}})
    api.spec.components.security_scheme(
        "bearer", {"type": "http", "scheme": "bearer", "description": "API key ck_<id>.<secret>"}
    )
    api.spec.options["security"] = [{"bearer": []}]
    _register_blueprints(api)
    register_error_handlers(app)
    _observe(app)
    return app


def _signer(settings: Settings) -> NoteSigner | None:
    if settings.log_key:
        return NoteSigner.from_skey(settings.log_key)
    if settings.log_key_file.exists():
        return load_key(settings.log_key_file)
    return None


def _register_blueprints(api: Api) -> None:
    from api.resources import (
        admin,
        batches,
        earning,
        health,
        log,
        members,
        points,
        reports,
        rules,
        settlement,
        tiers,
    )

    for module in (health, log, points, earning, members, admin, settlement, batches, rules, tiers):
        api.register_blueprint(module.blp)
    api.register_blueprint(reports.blp)


def _observe(app: Flask) -> None:
    """Request ids, JSON access logs and Prometheus metrics for every request."""
    registry = CollectorRegistry()
    requests = Counter(
        "coalition_http_requests",
        "HTTP requests",
        ["method", "endpoint", "status"],
        registry=registry,
    )
    latency = Histogram(
        "coalition_http_request_seconds", "HTTP request latency", ["endpoint"], registry=registry
    )
    app.extensions["coalition_metrics"] = registry

    @app.before_request
    def _start() -> None:
        request_id()
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-Id"] = request_id()
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        requests.labels(request.method, endpoint, str(response.status_code)).inc()
        latency.labels(endpoint).observe(elapsed)
        log.info(
            "request",
            extra={
                "fields": {
                    "method": request.method,
                    "path": endpoint,
                    "status": response.status_code,
                    "ms": round(elapsed * 1000, 2),
                }
            },
        )
        return response

    @app.get("/metrics")
    def _metrics() -> Response:
        return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")


def configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger("coalition")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


_DESCRIPTION = """A verifiable double-entry ledger for a coalition loyalty currency.

Authenticate with `Authorization: Bearer <api key>`. Every POST that moves points requires an
`Idempotency-Key` header: a retry returns the original response (with `Idempotent-Replayed: true`),
the same key with another payload is a 409. Errors are RFC 9457 `application/problem+json`.
"""
