"""The witness's HTTP face: C2SP tlog-witness ``POST /add-checkpoint``, in text/plain.

A partner runs this (``coalition witness serve``) next to its own state file and key; it shares
nothing with the operator's API or database. The logic lives in :mod:`audit.witness`; this module
only maps a :class:`~audit.witness.WitnessRefusal` to its status code. A 409 carries the witness's
latest cosigned size as ``text/x.tlog.size``, as the spec requires.
"""

from __future__ import annotations

from flask import Flask, Response, request

from audit.witness import MAX_BODY, SIZE_CONTENT_TYPE, Witness, WitnessRefusal

TEXT = "text/plain; charset=utf-8"


def create_witness_app(witness: Witness) -> Flask:
    """A Flask app serving ``witness`` at ``POST /add-checkpoint``."""
    app = Flask("coalition-witness")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["coalition_witness"] = witness

    @app.post("/add-checkpoint")
    def add_checkpoint() -> Response:
        try:
            lines = witness.add_checkpoint(request.get_data(cache=False))
        except WitnessRefusal as refusal:
            if refusal.status == 409 and refusal.latest_size is not None:
                return Response(f"{refusal.latest_size}\n", 409, content_type=SIZE_CONTENT_TYPE)
            return Response(refusal.message + "\n", refusal.status, content_type=TEXT)
        return Response(lines, 200, content_type=TEXT)

    @app.get("/")
    def about() -> Response:
        """The witness's verifier key, so an operator can check what it configured."""
        return Response(witness.vkey + "\n", 200, content_type=TEXT)

    @app.errorhandler(413)
    def too_large(_error: Exception) -> Response:
        return Response(f"request body is larger than {MAX_BODY} bytes\n", 400, content_type=TEXT)

    return app
