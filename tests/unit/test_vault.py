"""The personal-data vault (envelope encryption) and coalition card numbers (Luhn), no database."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import InvalidRequest
from ledger.model import check_owner
from partners import vault
from partners.errors import (
    InvalidField,
    MasterKeyUnavailable,
    PersonalDataErased,
    VaultIntegrityError,
)
from partners.members import (
    CARD_LENGTH,
    CARD_PREFIX,
    card_number,
    luhn_check_digit,
    luhn_valid,
    new_card_number,
    new_member_id,
    normalise_card,
)
from partners.vault import Keyring, MasterKey, Sealed

ALICE = "m_0123456789abcdef01234567"
BOB = "m_fedcba9876543210fedcba98"
PERSONAL = {
    "name": "Zoé Lefèvre",
    "email": "zoe.lefevre@example.org",
    "birth_date": "1990-04-01",
    "phone": "+33 6 12 34 56 78",
}

MASTER = MasterKey("mk-2026-01", bytes(range(32)))
NEXT_MASTER = MasterKey("mk-2026-07", bytes(range(32, 64)))


def flip(blob: bytes, position: int) -> bytes:
    """``blob`` with one bit flipped at ``position`` (wrapped around its length)."""
    position %= len(blob)
    return blob[:position] + bytes([blob[position] ^ 0x01]) + blob[position + 1 :]


# -- envelope encryption --------------------------------------------------------------------------


def test_seal_then_unseal_returns_the_personal_data() -> None:
    """What is sealed for a member opens again, field for field, with the same master key."""
    sealed = vault.seal(ALICE, PERSONAL, MASTER)
    assert vault.unseal(ALICE, sealed, MASTER) == PERSONAL
    assert sealed.master_key_id == "mk-2026-01"


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "name": st.text(min_size=1, max_size=200).filter(str.strip),
            "email": st.from_regex(r"\A[a-z0-9._]{1,20}@[a-z0-9]{1,20}\.[a-z]{2,6}\Z"),
            "birth_date": st.dates(date(1900, 1, 1), date(2020, 12, 31)).map(date.isoformat),
        },
    )
)
def test_any_allowed_personal_data_round_trips(personal: dict[str, str]) -> None:
    """Any combination of allowed fields, with any text (accents, emoji, scripts), round-trips."""
    assert vault.unseal(ALICE, vault.seal(ALICE, personal, MASTER), MASTER) == personal


def test_ciphertext_holds_no_plaintext_and_every_seal_is_fresh() -> None:
    """Neither blob contains a field in clear, and sealing twice gives unrelated blobs."""
    first, second = vault.seal(ALICE, PERSONAL, MASTER), vault.seal(ALICE, PERSONAL, MASTER)
    for blob in (first.ciphertext, first.wrapped_key or b""):
        for value in PERSONAL.values():
            assert value.encode() not in blob
    assert first.ciphertext != second.ciphertext
    assert first.wrapped_key != second.wrapped_key


def test_a_record_opened_as_another_member_fails() -> None:
    """The member id is associated data: a record read under another member's id does not open."""
    sealed = vault.seal(ALICE, PERSONAL, MASTER)
    with pytest.raises(VaultIntegrityError):
        vault.unseal(BOB, sealed, MASTER)


def test_a_ciphertext_moved_to_another_members_record_fails() -> None:
    """Alice's ciphertext under Bob's (valid) wrapped key does not open: both are member-bound."""
    alice, bob = vault.seal(ALICE, PERSONAL, MASTER), vault.seal(BOB, {"name": "Bob"}, MASTER)
    with pytest.raises(VaultIntegrityError):
        vault.unseal(BOB, replace(bob, ciphertext=alice.ciphertext), MASTER)


@given(st.integers(min_value=0))
def test_a_tampered_ciphertext_fails(position: int) -> None:
    """Flipping any bit of the ciphertext (format byte, nonce, body or tag) is detected."""
    sealed = vault.seal(ALICE, PERSONAL, MASTER)
    with pytest.raises(VaultIntegrityError):
        vault.unseal(ALICE, replace(sealed, ciphertext=flip(sealed.ciphertext, position)), MASTER)


@given(st.integers(min_value=0))
def test_a_tampered_wrapped_key_fails(position: int) -> None:
    """Flipping any bit of the wrapped data key is detected."""
    sealed = vault.seal(ALICE, PERSONAL, MASTER)
    assert sealed.wrapped_key is not None
    with pytest.raises(VaultIntegrityError):
        vault.unseal(ALICE, replace(sealed, wrapped_key=flip(sealed.wrapped_key, position)), MASTER)


def test_a_truncated_record_fails() -> None:
    """A ciphertext cut short is refused as an integrity error, not a crash."""
    sealed = vault.seal(ALICE, PERSONAL, MASTER)
    with pytest.raises(VaultIntegrityError):
        vault.unseal(ALICE, replace(sealed, ciphertext=sealed.ciphertext[:20]), MASTER)


def test_a_wrapped_key_relabelled_with_another_master_key_id_fails() -> None:
    """The master key id is associated data of the wrapped key: relabelling it is detected."""
    sealed = vault.seal(ALICE, PERSONAL, MASTER)
    impostor = MasterKey("mk-forged", MASTER.secret)
    with pytest.raises(VaultIntegrityError):
        vault.unseal(ALICE, replace(sealed, master_key_id="mk-forged"), impostor)


def test_the_wrong_master_key_cannot_open() -> None:
    """A record wrapped by a key the keyring lacks names the missing key; a look-alike fails."""
    sealed = vault.seal(ALICE, PERSONAL, MASTER)
    with pytest.raises(MasterKeyUnavailable) as missing:
        vault.unseal(ALICE, sealed, NEXT_MASTER)
    assert missing.value.key_id == "mk-2026-01"
    with pytest.raises(VaultIntegrityError):
        vault.unseal(ALICE, sealed, MasterKey("mk-2026-01", bytes(32)))


def test_after_shredding_nothing_opens_the_ciphertext() -> None:
    """Without the wrapped key the record is unreadable, even to the master key used as data key."""
    shredded = vault.shred(vault.seal(ALICE, PERSONAL, MASTER))
    assert shredded.shredded
    assert shredded.wrapped_key is None
    with pytest.raises(PersonalDataErased):
        vault.unseal(ALICE, shredded, MASTER)
    nonce, body = shredded.ciphertext[1:13], shredded.ciphertext[13:]
    with pytest.raises(InvalidTag):  # the master key is not the data key
        AESGCM(MASTER.secret).decrypt(nonce, body, b"coalition/vault/data/v1\x00" + ALICE.encode())


def test_rotation_rewraps_the_data_key_and_keeps_the_data_readable() -> None:
    """Re-wrapped under a new master key, the data opens with it and no longer needs the old key."""
    sealed = vault.seal(ALICE, PERSONAL, MASTER)
    during = Keyring(current=NEXT_MASTER, retired=(MASTER,))
    rotated = vault.rewrap(ALICE, sealed, during)
    assert rotated.master_key_id == "mk-2026-07"
    assert rotated.ciphertext == sealed.ciphertext  # only the wrapping changes
    assert vault.unseal(ALICE, rotated, NEXT_MASTER) == PERSONAL
    with pytest.raises(MasterKeyUnavailable):
        vault.unseal(ALICE, rotated, MASTER)


def test_a_keyring_reads_records_wrapped_by_any_of_its_keys_and_seals_with_the_current() -> None:
    """During a rotation both old and new records open; new seals use the current key."""
    old = vault.seal(ALICE, PERSONAL, MASTER)
    ring = Keyring(current=NEXT_MASTER, retired=(MASTER,))
    new = vault.seal(BOB, {"name": "Bob"}, ring)
    assert new.master_key_id == NEXT_MASTER.key_id
    assert vault.unseal(ALICE, old, ring) == PERSONAL
    assert vault.unseal(BOB, new, ring) == {"name": "Bob"}


def test_rewrapping_is_a_no_op_for_current_and_shredded_records() -> None:
    """A record already under the current key, or shredded, comes back unchanged."""
    sealed = vault.seal(ALICE, PERSONAL, MASTER)
    assert vault.rewrap(ALICE, sealed, MASTER) is sealed
    shredded = vault.shred(sealed)
    assert vault.rewrap(ALICE, shredded, Keyring(NEXT_MASTER, (MASTER,))) is shredded


@pytest.mark.parametrize(
    ("personal", "field"),
    [
        ({"address": "1 rue de la Paix"}, "personal.address"),
        ({"name": "Zoé", "iban": "FR76..."}, "personal.iban"),
        ({"email": "not-an-address"}, "personal.email"),
        ({"birth_date": "01/04/1990"}, "personal.birth_date"),
        ({"phone": "call me"}, "personal.phone"),
        ({"name": ""}, "personal.name"),
        ({"name": 42}, "personal.name"),
        ({"name": "x" * 201}, "personal.name"),
    ],
)
def test_only_the_allowed_fields_in_plausible_form_are_accepted(
    personal: dict[str, object], field: str
) -> None:
    """Fields beyond name, e-mail, birth date and phone, or malformed values, are refused."""
    with pytest.raises(InvalidField) as refused:
        vault.seal(ALICE, personal, MASTER)
    assert refused.value.field == field
    assert isinstance(refused.value, InvalidRequest)


def test_every_field_is_optional_and_none_is_dropped() -> None:
    """An empty object seals; ``None`` values are left out; a date object becomes ISO text."""
    assert vault.unseal(ALICE, vault.seal(ALICE, {}, MASTER), MASTER) == {}
    personal = {"name": None, "birth_date": date(1990, 4, 1)}
    assert vault.unseal(ALICE, vault.seal(ALICE, personal, MASTER), MASTER) == {
        "birth_date": "1990-04-01"
    }


def test_master_keys_are_32_bytes_with_a_short_id_and_never_printed() -> None:
    """A key of another length or a malformed id is refused; repr hides the secret."""
    with pytest.raises(InvalidField):
        MasterKey("mk", bytes(16))
    with pytest.raises(InvalidField):
        MasterKey("x" * 33, bytes(32))
    key = MasterKey.generate("mk-test")
    assert key.secret.hex() not in repr(key)
    assert "secret" not in repr(key)


def test_sealed_records_are_plain_values() -> None:
    """A record rebuilt from stored columns opens like the original."""
    sealed = vault.seal(ALICE, PERSONAL, MASTER)
    stored = Sealed(sealed.wrapped_key, sealed.master_key_id, bytes(sealed.ciphertext))
    assert vault.unseal(ALICE, stored, MASTER) == PERSONAL


# -- card numbers and member ids ------------------------------------------------------------------


@pytest.mark.parametrize(
    "card",
    ["79927398713", "4111111111111111", "4539578763621486", "5555555555554444", "0000000000"],
)
def test_known_valid_numbers_pass_the_luhn_check(card: str) -> None:
    """Published Luhn-valid numbers are accepted."""
    assert luhn_valid(card)


@pytest.mark.parametrize(
    "card", ["79927398710", "4111111111111112", "4539578763621487", "", "7", "4111-1111", "٤١١١"]
)
def test_known_invalid_numbers_fail_the_luhn_check(card: str) -> None:
    """Wrong check digits, too-short input and non-ASCII digits are rejected."""
    assert not luhn_valid(card)


def test_the_check_digit_of_the_classic_example() -> None:
    """7992739871 gets check digit 3 (the textbook example)."""
    assert luhn_check_digit("7992739871") == "3"


@given(st.integers(min_value=0, max_value=10**11 - 1))
def test_generated_cards_are_16_digits_with_the_prefix_and_a_valid_check_digit(serial: int) -> None:
    """Every card the coalition issues has its prefix, 16 digits and passes the Luhn check."""
    card = card_number(serial)
    assert len(card) == CARD_LENGTH
    assert card.isdigit()
    assert card.startswith(CARD_PREFIX)
    assert luhn_valid(card)


@given(
    st.integers(min_value=0, max_value=10**11 - 1),
    st.integers(min_value=0, max_value=CARD_LENGTH - 1),
    st.integers(min_value=1, max_value=9),
)
def test_a_single_mistyped_digit_is_always_detected(serial: int, position: int, shift: int) -> None:
    """Changing any one digit of a card to any other digit breaks its check digit."""
    card = card_number(serial)
    wrong = str((int(card[position]) + shift) % 10)
    typo = card[:position] + wrong + card[position + 1 :]
    assert not luhn_valid(typo)
    with pytest.raises(InvalidRequest):
        normalise_card(typo)


def test_random_cards_are_valid_and_distinct() -> None:
    """Random card numbers pass the check and do not repeat in a small sample."""
    cards = {new_card_number() for _ in range(200)}
    assert len(cards) == 200
    assert all(luhn_valid(card) for card in cards)


def test_a_card_may_be_typed_with_spaces_or_dashes() -> None:
    """Grouping spaces and dashes are ignored; a wrong length is refused."""
    card = card_number(42)
    grouped = " ".join(card[i : i + 4] for i in range(0, 16, 4))
    assert normalise_card(grouped) == card
    assert normalise_card(grouped.replace(" ", "-")) == card
    with pytest.raises(InvalidField):
        normalise_card(card[:-1])


def test_member_ids_are_pseudonymous_and_fit_ledger_account_codes() -> None:
    """Member ids are ``m_`` + 24 hex digits, random, and valid ledger owners."""
    ids = {new_member_id() for _ in range(100)}
    assert len(ids) == 100
    for member_id in ids:
        assert member_id.startswith("m_")
        assert len(member_id) == 26
        int(member_id[2:], 16)
        assert check_owner(member_id, "member id") == member_id
