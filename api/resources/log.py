"""The verifiable log: signed checkpoints and consistency proofs."""

from __future__ import annotations

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import fields

from api.auth import requires
from api.errors import ApiProblem
from api.schemas import CheckpointSchema, ConsistencyQuery, ConsistencySchema
from audit.publish import latest_cosigned
from ledger.logstore import SqlLogStore
from ledger.receipts import consistency

blp = Blueprint("log", __name__, url_prefix="/v1", description="Checkpoints and proofs")

#: No tree is larger than a signed 64-bit integer (the sizes' column type); a larger size names
#: no checkpoint, and must not reach the database, whose driver would fail to bind it (a 500).
MAX_TREE_SIZE = 2**63 - 1


def _current_log(store: SqlLogStore, log: str | None) -> str:
    origin = log or store.current_log()
    if origin is None:
        raise ApiProblem(404, "no-log", "the ledger has no log yet: run coalition init")
    return origin


def _render(checkpoint) -> dict:  # type: ignore[no-untyped-def]
    return {
        "log": checkpoint.log,
        "size": checkpoint.size,
        "root": checkpoint.root.hex(),
        "note": checkpoint.note,
    }


@blp.route("/checkpoints/latest")
class Latest(MethodView):
    @requires("log.read")
    @blp.response(200, CheckpointSchema)
    def get(self) -> dict:
        """The latest signed checkpoint of the current log."""
        with current_app.extensions["coalition"].db.transaction() as conn:
            store = SqlLogStore(conn)
            found = store.checkpoint(_current_log(store, None))
        if found is None:
            raise ApiProblem(404, "no-checkpoint", "no checkpoint has been signed yet")
        return _render(found)


@blp.route("/checkpoints/<int:size>")
class AtSize(MethodView):
    @requires("log.read")
    @blp.response(200, CheckpointSchema)
    def get(self, size: int) -> dict:
        """The signed checkpoint of the current log at a tree size."""
        if size > MAX_TREE_SIZE:
            raise ApiProblem(404, "no-checkpoint", f"no checkpoint at size {size}")
        with current_app.extensions["coalition"].db.transaction() as conn:
            store = SqlLogStore(conn)
            found = store.checkpoint(_current_log(store, None), size)
        if found is None:
            raise ApiProblem(404, "no-checkpoint", f"no checkpoint at size {size}")
        return _render(found)


@blp.route("/proofs/consistency")
class Consistency(MethodView):
    @requires("log.read")
    @blp.arguments(ConsistencyQuery, location="query")
    @blp.response(200, ConsistencySchema)
    def get(self, query: dict) -> dict:
        """Consistency proof between two checkpoints (RFC 6962), with both signed notes."""
        if query["from_"] > query["to"]:
            raise ApiProblem(422, "invalid-request", "from must not exceed to")
        with current_app.extensions["coalition"].db.transaction() as conn:
            store = SqlLogStore(conn)
            log = _current_log(store, query.get("log"))
            old, new, proof = consistency(conn, log, query["from_"], query["to"])
        return {"log": log, "old": old, "new": new, "proof": [h.hex() for h in proof]}


class CosignedCheckpointSchema(CheckpointSchema):
    witnesses = fields.List(fields.String(), metadata={"description": "witnesses that cosigned"})
    quorum = fields.Integer(metadata={"description": "cosignatures required to publish"})
    published_at = fields.DateTime()


@blp.route("/checkpoints/cosigned")
class Cosigned(MethodView):
    @requires("log.read")
    @blp.response(200, CosignedCheckpointSchema)
    def get(self) -> dict:
        """The latest checkpoint a quorum of witnesses cosigned (note with cosignature lines)."""
        with current_app.extensions["coalition"].db.transaction() as conn:
            found = latest_cosigned(conn)
        if found is None:
            raise ApiProblem(404, "no-cosigned-checkpoint", "no checkpoint has been cosigned yet")
        return found
