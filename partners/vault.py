"""The personal-data vault: envelope encryption, one data key per member (PRODUCT.md §5).

Each member's personal data is one JSON object encrypted with AES-256-GCM under a data key of 32
random bytes that belongs to that member alone. The data key is stored only *wrapped*: encrypted
with AES-256-GCM under the operator's master key, which never enters the database. Erasing a member
drops the wrapped key (crypto-shredding): the ciphertext may stay, in the live database and in every
backup, and nobody can read it again — not the operator, not with the master key.

Invariants:

- Associated data binds every ciphertext to its member, and every wrapped key to its member *and*
  master key id, each under its own domain-separation prefix. A ciphertext or wrapped key copied to
  another member's row, or a wrapped key relabelled with another master key id, fails to open.
- Only the fields of :data:`PERSONAL_FIELDS` are accepted (data minimisation: anything else is
  refused, not silently dropped), all optional, all text.
- The master key is passed in (from ``api`` configuration or a KMS); this module never reads the
  environment and never stores a master key.
- Rotation re-wraps data keys under a new master key; ciphertexts are untouched.

This module is pure: no database. ``partners.members`` stores :class:`Sealed` records in
``member_vault``.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from partners.errors import (
    InvalidField,
    MasterKeyUnavailable,
    PersonalDataErased,
    VaultIntegrityError,
)

#: The personal fields a member may have; everything else is refused.
PERSONAL_FIELDS = frozenset({"name", "email", "birth_date", "phone"})

KEY_BYTES = 32
NONCE_BYTES = 12
#: Format byte leading every ciphertext and wrapped key, so the format can evolve.
FORMAT_V1 = b"\x01"

_DATA_AAD = b"coalition/vault/data/v1\x00"
_WRAP_AAD = b"coalition/vault/key/v1\x00"
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9][0-9 ().-]{3,30}$")
_MAX_TEXT = 200


@dataclass(frozen=True, slots=True)
class MasterKey:
    """A 256-bit key-encryption key, named by an id stored beside every data key it wraps."""

    key_id: str
    """Short name (≤ 32 characters) recorded in ``member_vault.master_key_id``."""
    secret: bytes = field(repr=False)
    """The 32 key bytes; never logged, never stored in the database."""

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, str) or not _KEY_ID.match(self.key_id):
            raise InvalidField("master_key_id", "1–32 letters, digits, '_', '.' or '-'")
        if not isinstance(self.secret, bytes) or len(self.secret) != KEY_BYTES:
            raise InvalidField("master_key", f"a master key is {KEY_BYTES} bytes")

    @classmethod
    def generate(cls, key_id: str) -> MasterKey:
        """A fresh random master key (for set-up, tests and rotation)."""
        return cls(key_id, secrets.token_bytes(KEY_BYTES))


@dataclass(frozen=True, slots=True)
class Keyring:
    """The master key that wraps new data keys, plus retired ones still able to unwrap old ones.

    During a rotation the new key is ``current`` and the old one ``retired`` until every data key
    is re-wrapped; then the old key is removed from the keyring and destroyed.
    """

    current: MasterKey
    """Wraps every data key sealed or re-wrapped from now on."""
    retired: tuple[MasterKey, ...] = ()
    """Keys that only unwrap."""

    def get(self, key_id: str) -> MasterKey:
        """The key named ``key_id``, or :class:`MasterKeyUnavailable`."""
        for key in (self.current, *self.retired):
            if key.key_id == key_id:
                return key
        raise MasterKeyUnavailable(key_id)


#: Anything that can stand for the operator's master keys.
MasterKeys = MasterKey | Keyring


def keyring(keys: MasterKeys) -> Keyring:
    """A keyring from a single master key or a keyring."""
    return keys if isinstance(keys, Keyring) else Keyring(keys)


@dataclass(frozen=True, slots=True)
class Sealed:
    """A member's vault record: the wrapped data key and the encrypted personal data."""

    wrapped_key: bytes | None
    """The data key encrypted under the master key; ``None`` once shredded."""
    master_key_id: str
    """Which master key wrapped ``wrapped_key``."""
    ciphertext: bytes
    """The personal data, AES-GCM under the data key: format byte, nonce, ciphertext and tag."""

    @property
    def shredded(self) -> bool:
        return self.wrapped_key is None


def check_personal(personal: Mapping[str, Any]) -> dict[str, str]:
    """Personal data validated: allowed fields only, text, plausible formats; ``None`` dropped."""
    if not isinstance(personal, Mapping):
        raise InvalidField("personal", "personal data is an object")
    unknown = sorted(set(personal) - PERSONAL_FIELDS)
    if unknown:
        allowed = ", ".join(sorted(PERSONAL_FIELDS))
        raise InvalidField(f"personal.{unknown[0]}", f"not a personal field (allowed: {allowed})")
    checked = {}
    for name, value in personal.items():
        if value is None:
            continue
        if isinstance(value, date) and name == "birth_date":
            value = value.isoformat()
        if not isinstance(value, str) or not value.strip() or len(value) > _MAX_TEXT:
            raise InvalidField(f"personal.{name}", f"text of 1–{_MAX_TEXT} characters")
        _check_format(name, value)
        checked[name] = value
    return checked


def _check_format(name: str, value: str) -> None:
    if name == "email" and not _EMAIL.match(value):
        raise InvalidField("personal.email", "not an e-mail address")
    if name == "phone" and not _PHONE.match(value):
        raise InvalidField("personal.phone", "not a phone number")
    if name == "birth_date":
        try:
            born = date.fromisoformat(value)
        except ValueError:
            raise InvalidField("personal.birth_date", "a date as YYYY-MM-DD") from None
        if born.year < 1900:
            raise InvalidField("personal.birth_date", "a date after 1900")


def seal(member_id: str, personal: Mapping[str, Any], master_key: MasterKeys) -> Sealed:
    """Encrypt ``personal`` for ``member_id`` under a fresh data key wrapped by the current key."""
    plaintext = json.dumps(
        check_personal(personal), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    data_key = AESGCM.generate_key(bit_length=8 * KEY_BYTES)
    kek = keyring(master_key).current
    return Sealed(
        wrapped_key=_encrypt(kek.secret, data_key, _wrap_aad(member_id, kek.key_id)),
        master_key_id=kek.key_id,
        ciphertext=_encrypt(data_key, plaintext, _data_aad(member_id)),
    )


def unseal(member_id: str, sealed: Sealed, master_key: MasterKeys) -> dict[str, str]:
    """Decrypt a member's personal data; refuses shredded, relabelled or tampered records."""
    data_key = _unwrap(member_id, sealed, master_key)
    plaintext = _decrypt(data_key, sealed.ciphertext, _data_aad(member_id), member_id)
    personal: dict[str, str] = json.loads(plaintext)
    return personal


def rewrap(member_id: str, sealed: Sealed, master_key: MasterKeys) -> Sealed:
    """The same record with its data key wrapped by the keyring's current master key.

    The data key and the ciphertext do not change; a shredded record stays shredded.
    """
    if sealed.shredded:
        return sealed
    kek = keyring(master_key).current
    if sealed.master_key_id == kek.key_id:
        return sealed
    data_key = _unwrap(member_id, sealed, master_key)
    return replace(
        sealed,
        wrapped_key=_encrypt(kek.secret, data_key, _wrap_aad(member_id, kek.key_id)),
        master_key_id=kek.key_id,
    )


def shred(sealed: Sealed) -> Sealed:
    """The record without its wrapped data key: the ciphertext can never be decrypted again."""
    return replace(sealed, wrapped_key=None)


def _unwrap(member_id: str, sealed: Sealed, master_key: MasterKeys) -> bytes:
    if sealed.wrapped_key is None:
        raise PersonalDataErased(member_id)
    kek = keyring(master_key).get(sealed.master_key_id)
    return _decrypt(
        kek.secret, sealed.wrapped_key, _wrap_aad(member_id, sealed.master_key_id), member_id
    )


def _data_aad(member_id: str) -> bytes:
    return _DATA_AAD + member_id.encode()


def _wrap_aad(member_id: str, key_id: str) -> bytes:
    # The separator cannot occur in a member id or key id, so (member, key id) pairs cannot alias.
    return _WRAP_AAD + member_id.encode() + b"\x00" + key_id.encode()


def _encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    # Random 96-bit nonces: each data key encrypts a handful of messages over its life, and each
    # master key wraps one data key per member, far below AES-GCM's 2^32 random-nonce limit.
    nonce = secrets.token_bytes(NONCE_BYTES)
    return FORMAT_V1 + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _decrypt(key: bytes, blob: bytes, aad: bytes, member_id: str) -> bytes:
    if len(blob) < 1 + NONCE_BYTES + 16 or blob[:1] != FORMAT_V1:
        raise VaultIntegrityError(member_id)
    nonce, body = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, body, aad)
    except InvalidTag:
        raise VaultIntegrityError(member_id) from None
