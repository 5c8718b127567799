"""Members on the real store: enrollment, cards, references, consents, access and erasure.

Runs on SQLite, and on PostgreSQL when ``COALITION_TEST_DATABASE_URL`` is set. Each step runs in
its own transaction, as the API runs it, so a refused erasure commits its record exactly as it
would in production. Partners are inserted as plain rows: onboarding is tested elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from audit.verify import verify_database
from ledger import tables as lt
from ledger.consistency import check_consistency
from ledger.db import Database
from ledger.errors import InvalidRequest
from ledger.integrator import Integrator
from ledger.model import EntryKind
from ledger.note import NoteSigner
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Ledger
from partners import members as m
from partners import tables as pt
from partners import vault
from partners.errors import (
    CustomerRefTaken,
    ErasureRefused,
    InvalidField,
    MasterKeyUnavailable,
    MemberClosed,
    PartnerSuspended,
    PersonalDataErased,
    UnknownMember,
    UnknownPartner,
    VaultIntegrityError,
)
from partners.vault import Keyring, MasterKey, Sealed

T = TypeVar("T")

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SUPER = Actor(credential="key-super", partner="SUPER")
DEPT = Actor(credential="key-dept", partner="DEPT")
RAIL = Actor(credential="key-rail", partner="RAIL")
PRIVACY_OFFICER = "staff-priya"

ZOE = {
    "name": "Zoé Lefèvre-Quintaine",
    "email": "zoe.quintaine@example.org",
    "birth_date": "1987-11-23",
    "phone": "+33 6 98 76 54 32",
}
BRUNO = {"name": "Bruno Ostermann", "email": "bruno.ostermann@example.net"}


class Coalition:
    """Partners SUPER, DEPT, RAIL (active) and BANK (suspended) over one database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.now = START
        self.master = MasterKey.generate("mk-test-1")
        self.ledger = Ledger(clock=lambda: self.now)

    def run(self, work: Callable[[Any], T]) -> T:
        """Run ``work(conn)`` in its own transaction."""
        with self.db.transaction() as conn:
            return work(conn)

    def enroll(
        self,
        *,
        by: str | None = "SUPER",
        personal: dict[str, Any] | None = None,
        customer_ref: str | None = None,
        **kw: Any,
    ) -> m.Member:
        return self.run(
            lambda conn: m.enroll(
                conn,
                by=by,
                personal=personal,
                customer_ref=customer_ref,
                now=self.now,
                master_key=self.master,
                ledger=self.ledger,
                **kw,
            )
        )

    def earn(self, member: str, points: int, *, actor: Actor = SUPER, **kw: Any) -> UUID:
        booking = self.run(
            lambda conn: self.ledger.earn(
                SqlLedgerStore(conn),
                actor,
                f"k-{uuid4()}",
                member=member,
                funding={actor.partner: points},
                business_time=self.now,
                **kw,
            )
        )
        return booking.entry.id

    def hold(self, member: str, points: int) -> UUID:
        booking = self.run(
            lambda conn: self.ledger.hold(
                SqlLedgerStore(conn),
                RAIL,
                f"k-{uuid4()}",
                member=member,
                points=points,
                business_time=self.now,
            )
        )
        return booking.entry.id

    def erase(self, member: str, **kw: Any) -> m.Erasure:
        kw.setdefault("reason", "member request #4711 (Art. 17)")
        return self.run(
            lambda conn: m.erase(
                conn, member, now=self.now, by=PRIVACY_OFFICER, ledger=self.ledger, **kw
            )
        )

    def balance(self, account: str) -> int:
        return self.run(lambda conn: self.ledger.balance(SqlLedgerStore(conn), account))

    def balances(self, member: str) -> dict[str, int]:
        return {r: self.balance(f"member:{member}:{r}") for r in ("available", "pending", "held")}


@pytest.fixture
def coalition(db: Database) -> Iterator[Coalition]:
    """Open books with four partners; after each test the ledger must still be consistent."""
    world = Coalition(db)

    def setup(conn: Any) -> None:
        world.ledger.open_system_accounts(SqlLedgerStore(conn))
        for code, status in (("SUPER", "active"), ("DEPT", "active"), ("RAIL", "active"),
                             ("BANK", "suspended")):  # fmt: skip
            conn.execute(
                pt.partners.insert().values(
                    code=code,
                    legal_name=f"{code} SA",
                    iban="FR7630006000011234567890189",
                    bic="AGRIFRPP",
                    status=status,
                    redemption_blocked=False,
                    created_at=START,
                    version=1,
                )
            )
            world.ledger.open_partner(SqlLedgerStore(conn), code)

    world.run(setup)
    yield world
    with db.engine.connect() as conn:
        assert check_consistency(conn) == []


# -- enrollment and lookups ---------------------------------------------------------------------


def test_a_partner_enrolls_a_member_with_card_ref_personal_data_and_accounts(
    coalition: Coalition,
) -> None:
    """A partner enrolls: pseudonymous id, Luhn card, open accounts, sealed vault, linked ref."""
    member = coalition.enroll(personal=ZOE, customer_ref="SUP-000123", terms_version="2026-01")
    assert member.id.startswith("m_")
    assert len(member.id) == 26
    assert m.luhn_valid(member.card_number)
    assert member.card_number.startswith(m.CARD_PREFIX)
    assert (member.status, member.enrolled_by, member.version) == ("active", "SUPER", 1)
    assert coalition.balances(member.id) == {"available": 0, "pending": 0, "held": 0}
    assert coalition.run(lambda c: m.personal_data(c, member.id, coalition.master)) == ZOE
    refs = coalition.run(lambda c: m.customer_refs(c, member.id))
    assert [(r.partner, r.customer_ref) for r in refs] == [("SUPER", "SUP-000123")]
    consents = coalition.run(lambda c: m.current_consents(c, member.id))
    assert consents["terms"].granted
    assert consents["terms"].recorded_by == "SUPER"


def test_the_operator_enrolls_a_member_without_personal_data(coalition: Coalition) -> None:
    """The operator enrolls with no partner; with no personal data given, no vault row is made."""
    member = coalition.enroll(by=None)
    assert member.enrolled_by is None
    assert coalition.run(lambda c: m.personal_data(c, member.id, coalition.master)) == {}
    with coalition.db.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(pt.member_vault)) == 0


def test_enrollment_refuses_bad_input_and_leaves_nothing_behind(coalition: Coalition) -> None:
    """Unknown or suspended partner, an operator's customer ref, a disallowed field: no member."""
    with pytest.raises(UnknownPartner):
        coalition.enroll(by="NOPE")
    with pytest.raises(PartnerSuspended):
        coalition.enroll(by="BANK")
    with pytest.raises(InvalidField):
        coalition.enroll(by=None, customer_ref="X-1")
    with pytest.raises(InvalidField) as refused:
        coalition.enroll(personal={**ZOE, "address": "1 rue de la Paix"})
    assert refused.value.field == "personal.address"
    with coalition.db.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(pt.members)) == 0


def test_members_are_found_by_card_and_a_mistyped_card_is_refused(coalition: Coalition) -> None:
    """A card finds its member (spaces allowed); a bad check digit is an invalid request."""
    member = coalition.enroll()
    card = member.card_number
    grouped = " ".join(card[i : i + 4] for i in range(0, 16, 4))
    assert coalition.run(lambda c: m.member_by_card(c, grouped)).id == member.id
    typo = card[:-1] + str((int(card[-1]) + 1) % 10)
    with pytest.raises(InvalidRequest):
        coalition.run(lambda c: m.member_by_card(c, typo))
    with pytest.raises(UnknownMember):
        coalition.run(lambda c: m.member_by_card(c, m.card_number(99_999_999_999)))
    with pytest.raises(UnknownMember):
        coalition.run(lambda c: m.member(c, "m_" + "0" * 24))


def test_partners_link_their_own_customer_references(coalition: Coalition) -> None:
    """Each partner links its reference; relinking is a no-op; another member's ref is refused."""
    alice, bob = coalition.enroll(customer_ref="SUP-1"), coalition.enroll(customer_ref="SUP-2")

    def link(member: str, partner: str, ref: str) -> Callable[[Any], m.CustomerRef]:
        return lambda c: m.link_customer_ref(
            c, member, partner=partner, customer_ref=ref, now=coalition.now
        )

    coalition.run(link(alice.id, "DEPT", "D-77"))
    coalition.run(link(alice.id, "DEPT", "D-77"))
    refs = coalition.run(lambda c: m.customer_refs(c, alice.id))
    assert [(r.partner, r.customer_ref) for r in refs] == [("DEPT", "D-77"), ("SUPER", "SUP-1")]
    found = coalition.run(lambda c: m.member_by_customer_ref(c, "DEPT", "D-77"))
    assert found.id == alice.id
    with pytest.raises(CustomerRefTaken):
        coalition.run(link(bob.id, "SUPER", "SUP-1"))
    with pytest.raises(CustomerRefTaken):
        coalition.enroll(customer_ref="SUP-1")  # refused before anything is written
    assert count(coalition.db, pt.members) == 2
    with pytest.raises(UnknownPartner):
        coalition.run(link(bob.id, "NOPE", "N-1"))
    with pytest.raises(UnknownMember):
        coalition.run(lambda c: m.member_by_customer_ref(c, "RAIL", "SUP-1"))


def test_status_changes_and_closing_is_final(coalition: Coalition) -> None:
    """A member can be blocked and reactivated; once closed, nothing about it changes."""
    member = coalition.enroll()
    assert coalition.run(lambda c: m.set_status(c, member.id, "blocked")).status == "blocked"
    active = coalition.run(lambda c: m.set_status(c, member.id, "active"))
    assert (active.status, active.version) == ("active", 3)
    coalition.run(lambda c: m.set_status(c, member.id, "closed"))
    with pytest.raises(MemberClosed):
        coalition.run(lambda c: m.set_status(c, member.id, "active"))
    with pytest.raises(InvalidField):
        coalition.run(lambda c: m.set_status(c, member.id, "asleep"))


# -- consents and what partners see -------------------------------------------------------------


def test_consent_history_is_kept_and_the_latest_decision_is_in_force(
    coalition: Coalition,
) -> None:
    """Granting then withdrawing marketing keeps both rows; the withdrawal is what counts."""
    member = coalition.enroll(terms_version="2026-01", consents={"marketing": True})
    coalition.now += timedelta(days=30)
    coalition.run(
        lambda c: m.record_consent(
            c,
            member.id,
            purpose="marketing",
            granted=False,
            terms_version="2026-01",
            now=coalition.now,
            by="key-super",
        )
    )
    history = coalition.run(lambda c: m.consent_history(c, member.id))
    assert [(h.purpose, h.granted) for h in history] == [
        ("terms", True),
        ("marketing", True),
        ("marketing", False),
    ]
    current = coalition.run(lambda c: m.current_consents(c, member.id))
    assert not current["marketing"].granted
    assert current["marketing"].recorded_at == START + timedelta(days=30)
    assert "profiling" not in current
    with pytest.raises(InvalidField):
        coalition.run(
            lambda c: m.record_consent(
                c,
                member.id,
                purpose="telepathy",
                granted=True,
                terms_version="1",
                now=coalition.now,
                by=None,
            )
        )


def test_partners_see_personal_data_only_as_the_member_consented(coalition: Coalition) -> None:
    """Enrolling partner after terms; another serving partner only with sharing; others never."""
    member = coalition.enroll(personal=ZOE, customer_ref="SUP-1")

    def visible(partner: str) -> bool:
        return coalition.run(lambda c: m.visible_to_partner(c, member.id, partner))

    def consent(purpose: str, granted: bool) -> None:
        coalition.run(
            lambda c: m.record_consent(
                c,
                member.id,
                purpose=purpose,
                granted=granted,
                terms_version="2026-01",
                now=coalition.now,
                by=None,
            )
        )

    assert not visible("SUPER")  # no terms accepted yet
    consent("terms", True)
    assert visible("SUPER")
    coalition.run(
        lambda c: m.link_customer_ref(
            c, member.id, partner="DEPT", customer_ref="D-1", now=coalition.now
        )
    )
    assert not visible("DEPT")  # serves the member, but no sharing consent
    consent("sharing", True)
    assert visible("DEPT")
    assert not visible("RAIL")  # sharing, but RAIL does not serve the member
    consent("sharing", False)
    assert not visible("DEPT")
    coalition.run(lambda c: m.set_status(c, member.id, "closed"))
    assert not visible("SUPER")


# -- the right of access ------------------------------------------------------------------------


def test_export_contains_everything_about_the_member_and_nothing_of_others(
    coalition: Coalition,
) -> None:
    """The export has profile, data, consents, refs, balances, lots, entries; no trace of bob."""
    alice = coalition.enroll(personal=ZOE, customer_ref="SUP-1", terms_version="2026-01")
    bob = coalition.enroll(
        by="DEPT", personal=BRUNO, customer_ref="DEPT-BRUNO", terms_version="2026-01"
    )
    coalition.earn(alice.id, 500)
    coalition.now += timedelta(minutes=1)
    coalition.earn(alice.id, 40, actor=DEPT, pending_until=START + timedelta(days=14))
    coalition.now += timedelta(minutes=1)
    coalition.earn(bob.id, 300, actor=DEPT)
    coalition.now += timedelta(minutes=1)
    coalition.run(
        lambda c: coalition.ledger.transfer(
            SqlLedgerStore(c),
            SUPER,
            "t-1",
            from_member=alice.id,
            to_member=bob.id,
            points=100,
            business_time=coalition.now,
        )
    )
    coalition.now += timedelta(minutes=1)
    coalition.hold(alice.id, 50)

    export = coalition.run(lambda c: m.export_member(c, alice.id, coalition.master))
    text = json.dumps(export, ensure_ascii=False)
    assert json.loads(text) == export  # JSON-ready as is

    assert export["member"]["id"] == alice.id
    assert export["member"]["card_number"] == alice.card_number
    assert export["personal_data"] == ZOE
    assert export["personal_data_state"] == "present"
    assert [(c["purpose"], c["granted"]) for c in export["consents"]] == [("terms", True)]
    assert export["customer_refs"][0]["customer_ref"] == "SUP-1"
    assert export["balances"] == {"available": 350, "pending": 40, "held": 50}
    assert sorted(lot["amount"] for lot in export["lots"]) == [40, 500]
    kinds = [e["kind"] for e in export["entries"]]
    assert kinds == ["EARN", "EARN", "TRANSFER", "HOLD"]
    transfer = export["entries"][2]
    assert transfer["points"] == {"available": -100}
    for trace in (bob.id, bob.card_number, "DEPT-BRUNO", *BRUNO.values()):
        assert trace not in text


# -- erasure ------------------------------------------------------------------------------------


def every_value_in_the_database(db: Database) -> Iterator[tuple[str, str, bytes]]:
    """Every column of every row of every table, as raw bytes, read with plain SQL."""
    with db.engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            result = conn.exec_driver_sql(f'SELECT * FROM "{table}"')
            columns = list(result.keys())
            for row in result:
                for column, value in zip(columns, row, strict=True):
                    yield table, column, as_bytes(value)


def as_bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False).encode()
    return str(value).encode()


def secrets_of(personal: dict[str, str]) -> list[bytes]:
    """The plaintext forms to look for: each value, its lower case, and its JSON-escaped form."""
    forms = []
    for value in personal.values():
        forms += [value.encode(), value.lower().encode(), json.dumps(value)[1:-1].encode()]
    return forms


def test_erasure_leaves_no_readable_personal_data_yet_the_ledger_verifies(
    coalition: Coalition, database_url: str
) -> None:
    """After erasure no column of any table holds the data, the vault never opens, books add up."""
    alice = coalition.enroll(personal=ZOE, customer_ref="SUP-1", terms_version="2026-01")
    bob = coalition.enroll(by="DEPT", personal=BRUNO, terms_version="2026-01")
    coalition.earn(alice.id, 700)
    coalition.earn(alice.id, 200, actor=DEPT)
    coalition.earn(alice.id, 60, actor=DEPT, pending_until=START + timedelta(days=14))
    coalition.earn(bob.id, 90, actor=DEPT)
    hold = coalition.hold(alice.id, 30)
    coalition.run(
        lambda c: coalition.ledger.capture(
            SqlLedgerStore(c), RAIL, "cap-1", hold_id=hold, points=30, business_time=coalition.now
        )
    )
    breakage_before = coalition.balance("program:breakage")
    coalition.now += timedelta(days=2)

    erasure = coalition.erase(alice.id)

    # The outcome: done, 870 available + 60 pending forfeited by ONE EXPIRE entry, partners named.
    assert erasure.outcome == "done"
    assert erasure.notify_partners == ("SUPER",)
    assert coalition.balances(alice.id) == {"available": 0, "pending": 0, "held": 0}
    assert coalition.balance("program:breakage") - breakage_before == 930
    forfeit = coalition.run(lambda c: SqlLedgerStore(c).load_entry(erasure.forfeit_entry))
    assert (forfeit.kind, forfeit.reason, forfeit.credential) == (
        EntryKind.EXPIRE,
        "erasure",
        PRIVACY_OFFICER,
    )
    assert forfeit.amount_on("program:breakage") == 930
    assert {lot.lot.funder for lot in coalition.run(lambda c: forfeited_lots(c, forfeit))} == {
        "SUPER",
        "DEPT",
    }

    # The member is closed, unlinked, its consents withdrawn, its data gone for the application.
    closed = coalition.run(lambda c: m.member(c, alice.id))
    assert closed.status == "closed"
    assert coalition.run(lambda c: m.customer_refs(c, alice.id)) == []
    assert not any(
        c.granted for c in coalition.run(lambda c: m.current_consents(c, alice.id)).values()
    )
    with pytest.raises(PersonalDataErased):
        coalition.run(lambda c: m.personal_data(c, alice.id, coalition.master))
    export = coalition.run(lambda c: m.export_member(c, alice.id, coalition.master))
    assert (export["personal_data"], export["personal_data_state"]) == (None, "erased")
    assert export["erasures"][0]["outcome"] == "done"

    # Full database access: the plaintext is nowhere, in any column of any table.
    assert Integrator(NoteSigner.generate("test/log")).integrate_all(coalition.db) > 0
    plaintexts = secrets_of(ZOE) + secrets_of(BRUNO)  # bob's was never stored in clear either
    bob_vault, seen_bob = coalition_vault(coalition, bob.id), False
    for table, column, raw in every_value_in_the_database(coalition.db):
        haystack = raw.lower()
        for secret in plaintexts:
            assert secret.lower() not in haystack, (table, column)
        seen_bob |= table == "member_vault" and raw == bob_vault
    assert seen_bob  # the scan does read the vault rows
    if database_url.startswith("sqlite:///"):
        path = Path(database_url.removeprefix("sqlite:///"))
        files = [path, *path.parent.glob(path.name + "-*")]
        for raw in (f.read_bytes().lower() for f in files):
            for secret in plaintexts:
                assert secret.lower() not in raw

    # ... and the ciphertext that stays cannot be opened, not even holding the master key.
    with coalition.db.engine.connect() as conn:
        row = conn.execute(
            sa.select(pt.member_vault).where(pt.member_vault.c.member_id == alice.id)
        ).one()
    assert row.wrapped_key is None
    sealed = Sealed(None, row.master_key_id, bytes(row.ciphertext))
    with pytest.raises(PersonalDataErased):
        vault.unseal(alice.id, sealed, coalition.master)
    for guess in (coalition.master.secret, bytes(32)):
        with pytest.raises(InvalidTag):
            AESGCM(guess).decrypt(
                sealed.ciphertext[1:13],
                sealed.ciphertext[13:],
                b"coalition/vault/data/v1\x00" + alice.id.encode(),
            )
    # Bob is untouched.
    assert coalition.run(lambda c: m.personal_data(c, bob.id, coalition.master)) == BRUNO

    # The journal still verifies, end to end, and the books still balance.
    with coalition.db.engine.connect() as conn:
        report = verify_database(conn)
        assert report.ok, report.to_text()
        assert report.leaves > 0
        assert check_consistency(conn) == []


def coalition_vault(coalition: Coalition, member_id: str) -> bytes:
    with coalition.db.engine.connect() as conn:
        return bytes(
            conn.scalar(
                sa.select(pt.member_vault.c.ciphertext).where(
                    pt.member_vault.c.member_id == member_id
                )
            )
        )


def forfeited_lots(conn: Any, entry: Any) -> list[Any]:
    return SqlLedgerStore(conn).lots([move.lot_id for move in entry.lot_moves])


def test_erasure_is_refused_with_a_recorded_reason_while_a_hold_is_open(
    coalition: Coalition,
) -> None:
    """An open hold at a till blocks erasure; the refusal is recorded and nothing else changes."""
    alice = coalition.enroll(personal=ZOE, customer_ref="SUP-1", terms_version="2026-01")
    coalition.earn(alice.id, 100)
    hold = coalition.hold(alice.id, 40)

    with pytest.raises(ErasureRefused) as refused:
        coalition.erase(alice.id)
    assert refused.value.fields()["reasons"] == ["open holds: 1 hold(s) at a till"]

    with coalition.db.engine.connect() as conn:
        rows = conn.execute(sa.select(pt.erasures).where(pt.erasures.c.member_id == alice.id)).all()
    assert [(r.outcome, r.decided_by, r.forfeit_entry) for r in rows] == [
        ("refused", PRIVACY_OFFICER, None)
    ]
    assert "open holds" in rows[0].reason
    assert coalition.run(lambda c: m.personal_data(c, alice.id, coalition.master)) == ZOE
    assert coalition.run(lambda c: m.member(c, alice.id)).status == "active"
    assert coalition.balances(alice.id) == {"available": 60, "pending": 0, "held": 40}

    # Once the till voids its hold the erasure goes through, and both decisions stay on record.
    coalition.run(
        lambda c: coalition.ledger.void(
            SqlLedgerStore(c), RAIL, "void-1", hold_id=hold, business_time=coalition.now
        )
    )
    assert coalition.erase(alice.id).outcome == "done"
    export = coalition.run(lambda c: m.export_member(c, alice.id, coalition.master))
    assert [e["outcome"] for e in export["erasures"]] == ["refused", "done"]


def test_policy_blockers_and_balance_rule_refuse_erasure(coalition: Coalition) -> None:
    """A blocked member, pending points (when listed) or a positive balance (when set) refuse."""
    blocked = coalition.enroll()
    coalition.run(lambda c: m.set_status(c, blocked.id, "blocked"))
    with pytest.raises(ErasureRefused, match="member blocked"):
        coalition.erase(blocked.id)

    pending = coalition.enroll()
    coalition.earn(pending.id, 10, pending_until=START + timedelta(days=14))
    strict = m.ErasurePolicy(blockers=frozenset({m.Blocker.PENDING_POINTS}))
    with pytest.raises(ErasureRefused, match="pending points: 10 points"):
        coalition.erase(pending.id, policy=strict)
    with pytest.raises(ErasureRefused, match="positive balance: 10 points"):
        coalition.erase(pending.id, policy=m.ErasurePolicy(balance="refuse_if_positive"))

    with coalition.db.engine.connect() as conn:
        outcomes = conn.scalars(sa.select(pt.erasures.c.outcome)).all()
    assert outcomes == ["refused", "refused", "refused"]


def test_erasure_is_idempotent_and_needs_no_points(coalition: Coalition) -> None:
    """A member with no points is erased without a journal entry; erasing again changes nothing."""
    member = coalition.enroll(personal=ZOE)
    entries_before = count(coalition.db, lt.entries)
    first = coalition.erase(member.id)
    assert first.forfeit_entry is None
    again = coalition.erase(member.id, reason="asked twice")
    assert (again.outcome, again.reason, again.decided_at) == (
        "done",
        first.reason,
        first.decided_at,
    )
    assert count(coalition.db, lt.entries) == entries_before
    assert count(coalition.db, pt.erasures) == 1


def test_a_closed_member_cannot_be_changed_after_erasure(coalition: Coalition) -> None:
    """Consents, references and personal data of an erased member are refused."""
    member = coalition.enroll(personal=ZOE, customer_ref="SUP-1")
    coalition.erase(member.id)
    with pytest.raises(MemberClosed):
        coalition.run(
            lambda c: m.record_consent(
                c,
                member.id,
                purpose="terms",
                granted=True,
                terms_version="1",
                now=coalition.now,
                by=None,
            )
        )
    with pytest.raises(MemberClosed):
        coalition.run(
            lambda c: m.link_customer_ref(
                c, member.id, partner="SUPER", customer_ref="SUP-1", now=coalition.now
            )
        )
    with pytest.raises(MemberClosed):
        coalition.run(
            lambda c: m.set_personal_data(
                c, member.id, ZOE, now=coalition.now, master_key=coalition.master
            )
        )


def test_forfeiture_is_idempotent_under_its_key(coalition: Coalition) -> None:
    """Ledger.forfeit replays the original entry for the same key instead of booking twice."""
    member = coalition.enroll()
    coalition.earn(member.id, 25)

    def forfeit(c: Any) -> Any:
        return coalition.ledger.forfeit(
            SqlLedgerStore(c),
            Actor(credential=PRIVACY_OFFICER),
            f"erasure:{member.id}",
            member=member.id,
            business_time=coalition.now,
            reason="erasure",
        )

    first, replay = coalition.run(forfeit), coalition.run(forfeit)
    assert replay.replayed
    assert replay.entry.id == first.entry.id
    assert coalition.balance("program:breakage") == 25


# -- master-key rotation ------------------------------------------------------------------------


def test_master_key_rotation_rewraps_every_vault_record(coalition: Coalition) -> None:
    """After rotation every member's data opens with the new key alone; erased rows stay shut."""
    old = coalition.master
    members = [coalition.enroll(personal={"name": f"Member {i}"}) for i in range(3)]
    erased = coalition.enroll(personal=ZOE)
    coalition.erase(erased.id)
    new = MasterKey.generate("mk-test-2")
    ring = Keyring(current=new, retired=(old,))

    assert coalition.run(lambda c: m.rotate_master_key(c, ring, now=coalition.now, limit=2)) == 2
    assert coalition.run(lambda c: m.rotate_master_key(c, ring, now=coalition.now)) == 1
    assert coalition.run(lambda c: m.rotate_master_key(c, ring, now=coalition.now)) == 0

    for i, member in enumerate(members):
        data = coalition.run(lambda c, member=member: m.personal_data(c, member.id, new))
        assert data == {"name": f"Member {i}"}
        with pytest.raises(MasterKeyUnavailable):
            coalition.run(lambda c, member=member: m.personal_data(c, member.id, old))
    with pytest.raises(PersonalDataErased):
        coalition.run(lambda c: m.personal_data(c, erased.id, new))


def test_a_vault_row_copied_to_another_member_does_not_open(coalition: Coalition) -> None:
    """A database administrator who copies alice's vault row onto bob's gets an integrity error."""
    alice, bob = coalition.enroll(personal=ZOE), coalition.enroll(personal=BRUNO)

    def copy(conn: Any) -> None:
        row = conn.execute(
            sa.select(pt.member_vault).where(pt.member_vault.c.member_id == alice.id)
        ).one()
        conn.execute(
            pt.member_vault.update()
            .where(pt.member_vault.c.member_id == bob.id)
            .values(wrapped_key=row.wrapped_key, ciphertext=row.ciphertext)
        )

    coalition.run(copy)
    with pytest.raises(VaultIntegrityError):
        coalition.run(lambda c: m.personal_data(c, bob.id, coalition.master))


def count(db: Database, table: sa.Table) -> int:
    with db.engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)
