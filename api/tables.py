"""Tables the API layer owns (no lower layer imports this module).

``request_nonces`` is the replay guard of signed requests (:mod:`api.signatures`): one row per
nonce a partner used, kept only as long as a request created at that time is still accepted. The
primary key makes two concurrent uses of one nonce collide: only one of them commits.
"""

from __future__ import annotations

import sqlalchemy as sa

from ledger.db import UTCDateTime, metadata

request_nonces = sa.Table(
    "request_nonces",
    metadata,
    sa.Column("partner", sa.String(64), primary_key=True),
    sa.Column("nonce", sa.String(128), primary_key=True),
    sa.Column("created", UTCDateTime(), nullable=False, index=True),
)
