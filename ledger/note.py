"""C2SP signed notes, tlog checkpoints and cosignatures, with Ed25519.

The log publishes its tree head as a checkpoint (c2sp.org/tlog-checkpoint): the note text
``origin\\nsize\\nbase64(root)\\n`` signed per c2sp.org/signed-note, whose format is::

    <text ending in a newline>
    <blank line>
    — <key name> base64(key id ‖ signature)      (one line per signature, em dash U+2014)

Witnesses add ``cosignature/v1`` lines (c2sp.org/tlog-cosignature) whose payload is key id ‖
u64 big-endian timestamp ‖ Ed25519 signature over ``cosignature/v1\\ntime <ts>\\n`` + the text.

Keys are named; a key id is the first four bytes of SHA-256(name ‖ 0x0A ‖ type ‖ public key), type
0x01 for note signatures and 0x04 for cosignatures, so one Ed25519 key can never be mistaken for the
other role. Keys travel in the golang.org/x/mod/sumdb/note text forms::

    vkey  <name>+<key id hex>+base64(type ‖ 32-byte public key)
    skey  PRIVATE+KEY+<name>+<key id hex>+base64(type ‖ 32-byte seed)

Verification is two-stage, as in sigstore's checkpoint code: :func:`parse_note` checks only the
syntax; :func:`verify_note` then checks signatures against a keyring indexed by (name, key id).
Signatures from unknown keys are ignored (signed-note §Signatures: this is what lets witnesses add
lines and logs rotate keys); a known key whose signature fails rejects the whole note; at least one
known signature must verify. Only then is the text trusted and, for a checkpoint, parsed.

Every failure raises :class:`SignatureError`. Base64 must be canonical (the encoding of its own
decoding), so a signed value has exactly one spelling.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, NewType, Self, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.errors import SignatureError

__all__ = [
    "COSIGNATURE_HEADER",
    "MAX_SIGNATURES",
    "TYPE_COSIGNATURE_V1",
    "TYPE_ED25519",
    "Checkpoint",
    "Cosignature",
    "CosignatureSigner",
    "CosignatureVerifier",
    "KeyId",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "SignedNote",
    "UnverifiedNote",
    "compute_key_id",
    "cosigned_message",
    "open_checkpoint",
    "open_note",
    "parse_cosignature",
    "parse_note",
    "verify_cosignature",
    "verify_note",
]

KeyId = NewType("KeyId", bytes)
"""The 4-byte key id that prefixes every signature: SHA-256(name ‖ 0x0A ‖ type ‖ key)[:4]."""

TYPE_ED25519 = 0x01
"""Signature type of Ed25519 note signatures (signed-note §Signature types)."""
TYPE_COSIGNATURE_V1 = 0x04
"""Signature type of timestamped Ed25519 witness cosignatures (tlog-cosignature)."""

#: signed-note asks verifiers to cap the number of signatures and to accept at least 16;
#: golang.org/x/mod/sumdb/note caps at 100.
MAX_SIGNATURES = 100

COSIGNATURE_HEADER = "cosignature/v1\n"
_COSIGNATURE_SIZE = 4 + 8 + 64
_MAX_TIMESTAMP = 2**63 - 1  # tlog-cosignature: the timestamp MUST NOT exceed 2^63 - 1
_SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}")
_SIZE = re.compile(r"0|[1-9][0-9]*")
_MAX_TREE_SIZE = 2**64 - 1
_ROOT_SIZE = 32


# --- Small syntax helpers -----------------------------------------------------------------------


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str, *, secret: bool = False) -> bytes:
    """Standard base64 (RFC 4648 §4), refusing any spelling other than the canonical one.

    With ``secret``, the text is kept out of the error: errors get logged, private keys must not.
    """
    shown = None if secret else text
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise SignatureError(f"{what} is not base64", computed=shown) from exc
    if _b64encode(data) != text:
        raise SignatureError(f"{what} is not canonical base64", computed=shown)
    return data


def _check_key_name(name: str) -> None:
    # signed-note §Format: non-empty, no Unicode spaces, no "+" (it separates vkey fields).
    if not isinstance(name, str) or not name:
        raise SignatureError("key name must be a non-empty string", computed=repr(name))
    _check_note_chars(name, "key name")
    if "+" in name or any(ch.isspace() for ch in name):
        raise SignatureError("key name must not contain spaces or '+'", computed=name)


def _check_note_chars(text: str, what: str) -> None:
    # signed-note §Format: valid UTF-8, no ASCII control characters other than newline.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SignatureError(f"{what} is not valid UTF-8") from exc
    if any(ch < " " and ch != "\n" for ch in text):
        raise SignatureError(f"{what} contains a control character other than newline")


def _check_note_text(text: str) -> None:
    if not isinstance(text, str) or not text.endswith("\n"):
        raise SignatureError("note text must be a string ending in a newline", computed=text)
    _check_note_chars(text, "note text")


def compute_key_id(name: str, signature_type: int, public_key: bytes) -> KeyId:
    """SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4] (signed-note §Signatures)."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([signature_type]) + public_key)
    return KeyId(digest.digest()[:4])


def _split_key(encoded: str, fields: int, what: str) -> list[str]:
    # Split on the first separators only: the base64 field may itself contain "+".
    parts = encoded.split("+", fields - 1) if isinstance(encoded, str) else []
    if len(parts) != fields:
        raise SignatureError(f"malformed {what}: expected {fields} '+'-separated fields")
    return parts


def _decode_key_material(
    name: str, key_id_hex: str, material_b64: str, signature_type: int, what: str
) -> tuple[KeyId, bytes]:
    """Check the name, the 8-hex-digit key id and ``type ‖ 32 bytes``; return (id, 32 bytes)."""
    _check_key_name(name)
    if not _KEY_ID_HEX.fullmatch(key_id_hex):
        raise SignatureError(f"malformed {what}: key id must be 8 lowercase hex digits")
    material = _b64decode(material_b64, what, secret=what == "signer key")
    if len(material) != 33 or material[0] != signature_type:
        raise SignatureError(
            f"{what} is not a type 0x{signature_type:02x} Ed25519 key",
            expected=f"0x{signature_type:02x} + 32 bytes",
            computed=material[:1].hex() + f" + {len(material) - 1} bytes",
        )
    return KeyId(bytes.fromhex(key_id_hex)), material[1:]


# --- Keys ---------------------------------------------------------------------------------------


class _Ed25519Verifier:
    """A named Ed25519 public key of one signature type."""

    SIGNATURE_TYPE: ClassVar[int]

    def __init__(self, name: str, public_key: bytes) -> None:
        _check_key_name(name)
        if not isinstance(public_key, bytes) or len(public_key) != 32:
            raise SignatureError("Ed25519 public key must be 32 bytes", computed=public_key)
        try:
            self._key = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError as exc:
            raise SignatureError("not an Ed25519 public key", computed=public_key) from exc
        self._name = name
        self._public_bytes = public_key
        self._key_id = compute_key_id(name, self.SIGNATURE_TYPE, public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> Self:
        """Parse ``name+keyid+base64(type ‖ key)``, checking that the key id matches the key."""
        name, key_id_hex, material = _split_key(vkey, 3, "verifier key")
        claimed, public_key = _decode_key_material(
            name, key_id_hex, material, cls.SIGNATURE_TYPE, "verifier key"
        )
        verifier = cls(name, public_key)
        if verifier.key_id != claimed:
            raise SignatureError(
                "verifier key id does not match its key", expected=claimed, computed=verifier.key_id
            )
        return verifier

    @property
    def name(self) -> str:
        """The key name, as it appears in signature lines."""
        return self._name

    @property
    def key_id(self) -> KeyId:
        """The 4-byte key id."""
        return self._key_id

    @property
    def public_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public_bytes

    @property
    def vkey(self) -> str:
        """The verifier key string ``name+keyid+base64(type ‖ key)``."""
        material = _b64encode(bytes([self.SIGNATURE_TYPE]) + self._public_bytes)
        return f"{self._name}+{self._key_id.hex()}+{material}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of ``message``."""
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.vkey!r})"


class _Ed25519Signer:
    """A named Ed25519 private key of one signature type. Its repr never shows the key."""

    SIGNATURE_TYPE: ClassVar[int]
    VERIFIER: ClassVar[type[_Ed25519Verifier]]

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self._verifier = self.VERIFIER(name, private_key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls, name: str) -> Self:
        """A fresh random key named ``name``."""
        _check_key_name(name)
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, name: str, seed: bytes) -> Self:
        """The key of a stored 32-byte Ed25519 seed (RFC 8032 private key)."""
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise SignatureError("Ed25519 seed must be 32 bytes")
        return cls(name, Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_skey(cls, skey: str) -> Self:
        """Parse ``PRIVATE+KEY+name+keyid+base64(type ‖ seed)``, checking the key id."""
        if not isinstance(skey, str) or not skey.startswith(_PRIVATE_PREFIX):
            raise SignatureError("malformed signer key: missing PRIVATE+KEY+ prefix")
        name, key_id_hex, material = _split_key(skey[len(_PRIVATE_PREFIX) :], 3, "signer key")
        claimed, seed = _decode_key_material(
            name, key_id_hex, material, cls.SIGNATURE_TYPE, "signer key"
        )
        signer = cls.from_private_bytes(name, seed)
        # The id hashes the *public* key, so it can only be checked after deriving it.
        if signer.key_id != claimed:
            raise SignatureError(
                "signer key id does not match its key", expected=claimed, computed=signer.key_id
            )
        return signer

    @property
    def name(self) -> str:
        """The key name."""
        return self._verifier.name

    @property
    def key_id(self) -> KeyId:
        """The 4-byte key id."""
        return self._verifier.key_id

    @property
    def vkey(self) -> str:
        """The verifier key string to hand to whoever checks this key's signatures."""
        return self._verifier.vkey

    @property
    def skey(self) -> str:
        """The secret signer key string. Treat it like the key itself."""
        material = _b64encode(bytes([self.SIGNATURE_TYPE]) + self.private_bytes())
        return f"{_PRIVATE_PREFIX}{self.name}+{self.key_id.hex()}+{material}"

    def private_bytes(self) -> bytes:
        """The 32-byte seed, for storing the key in a file. Treat it like the key itself."""
        return self._private_key.private_bytes_raw()

    def _signature_line(self, message: bytes, prefix: bytes = b"") -> str:
        signature = self._private_key.sign(message)
        payload = _b64encode(self.key_id + prefix + signature)
        return f"{_SIGNATURE_PREFIX}{self.name} {payload}\n"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, key_id={self.key_id.hex()!r})"


class NoteVerifier(_Ed25519Verifier):
    """An Ed25519 note-signature public key (type 0x01), e.g. the log's key."""

    SIGNATURE_TYPE = TYPE_ED25519


class NoteSigner(_Ed25519Signer):
    """An Ed25519 note-signature private key (type 0x01); the log signs checkpoints with it."""

    SIGNATURE_TYPE = TYPE_ED25519
    VERIFIER = NoteVerifier

    @property
    def verifier(self) -> NoteVerifier:
        """The matching public key, for the keyring of whoever opens this key's notes."""
        return cast(NoteVerifier, self._verifier)

    def sign(self, text: str) -> str:
        """The signed note: ``text``, a blank line, and this key's signature line."""
        _check_note_text(text)
        return f"{text}\n{self._signature_line(text.encode('utf-8'))}"


class CosignatureVerifier(_Ed25519Verifier):
    """A witness's cosignature/v1 public key (type 0x04)."""

    SIGNATURE_TYPE = TYPE_COSIGNATURE_V1


class CosignatureSigner(_Ed25519Signer):
    """A witness's cosignature/v1 private key (type 0x04).

    tlog-cosignature: the signed message does not name the cosigner, so one key must serve one
    cosigner name only.
    """

    SIGNATURE_TYPE = TYPE_COSIGNATURE_V1
    VERIFIER = CosignatureVerifier

    @property
    def verifier(self) -> CosignatureVerifier:
        """The matching public key, for whoever checks this witness's cosignatures."""
        return cast(CosignatureVerifier, self._verifier)

    def cosign(self, checkpoint_text: str, timestamp: int) -> str:
        """The cosignature line for ``checkpoint_text`` at POSIX time ``timestamp`` (seconds)."""
        _check_note_text(checkpoint_text)
        _check_timestamp(timestamp)
        message = cosigned_message(checkpoint_text, timestamp)
        return self._signature_line(message, timestamp.to_bytes(8, "big"))


def _check_timestamp(timestamp: int) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise SignatureError("cosignature timestamp must be an integer", computed=timestamp)
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise SignatureError(
            "cosignature timestamp out of range", expected="0..2**63-1", computed=timestamp
        )


def cosigned_message(checkpoint_text: str, timestamp: int) -> bytes:
    """The bytes a cosignature/v1 signs (tlog-cosignature §Ed25519 signed message).

    A header line for domain separation, ``time <decimal>``, then the whole checkpoint text
    (extension lines included, signature lines excluded).
    """
    return f"{COSIGNATURE_HEADER}time {timestamp}\n{checkpoint_text}".encode()


# --- Notes --------------------------------------------------------------------------------------


class NoteSignature(NamedTuple):
    """One signature line of a note, decoded but not yet verified."""

    name: str
    """Key name on the line."""
    key_id: KeyId
    """The first four bytes of the decoded signature."""
    signature: bytes
    """The rest of the decoded signature."""

    def line(self) -> str:
        """The signature line as it appears in a note, newline included."""
        return f"{_SIGNATURE_PREFIX}{self.name} {_b64encode(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class UnverifiedNote:
    """A note that is well formed; nothing in it is trusted yet."""

    text: str
    """The note text, final newline included, separating blank line excluded."""
    signatures: tuple[NoteSignature, ...]
    """Every signature line, in order."""


@dataclass(frozen=True)
class SignedNote:
    """A note with at least one valid signature from a known key; its text may be trusted."""

    text: str
    """The note text, final newline included."""
    signatures: tuple[NoteSignature, ...]
    """Every signature line, in order, including those from unknown keys."""
    verified_by: tuple[str, ...]
    """Names of the known keys whose signatures verified, in order of appearance."""


def parse_note(note: str) -> UnverifiedNote:
    """Stage 1: split a signed note into text and signature lines, checking only the syntax."""
    if not isinstance(note, str):
        raise SignatureError("a note must be text", computed=repr(note))
    _check_note_chars(note, "note")
    split = note.rfind("\n\n")  # the text ends at the *last* blank line (signed-note §Format)
    if split < 0:
        raise SignatureError("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise SignatureError("note must end with a newline-terminated signature line")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise SignatureError(
            "note has too many signatures", expected=MAX_SIGNATURES, computed=len(lines)
        )
    return UnverifiedNote(text, tuple(_parse_signature_line(line) for line in lines))


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise SignatureError("signature line must start with an em dash and a space", computed=line)
    name, _, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
    _check_key_name(name)
    raw = _b64decode(encoded, "signature")
    if len(raw) < 5:  # a key id and at least one byte of signature
        raise SignatureError("signature is too short", expected=">=5 bytes", computed=len(raw))
    return NoteSignature(name, KeyId(raw[:4]), raw[4:])


def verify_note(note: UnverifiedNote, verifiers: Iterable[NoteVerifier]) -> SignedNote:
    """Stage 2: check the signatures against the keyring; see the module docstring for the rules."""
    keyring = _keyring(verifiers)
    message = note.text.encode("utf-8")
    verified_by: list[str] = []
    for sig in note.signatures:
        verifier = keyring.get((sig.name, sig.key_id))
        if verifier is None:
            continue  # unknown (name, id): ignored, even if one of the two matches a known key
        if not verifier.verify(message, sig.signature):
            # signed-note: a known key whose signature fails SHOULD reject the whole note.
            raise SignatureError(
                f"signature by {sig.name}+{sig.key_id.hex()} does not verify",
                expected=verifier.vkey,
                computed=sig.signature,
            )
        if sig.name not in verified_by:
            verified_by.append(sig.name)
    if not verified_by:
        raise SignatureError(
            "note has no valid signature from a known key",
            expected=sorted(f"{name}+{kid.hex()}" for name, kid in keyring),
            computed=[f"{s.name}+{s.key_id.hex()}" for s in note.signatures],
        )
    return SignedNote(note.text, note.signatures, tuple(verified_by))


def open_note(note: str, verifiers: Iterable[NoteVerifier]) -> SignedNote:
    """Parse ``note`` and verify it against ``verifiers``; raise SignatureError unless it checks."""
    return verify_note(parse_note(note), verifiers)


def _keyring(verifiers: Iterable[NoteVerifier]) -> dict[tuple[str, KeyId], NoteVerifier]:
    keyring: dict[tuple[str, KeyId], NoteVerifier] = {}
    for verifier in verifiers:
        if not isinstance(verifier, NoteVerifier):
            raise SignatureError(
                "keyring entries must be NoteVerifier keys", computed=repr(verifier)
            )
        slot = (verifier.name, verifier.key_id)
        if slot in keyring and keyring[slot].public_bytes != verifier.public_bytes:
            # Two keys sharing name and id: the keyring itself is compromised or misconfigured.
            raise SignatureError(f"ambiguous keyring entry {verifier.name}+{verifier.key_id.hex()}")
        keyring[slot] = verifier
    return keyring


# --- Checkpoints --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head as c2sp.org/tlog-checkpoint note text."""

    origin: str
    """The log's identity (first line); for our logs it equals the log key's name."""
    size: int
    """Number of leaves in the tree."""
    root: bytes
    """The 32-byte RFC 6962 root hash at that size."""

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin or "\n" in self.origin:
            raise SignatureError(
                "checkpoint origin must be one non-empty line", computed=self.origin
            )
        _check_note_chars(self.origin, "checkpoint origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise SignatureError("checkpoint size must be an integer", computed=repr(self.size))
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise SignatureError(
                "checkpoint size out of range", expected="0..2**64-1", computed=self.size
            )
        if not isinstance(self.root, bytes) or len(self.root) != _ROOT_SIZE:
            raise SignatureError("checkpoint root must be 32 bytes", computed=repr(self.root))

    def text(self) -> str:
        """The note text: origin, decimal size, base64 root, each ending in a newline."""
        return f"{self.origin}\n{self.size}\n{_b64encode(self.root)}\n"

    @classmethod
    def parse(cls, text: str, *, allow_extensions: bool = False) -> Checkpoint:
        """Parse checkpoint note text; extension lines are refused unless ``allow_extensions``.

        Our logs write none (PRODUCT.md §4), so by default they are an error. A foreign log may
        use them; with ``allow_extensions`` they are checked to be non-empty and then ignored —
        they stay covered by the note signature, but carry no meaning for the tree.
        """
        _check_note_text(text)
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise SignatureError("checkpoint needs origin, size and root lines", computed=text)
        origin, size, root, *extensions = lines
        if extensions and not allow_extensions:
            raise SignatureError("checkpoint has extension lines", expected=3, computed=len(lines))
        if any(not line for line in extensions):
            raise SignatureError("checkpoint extension lines must be non-empty")
        if not _SIZE.fullmatch(size):
            raise SignatureError(
                "checkpoint size must be decimal without leading zeros", computed=size
            )
        return cls(origin, int(size), _b64decode(root, "checkpoint root"))


def open_checkpoint(
    note: str,
    verifiers: Iterable[NoteVerifier],
    *,
    origin: str,
    allow_extensions: bool = False,
) -> tuple[Checkpoint, SignedNote]:
    """Verify a signed checkpoint, then parse it and check it comes from log ``origin``.

    Signatures first, text second: nothing in an unverified note is read (signed-note §Note).
    """
    signed = open_note(note, verifiers)
    checkpoint = Checkpoint.parse(signed.text, allow_extensions=allow_extensions)
    if checkpoint.origin != origin:
        raise SignatureError(
            "checkpoint is from another log", expected=origin, computed=checkpoint.origin
        )
    return checkpoint, signed


# --- Cosignatures -------------------------------------------------------------------------------


class Cosignature(NamedTuple):
    """A cosignature/v1 line, decoded but not verified."""

    name: str
    """The cosigner's key name."""
    key_id: KeyId
    """The cosigner's type-0x04 key id."""
    timestamp: int
    """POSIX seconds at which the witness cosigned."""
    signature: bytes
    """The 64-byte Ed25519 signature."""


def parse_cosignature(line: str) -> Cosignature:
    """Decode a cosignature line (with or without its newline): key id ‖ u64 time ‖ signature."""
    if not isinstance(line, str):
        raise SignatureError("a cosignature line must be text", computed=repr(line))
    body = line.removesuffix("\n")
    _check_note_chars(body, "cosignature line")
    if "\n" in body:
        raise SignatureError("a cosignature is a single line", computed=line)
    sig = _parse_signature_line(body)
    payload = sig.key_id + sig.signature
    if len(payload) != _COSIGNATURE_SIZE:
        raise SignatureError(
            "cosignature/v1 payload has the wrong size",
            expected=_COSIGNATURE_SIZE,
            computed=len(payload),
        )
    timestamp = int.from_bytes(payload[4:12], "big")
    _check_timestamp(timestamp)
    return Cosignature(sig.name, sig.key_id, timestamp, payload[12:])


def verify_cosignature(line: str, checkpoint_text: str, verifier: CosignatureVerifier) -> int:
    """Check a witness's cosignature of ``checkpoint_text``; return its timestamp."""
    if not isinstance(verifier, CosignatureVerifier):
        raise SignatureError("cosignatures need a CosignatureVerifier key", computed=repr(verifier))
    _check_note_text(checkpoint_text)
    cosig = parse_cosignature(line)
    if (cosig.name, cosig.key_id) != (verifier.name, verifier.key_id):
        raise SignatureError(
            "cosignature is from another key",
            expected=f"{verifier.name}+{verifier.key_id.hex()}",
            computed=f"{cosig.name}+{cosig.key_id.hex()}",
        )
    message = cosigned_message(checkpoint_text, cosig.timestamp)
    if not verifier.verify(message, cosig.signature):
        raise SignatureError(
            f"cosignature by {verifier.name} does not verify",
            expected=verifier.vkey,
            computed=cosig.signature,
        )
    return cosig.timestamp
