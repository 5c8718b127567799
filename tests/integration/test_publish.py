"""Publishing checkpoints through witnesses: stored only with a quorum of valid cosignatures.

Two witnesses run in-process (Flask test clients stand in for HTTP), each with its own state file
and key, as partners would run them; the operator's database is the test backend.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from api.app import create_app
from api.config import Settings
from api.witness_app import create_witness_app
from audit.publish import (
    HttpPost,
    Publication,
    WitnessEndpoint,
    cosigned_checkpoints,
    latest_cosigned,
    parse_witness,
    publish_checkpoint,
    witness_heads,
)
from audit.witness import Witness, build_request, create_witness
from ledger.integrator import Integrator
from ledger.logstore import SqlLogStore
from ledger.merkle import MemoryTree
from ledger.note import (
    Checkpoint,
    CosignatureSigner,
    NoteSigner,
    open_checkpoint,
    verify_cosignature,
)
from partners import directory

from .conftest import SUPER, Books, new_key

ORIGIN = "coalition.test/ledger"


class Partners:
    """Two witnesses, their HTTP clients and the endpoints the operator configures."""

    def __init__(self, tmp_path: Path, log_key: NoteSigner) -> None:
        self.witnesses: dict[str, Witness] = {}
        self.clients: dict[str, FlaskClient] = {}
        for name in ("w1", "w2"):
            witness = create_witness(
                tmp_path / f"{name}.db", f"partner-{name}.example/witness", [log_key.verifier]
            )
            url = f"http://{name}.partner.example/witness"
            self.witnesses[url] = witness
            self.clients[url] = create_witness_app(witness).test_client()
        self.endpoints = [
            WitnessEndpoint(url, w.signer.verifier) for url, w in self.witnesses.items()
        ]
        self.calls: list[tuple[str, str]] = []

    def http_post(self, url: str, body: bytes) -> tuple[int, str, bytes]:
        prefix, _, path = url.rpartition("/")
        assert path == "add-checkpoint"
        self.calls.append((prefix, body.decode().split("\n", 1)[0]))
        response = self.clients[prefix].post(
            "/add-checkpoint", data=body, content_type="text/plain"
        )
        return response.status_code, response.content_type, response.get_data()

    def witness(self, n: int) -> Witness:
        return list(self.witnesses.values())[n]


@pytest.fixture
def log_key() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def partners(tmp_path: Path, log_key: NoteSigner) -> Partners:
    return Partners(tmp_path, log_key)


def grow(books: Books, log_key: NoteSigner, count: int) -> int:
    """Book ``count`` entries and integrate them; the new size of the log."""
    for n in range(count):
        member = ("alice", "bob")[n % 2]
        books.earn(
            SUPER, new_key(), member=member, funding={"SUPER": 10 + n}, business_time=books.clock()
        )
    Integrator(log_key).integrate_all(books.db)
    with books.db.engine.connect() as conn:
        latest = SqlLogStore(conn).checkpoint(ORIGIN)
    assert latest is not None
    return latest.size


def publish(
    books: Books,
    partners: Partners,
    quorum: int,
    *,
    endpoints: list[WitnessEndpoint] | None = None,
    http_post: HttpPost | None = None,
) -> Publication:
    with books.db.transaction() as conn:
        return publish_checkpoint(
            conn, None, endpoints or partners.endpoints, quorum, http_post or partners.http_post
        )


def stored(books: Books) -> list[sa.Row]:
    with books.db.engine.connect() as conn:
        return conn.execute(sa.select(cosigned_checkpoints)).all()


def check_cosigned(note: str, log_key: NoteSigner, endpoints: list[WitnessEndpoint]) -> int:
    """The note still opens under the log key alone, and every witness's line verifies."""
    checkpoint, signed = open_checkpoint(note, [log_key.verifier], origin=ORIGIN)
    lines = note.split("\n\n", 1)[1].splitlines()
    for endpoint in endpoints:
        (line,) = [x for x in lines if x.startswith(f"\u2014 {endpoint.name} ")]
        verify_cosignature(line, signed.text, endpoint.verifier)
    return checkpoint.size


# -- quorum met ----------------------------------------------------------------------------------


def test_with_quorum_the_checkpoint_is_stored_with_both_cosignatures(
    books: Books, log_key: NoteSigner, partners: Partners
) -> None:
    size = grow(books, log_key, 3)
    result = publish(books, partners, 2)
    assert result.published, result.outcomes
    assert result.size == size
    assert sorted(result.witnesses) == sorted(e.name for e in partners.endpoints)
    (row,) = stored(books)
    assert (row.log, row.size, row.quorum) == (ORIGIN, size, 2)
    assert check_cosigned(row.note, log_key, partners.endpoints) == size
    with books.db.engine.connect() as conn:
        latest = latest_cosigned(conn)
    assert latest is not None
    assert (latest["size"], latest["note"]) == (size, row.note)


def test_the_next_publication_proves_consistency_from_each_witness_size(
    books: Books, log_key: NoteSigner, partners: Partners
) -> None:
    first = grow(books, log_key, 2)
    assert publish(books, partners, 2).published
    second = grow(books, log_key, 5)
    result = publish(books, partners, 2)
    assert result.published, result.outcomes
    assert partners.calls[-2:] == [(e.url, f"old {first}") for e in partners.endpoints]
    assert [r.size for r in stored(books)] == [first, second]
    with books.db.engine.connect() as conn:
        heads = conn.execute(sa.select(witness_heads.c.size)).scalars().all()
        assert latest_cosigned(conn)["size"] == second  # type: ignore[index]
    assert heads == [second, second]


def test_publishing_the_same_size_again_asks_no_witness(
    books: Books, log_key: NoteSigner, partners: Partners
) -> None:
    grow(books, log_key, 1)
    assert publish(books, partners, 2).published
    calls = len(partners.calls)
    again = publish(books, partners, 2)
    assert again.published
    assert again.already
    assert len(partners.calls) == calls
    assert len(stored(books)) == 1


def test_a_409_is_retried_once_from_the_size_the_witness_reports(
    books: Books, log_key: NoteSigner, partners: Partners
) -> None:
    """A witness fed by someone else (or a lost head) reports its size; the retry then succeeds."""
    first = grow(books, log_key, 2)
    with books.db.engine.connect() as conn:
        note = SqlLogStore(conn).checkpoint(ORIGIN, first)
    assert note is not None
    partners.witness(0).add_checkpoint(build_request(0, [], note.note))
    grow(books, log_key, 3)
    result = publish(books, partners, 2)
    assert result.published, result.outcomes
    w1 = partners.endpoints[0].url
    assert [c for c in partners.calls if c[0] == w1] == [(w1, "old 0"), (w1, f"old {first}")]


# -- quorum not met ------------------------------------------------------------------------------


def test_a_witness_refusing_a_fork_leaves_quorum_2_unmet_and_nothing_published(
    books: Books, log_key: NoteSigner, partners: Partners
) -> None:
    """Witness 2 has cosigned another tree at this size: it answers 409 and nothing is stored."""
    size = grow(books, log_key, 4)
    forked = MemoryTree(f"another history {i}".encode() for i in range(size))
    fork_note = log_key.sign(Checkpoint(ORIGIN, size, forked.root()).text())
    partners.witness(1).add_checkpoint(build_request(0, [], fork_note))

    result = publish(books, partners, 2)
    assert not result.published
    assert result.note is None
    assert stored(books) == []
    with books.db.engine.connect() as conn:
        assert latest_cosigned(conn) is None
    good, refused = result.outcomes
    assert good.ok
    assert (refused.ok, refused.status) == (False, 409)
    assert result.witnesses == [partners.endpoints[0].name]

    one_of_two = publish(books, partners, 1)  # the same fork under quorum 1 still publishes
    assert one_of_two.published
    assert one_of_two.witnesses == [partners.endpoints[0].name]


def test_cosignatures_from_the_wrong_key_do_not_count(
    books: Books, log_key: NoteSigner, partners: Partners
) -> None:
    """The operator configured another vkey for witness 2: its (genuine) line is not counted."""
    grow(books, log_key, 2)
    wrong = CosignatureSigner.generate(partners.endpoints[1].name).verifier
    endpoints = [partners.endpoints[0], WitnessEndpoint(partners.endpoints[1].url, wrong)]
    result = publish(books, partners, 2, endpoints=endpoints)
    assert not result.published
    assert stored(books) == []
    assert "no valid cosignature" in result.outcomes[1].detail


def test_an_unreachable_witness_does_not_count(
    books: Books, log_key: NoteSigner, partners: Partners
) -> None:
    grow(books, log_key, 1)
    down = partners.endpoints[1].url

    def flaky(url: str, body: bytes) -> tuple[int, str, bytes]:
        if url.startswith(down):
            raise ConnectionRefusedError("connection refused")
        return partners.http_post(url, body)

    assert not publish(books, partners, 2, http_post=flaky).published
    assert publish(books, partners, 1, http_post=flaky).published


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("quorum", [0, 3])
def test_a_quorum_outside_1_to_n_is_refused(
    books: Books, log_key: NoteSigner, partners: Partners, quorum: int
) -> None:
    grow(books, log_key, 1)
    with pytest.raises(Exception, match="quorum"):
        publish(books, partners, quorum)


def test_a_witness_is_given_as_url_equals_vkey(partners: Partners) -> None:
    endpoint = partners.endpoints[0]
    parsed = parse_witness(f"{endpoint.url}?a=b={endpoint.verifier.vkey}")
    assert parsed.url == f"{endpoint.url}?a=b"
    assert parsed.verifier.vkey == endpoint.verifier.vkey
    assert parse_witness(f"{endpoint.url}={endpoint.verifier.vkey}").add_checkpoint_url == (
        f"{endpoint.url}/add-checkpoint"
    )


# -- the API -------------------------------------------------------------------------------------


def test_the_api_serves_the_latest_cosigned_checkpoint(
    books: Books, log_key: NoteSigner, partners: Partners, database_url: str, tmp_path: Path
) -> None:
    """GET /v1/checkpoints/cosigned: 404 before any publication, then the cosigned note."""
    settings = Settings(
        database_url=database_url, log_key=log_key.skey, master_key_file=tmp_path / "absent.key"
    )
    client = create_app(settings, database=books.db).test_client()
    with books.db.transaction() as conn:
        issued = directory.issue_credential(
            conn, staff="audrey", role="auditor", label=None, now=datetime.now(UTC)
        )
    headers = {"Authorization": f"Bearer {issued.token}"}
    grow(books, log_key, 2)
    assert client.get("/v1/checkpoints/cosigned", headers=headers).status_code == 404
    published = publish(books, partners, 2)
    response = client.get("/v1/checkpoints/cosigned", headers=headers)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["log"], body["size"], body["note"]) == (ORIGIN, published.size, published.note)
    assert body["quorum"] == 2
    assert sorted(body["witnesses"]) == sorted(e.name for e in partners.endpoints)
    assert check_cosigned(body["note"], log_key, partners.endpoints) == published.size
    assert client.get("/v1/checkpoints/cosigned").status_code == 401
