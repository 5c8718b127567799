"""Liveness and readiness."""

from __future__ import annotations

import sqlalchemy as sa
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from api.errors import ApiProblem
from api.schemas import HealthSchema
from ledger.db import current_revision

blp = Blueprint("health", __name__, description="Liveness and readiness probes")


@blp.route("/healthz")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    @blp.doc(security=[])
    def get(self) -> dict:
        """The process is up."""
        return {"status": "ok", "detail": {}}


@blp.route("/readyz")
class Ready(MethodView):
    @blp.response(200, HealthSchema)
    @blp.doc(security=[])
    def get(self) -> dict:
        """The database answers and its schema is migrated."""
        db = current_app.extensions["coalition"].db
        try:
            with db.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            revision = current_revision(db.engine)
        except sa.exc.SQLAlchemyError:
            raise ApiProblem(503, "not-ready", "the database is unreachable") from None
        if revision is None:
            raise ApiProblem(503, "not-ready", "the database is not migrated: run coalition init")
        return {"status": "ready", "detail": {"schema": revision}}
