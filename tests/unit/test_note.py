"""Signed notes, checkpoints and cosignatures: published vectors, tampering, round trips."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import SignatureError
from ledger.note import (
    MAX_SIGNATURES,
    TYPE_COSIGNATURE_V1,
    TYPE_ED25519,
    Checkpoint,
    CosignatureSigner,
    CosignatureVerifier,
    NoteSigner,
    NoteVerifier,
    compute_key_id,
    cosigned_message,
    open_checkpoint,
    open_note,
    parse_cosignature,
    parse_note,
    verify_cosignature,
)
from tests.vectors import load_vector

VECTORS = {v["name"]: v for v in load_vector("signed-note-vectors")["vectors"]}
C2SP_EXAMPLE = VECTORS["c2sp-signed-note-example"]
GO_EXAMPLE = VECTORS["go-sumdb-note-example-sign"]
SUMDB = VECTORS["sum.golang.org-checkpoint-6476701"]
COSIGNED = VECTORS["c2sp-tlog-cosignature-example"]

EM_DASH = "\u2014"
ROOT = bytes(range(32))


@pytest.fixture(scope="module")
def log_key() -> NoteSigner:
    return NoteSigner.generate("log.example/coalition")


@pytest.fixture(scope="module")
def witness_key() -> CosignatureSigner:
    return CosignatureSigner.generate("witness.example/partner-a")


# --- Published vectors --------------------------------------------------------------------------


def test_c2sp_example_verifies() -> None:
    """The signed-note specification's example opens with its published key."""
    signed = open_note(C2SP_EXAMPLE["note"], [NoteVerifier.from_vkey(C2SP_EXAMPLE["vkey"])])
    assert signed.text == "This is an example message.\n"
    assert signed.verified_by == ("example.com/foo",)


def test_go_example_signs_byte_for_byte() -> None:
    """Signing the Go example's text with its skey reproduces the published note exactly."""
    signer = NoteSigner.from_skey(GO_EXAMPLE["skey"])
    assert signer.sign(GO_EXAMPLE["text"]) == GO_EXAMPLE["note"]
    assert signer.vkey == GO_EXAMPLE["vkey"]
    assert signer.skey == GO_EXAMPLE["skey"]


def test_go_example_opens() -> None:
    """The Go example note opens with its vkey, yielding the text and one signature."""
    signed = open_note(GO_EXAMPLE["note"], [NoteVerifier.from_vkey(GO_EXAMPLE["vkey"])])
    assert signed.text == GO_EXAMPLE["text"]
    assert [(s.name, s.key_id.hex()) for s in signed.signatures] == [("PeterNeumann", "c74f20a3")]


def test_production_checkpoint_verifies_and_parses() -> None:
    """The sum.golang.org checkpoint verifies and parses strictly: it has no extension lines."""
    verifier = NoteVerifier.from_vkey(SUMDB["vkey"])
    checkpoint, signed = open_checkpoint(SUMDB["note"], [verifier], origin=SUMDB["origin"])
    assert checkpoint.size == SUMDB["tree_size"]
    assert checkpoint.text() == signed.text
    assert signed.verified_by == ("sum.golang.org",)


def test_cosignature_example_structure() -> None:
    """The C2SP cosignature decodes to 76 bytes: key id, timestamp 1679315147, signature."""
    note = parse_note(COSIGNED["note"])
    log_line, witness_line = note.signatures
    assert witness_line.name == COSIGNED["cosigner"]
    assert len(witness_line.key_id + witness_line.signature) == 76
    cosig = parse_cosignature(witness_line.line())
    assert cosig.timestamp == COSIGNED["expected_cosignature_timestamp"]
    assert len(cosig.signature) == 64
    message = cosigned_message(note.text, cosig.timestamp)
    assert message == COSIGNED["expected_signed_message"].encode("utf-8")
    assert Checkpoint.parse(note.text).size == 20852163
    assert len(log_line.signature) == 64


def test_foreign_key_with_colliding_key_id_is_ignored() -> None:
    """The cosignature example's log line carries key id 033de0ae, like sum.golang.org's key;
    since the names differ the line is not that key's, so the note has no known signature."""
    note = parse_note(COSIGNED["note"])
    verifier = NoteVerifier.from_vkey(SUMDB["vkey"])
    assert note.signatures[0].key_id == verifier.key_id
    with pytest.raises(SignatureError, match="no valid signature from a known key"):
        open_note(COSIGNED["note"], [verifier])


@pytest.mark.parametrize("vector", [C2SP_EXAMPLE, GO_EXAMPLE, SUMDB], ids=lambda v: v["name"])
def test_key_id_is_truncated_hash_of_name_type_and_key(vector: dict[str, Any]) -> None:
    """The key id in each published vkey is SHA-256(name ‖ LF ‖ 0x01 ‖ key)[:4]."""
    name, key_id_hex, material = vector["vkey"].split("+", 2)
    raw = base64.b64decode(material)
    assert raw[0] == TYPE_ED25519
    assert compute_key_id(name, TYPE_ED25519, raw[1:]).hex() == key_id_hex


# --- Tampering ----------------------------------------------------------------------------------


def _replace_signature_line(note: str, name: str, payload: bytes) -> str:
    text, _, _ = note.rpartition("\n\n")
    return f"{text}\n\n{EM_DASH} {name} {base64.b64encode(payload).decode()}\n"


def _payload(note: str) -> tuple[str, bytes]:
    line = note.rstrip("\n").rpartition("\n")[2]
    name, encoded = line.removeprefix(f"{EM_DASH} ").split(" ")
    return name, base64.b64decode(encoded)


def test_tampered_text_is_rejected() -> None:
    """Changing one character of the text breaks the signature."""
    verifier = NoteVerifier.from_vkey(GO_EXAMPLE["vkey"])
    tampered = GO_EXAMPLE["note"].replace("cryptography", "cryptographY", 1)
    with pytest.raises(SignatureError, match="does not verify"):
        open_note(tampered, [verifier])


@pytest.mark.parametrize("bit", [0, 7, 100, 511])
def test_tampered_signature_is_rejected(bit: int) -> None:
    """Flipping a bit of the Ed25519 signature is rejected."""
    name, payload = _payload(GO_EXAMPLE["note"])
    flipped = bytearray(payload)
    flipped[4 + bit // 8] ^= 1 << (bit % 8)
    note = _replace_signature_line(GO_EXAMPLE["note"], name, bytes(flipped))
    with pytest.raises(SignatureError, match="does not verify"):
        open_note(note, [NoteVerifier.from_vkey(GO_EXAMPLE["vkey"])])


def test_renamed_signature_is_not_counted() -> None:
    """A signature line under another key name is an unknown key's: the note is unverified."""
    name, payload = _payload(GO_EXAMPLE["note"])
    note = _replace_signature_line(GO_EXAMPLE["note"], name + "x", payload)
    with pytest.raises(SignatureError, match="no valid signature"):
        open_note(note, [NoteVerifier.from_vkey(GO_EXAMPLE["vkey"])])


def test_changed_key_id_is_not_counted() -> None:
    """A signature line with another key id is an unknown key's: the note is unverified."""
    name, payload = _payload(GO_EXAMPLE["note"])
    note = _replace_signature_line(GO_EXAMPLE["note"], name, bytes([payload[0] ^ 1]) + payload[1:])
    with pytest.raises(SignatureError, match="no valid signature"):
        open_note(note, [NoteVerifier.from_vkey(GO_EXAMPLE["vkey"])])


def test_other_key_with_same_name_does_not_verify(log_key: NoteSigner) -> None:
    """A verifier for a different key under the same name neither matches nor verifies."""
    impostor = NoteSigner.generate(log_key.name)
    with pytest.raises(SignatureError, match="no valid signature"):
        open_note(log_key.sign("hello\n"), [impostor.verifier])


def test_unknown_signers_are_ignored(log_key: NoteSigner) -> None:
    """Extra lines from unknown keys do not stop a note that a known key signed."""
    stranger = NoteSigner.generate("stranger.example")
    text = "hello\n"
    note = log_key.sign(text) + stranger.sign(text).split("\n\n")[1]
    signed = open_note(note, [log_key.verifier])
    assert signed.verified_by == (log_key.name,)
    assert [s.name for s in signed.signatures] == [log_key.name, stranger.name]


def test_bad_signature_from_known_key_rejects_whole_note(log_key: NoteSigner) -> None:
    """One failing signature from a known key rejects the note, even beside a valid one."""
    other = NoteSigner.generate("other.example")
    good = log_key.sign("hello\n")
    forged = other.sign("goodbye\n").split("\n\n")[1]
    with pytest.raises(SignatureError, match=r"other\.example"):
        open_note(good + forged, [log_key.verifier, other.verifier])


def test_note_signed_by_two_known_keys_reports_both(log_key: NoteSigner) -> None:
    """Every known key whose signature verifies is listed, in order."""
    other = NoteSigner.generate("other.example")
    note = log_key.sign("hello\n") + other.sign("hello\n").split("\n\n")[1]
    assert open_note(note, [other.verifier, log_key.verifier]).verified_by == (
        log_key.name,
        other.name,
    )


def test_empty_keyring_verifies_nothing(log_key: NoteSigner) -> None:
    """With no known keys, no note opens."""
    with pytest.raises(SignatureError, match="no valid signature"):
        open_note(log_key.sign("hello\n"), [])


GOOD_LINE = GO_EXAMPLE["note"].split("\n\n")[1]


@pytest.mark.parametrize(
    "note",
    [
        GO_EXAMPLE["text"] + GOOD_LINE,  # no blank line
        GO_EXAMPLE["note"].rstrip("\n"),  # no final newline
        GO_EXAMPLE["text"] + "\n",  # no signature line
        GO_EXAMPLE["note"].replace(EM_DASH, "-"),  # hyphen for em dash
        GO_EXAMPLE["note"].replace(EM_DASH + " ", EM_DASH + "  "),  # double space: empty name
        GO_EXAMPLE["note"].replace("problem,", "problem,\r"),  # control character
        GO_EXAMPLE["note"].replace("AM=\n", "AM\n"),  # base64 padding removed
        GO_EXAMPLE["note"].replace("AM=\n", "AN=\n"),  # non-canonical base64 trailing bits
        GO_EXAMPLE["text"] + f"\n{EM_DASH} PeterNeumann AAAAAA==\n",  # four bytes: no signature
        GO_EXAMPLE["text"] + "\n" + GOOD_LINE * (MAX_SIGNATURES + 1),  # too many signatures
        GO_EXAMPLE["note"].replace("PeterNeumann x08", "Peter+Neumann x08"),  # plus in name
    ],
    ids=[
        "no-blank-line",
        "no-final-newline",
        "no-signatures",
        "hyphen",
        "empty-name",
        "control-char",
        "unpadded",
        "non-canonical-base64",
        "short-signature",
        "too-many",
        "plus-in-name",
    ],
)
def test_malformed_note_is_rejected(note: str) -> None:
    """Notes that break the signed-note syntax are refused before any signature is checked."""
    with pytest.raises(SignatureError):
        parse_note(note)


def test_up_to_max_signatures_are_accepted() -> None:
    """A note with MAX_SIGNATURES lines (>= the 16 the spec requires) parses."""
    note = GO_EXAMPLE["text"] + "\n" + GOOD_LINE * MAX_SIGNATURES
    assert len(parse_note(note).signatures) == MAX_SIGNATURES >= 16


def test_text_may_contain_blank_lines(log_key: NoteSigner) -> None:
    """The text ends at the last blank line, so blank lines inside the text survive."""
    text = "first\n\nsecond\n\n"
    assert open_note(log_key.sign(text), [log_key.verifier]).text == text


# --- Keys ---------------------------------------------------------------------------------------


@given(st.integers(0, 2**32))
@settings(max_examples=40, deadline=None)
def test_generated_keys_round_trip(counter: int) -> None:
    """skey, vkey and stored seed all rebuild the same key, whose notes open (any base64)."""
    signer = NoteSigner.generate(f"log{counter}.example")
    again = NoteSigner.from_skey(signer.skey)
    stored = NoteSigner.from_private_bytes(signer.name, signer.private_bytes())
    assert again.vkey == stored.vkey == signer.vkey
    verifier = NoteVerifier.from_vkey(signer.vkey)
    assert verifier.key_id == signer.key_id
    assert open_note(again.sign("x\n"), [verifier]).verified_by == (signer.name,)


def test_skey_with_wrong_key_id_is_refused() -> None:
    """An skey whose key id does not match its derived public key is refused."""
    skey = GO_EXAMPLE["skey"].replace("c74f20a3", "c74f20a4")
    with pytest.raises(SignatureError, match="does not match"):
        NoteSigner.from_skey(skey)


def test_malformed_skey_error_does_not_reveal_the_seed() -> None:
    """A signer key with bad base64 is refused without echoing its secret material."""
    seed_b64 = GO_EXAMPLE["skey"].rsplit("+", 1)[1]
    with pytest.raises(SignatureError) as caught:
        NoteSigner.from_skey(GO_EXAMPLE["skey"] + "!")
    assert seed_b64 not in str(caught.value)
    assert seed_b64 not in str(caught.value.fields())


def test_vkey_with_wrong_key_id_is_refused() -> None:
    """A vkey whose key id does not match its key is refused."""
    with pytest.raises(SignatureError, match="does not match"):
        NoteVerifier.from_vkey(GO_EXAMPLE["vkey"].replace("c74f20a3", "00000000"))


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+c74f20a3",
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+Apc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
    ids=["missing-key", "upper-hex", "space-in-name", "empty-name", "bad-key-material"],
)
def test_malformed_vkey_is_refused(vkey: str) -> None:
    """vkeys that break the name+id+key syntax are refused."""
    with pytest.raises(SignatureError):
        NoteVerifier.from_vkey(vkey)


def test_key_types_are_not_interchangeable(witness_key: CosignatureSigner) -> None:
    """A cosignature (0x04) vkey is not a note (0x01) vkey, and the same seed gets different ids."""
    with pytest.raises(SignatureError, match="type 0x01"):
        NoteVerifier.from_vkey(witness_key.vkey)
    with pytest.raises(SignatureError, match="type 0x04"):
        CosignatureVerifier.from_vkey(GO_EXAMPLE["vkey"])
    same_seed = NoteSigner.from_private_bytes(witness_key.name, witness_key.private_bytes())
    assert same_seed.key_id != witness_key.key_id
    assert base64.b64decode(witness_key.vkey.split("+", 2)[2])[0] == TYPE_COSIGNATURE_V1


def test_repr_does_not_reveal_private_key(log_key: NoteSigner) -> None:
    """A signer's repr names the key but never contains the secret."""
    shown = repr(log_key)
    assert log_key.name in shown
    assert log_key.skey.split("+", 4)[4] not in shown
    assert base64.b64encode(log_key.private_bytes()).decode() not in shown


@pytest.mark.parametrize("text", ["no newline", "tab\there\n", "bell\a\n", "\ud800\n"])
def test_signer_refuses_invalid_text(log_key: NoteSigner, text: str) -> None:
    """Text must end in a newline and contain no control characters or invalid Unicode."""
    with pytest.raises(SignatureError):
        log_key.sign(text)


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\u00a0b", "line\n"])
def test_signer_refuses_invalid_names(name: str) -> None:
    """Key names must be non-empty and free of spaces, '+' and controls."""
    with pytest.raises(SignatureError):
        NoteSigner.generate(name)


def test_keyring_refuses_ambiguous_entries(log_key: NoteSigner) -> None:
    """Two different keys with the same (name, key id) in one keyring are refused."""
    impostor = NoteVerifier.from_vkey(NoteSigner.generate(log_key.name).vkey)
    impostor._key_id = log_key.key_id  # a 32-bit id collision, forced rather than searched for
    with pytest.raises(SignatureError, match="ambiguous"):
        open_note(log_key.sign("x\n"), [log_key.verifier, impostor])


# --- Checkpoints --------------------------------------------------------------------------------


def test_checkpoint_text_is_three_lines() -> None:
    """Origin, decimal size and base64 root, each newline-terminated, nothing else."""
    checkpoint = Checkpoint("log.example/coalition", 42, ROOT)
    expected = "log.example/coalition\n42\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
    assert checkpoint.text() == expected


def test_extension_lines_refused_unless_allowed() -> None:
    """Our checkpoints carry no extension lines; a foreign one may, and they are then ignored."""
    text = Checkpoint("log.example", 7, ROOT).text() + "Timestamp: 1\n"
    with pytest.raises(SignatureError, match="extension"):
        Checkpoint.parse(text)
    assert Checkpoint.parse(text, allow_extensions=True) == Checkpoint("log.example", 7, ROOT)


@pytest.mark.parametrize(
    "text",
    [
        "log.example\n7\n",
        "log.example\n07\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        "log.example\n+7\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        f"log.example\n{2**64}\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        "log.example\n7\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==\n",
        "log.example\n7\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n",
        "log.example\n7\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "\n7\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        "log.example\n7\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\n",
    ],
    ids=[
        "two-lines",
        "leading-zero",
        "plus-sign",
        "beyond-u64",
        "31-byte-root",
        "unpadded-root",
        "no-final-newline",
        "empty-origin",
        "empty-extension",
    ],
)
def test_malformed_checkpoint_is_refused(text: str) -> None:
    """Checkpoint text that breaks tlog-checkpoint is refused even with extensions allowed."""
    with pytest.raises(SignatureError):
        Checkpoint.parse(text, allow_extensions=True)


def test_checkpoint_from_another_log_is_refused(log_key: NoteSigner) -> None:
    """A validly signed checkpoint for another origin is refused."""
    note = log_key.sign(Checkpoint("elsewhere.example", 1, ROOT).text())
    with pytest.raises(SignatureError, match="another log"):
        open_checkpoint(note, [log_key.verifier], origin=log_key.name)


def test_signed_checkpoint_round_trip(log_key: NoteSigner) -> None:
    """A checkpoint signed by the log key opens to the same checkpoint."""
    checkpoint = Checkpoint(log_key.name, 12345, ROOT)
    opened, signed = open_checkpoint(
        log_key.sign(checkpoint.text()), [log_key.verifier], origin=log_key.name
    )
    assert opened == checkpoint
    assert signed.verified_by == (log_key.name,)


ORIGINS = st.text(
    st.characters(blacklist_categories=["Cs"], min_codepoint=0x20), min_size=1, max_size=40
)


@given(ORIGINS, st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32))
def test_checkpoint_text_round_trip(origin: str, size: int, root: bytes) -> None:
    """Checkpoint.parse(c.text()) == c for every valid origin, u64 size and 32-byte root."""
    checkpoint = Checkpoint(origin, size, root)
    assert Checkpoint.parse(checkpoint.text()) == checkpoint


# --- Cosignatures -------------------------------------------------------------------------------


@given(st.integers(0, 2**63 - 1))
@settings(max_examples=25, deadline=None)
def test_cosignature_round_trip(timestamp: int) -> None:
    """A witness's cosignature line verifies and yields the timestamp it was made with."""
    witness = CosignatureSigner.from_private_bytes("w.example/1", bytes(32))
    text = Checkpoint("log.example", 5, ROOT).text()
    line = witness.cosign(text, timestamp)
    assert line.startswith(f"{EM_DASH} w.example/1 ")
    assert line.endswith("\n")
    assert verify_cosignature(line, text, witness.verifier) == timestamp
    assert len(base64.b64decode(line.split(" ")[2])) == 76


def test_cosignature_of_other_checkpoint_is_rejected(witness_key: CosignatureSigner) -> None:
    """A cosignature does not carry over to a checkpoint with another size or root."""
    line = witness_key.cosign(Checkpoint("log.example", 5, ROOT).text(), 1679315147)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_cosignature(line, Checkpoint("log.example", 6, ROOT).text(), witness_key.verifier)


def test_cosignature_with_altered_timestamp_is_rejected(witness_key: CosignatureSigner) -> None:
    """The timestamp is signed: changing it breaks the cosignature."""
    text = Checkpoint("log.example", 5, ROOT).text()
    line = witness_key.cosign(text, 1679315147)
    prefix, encoded = line.rstrip("\n").rsplit(" ", 1)
    payload = bytearray(base64.b64decode(encoded))
    payload[11] ^= 1
    altered = f"{prefix} {base64.b64encode(bytes(payload)).decode()}\n"
    with pytest.raises(SignatureError, match="does not verify"):
        verify_cosignature(altered, text, witness_key.verifier)


def test_cosignature_from_another_witness_is_rejected(witness_key: CosignatureSigner) -> None:
    """A cosignature is checked only against the key it names."""
    text = Checkpoint("log.example", 5, ROOT).text()
    line = CosignatureSigner.generate("w.example/2").cosign(text, 1)
    with pytest.raises(SignatureError, match="another key"):
        verify_cosignature(line, text, witness_key.verifier)


def test_cosignature_is_not_a_log_signature(
    log_key: NoteSigner, witness_key: CosignatureSigner
) -> None:
    """A cosignature line in a checkpoint note never counts as the log's note signature."""
    text = Checkpoint(log_key.name, 5, ROOT).text()
    note = f"{text}\n{witness_key.cosign(text, 1)}"
    with pytest.raises(SignatureError, match="no valid signature"):
        open_note(note, [log_key.verifier])
    with pytest.raises(SignatureError, match="NoteVerifier"):
        open_note(note, [witness_key.verifier])  # type: ignore[list-item]


def test_cosigned_checkpoint_opens_with_log_key(
    log_key: NoteSigner, witness_key: CosignatureSigner
) -> None:
    """A checkpoint with the log's signature and a cosignature opens; the cosignature verifies."""
    text = Checkpoint(log_key.name, 5, ROOT).text()
    note = log_key.sign(text) + witness_key.cosign(text, 1700000000)
    signed = open_note(note, [log_key.verifier])
    assert signed.verified_by == (log_key.name,)
    cosig_line = signed.signatures[1].line()
    assert verify_cosignature(cosig_line, signed.text, witness_key.verifier) == 1700000000


@pytest.mark.parametrize("timestamp", [-1, 2**63, True, 1.5])
def test_cosign_refuses_out_of_range_timestamps(
    witness_key: CosignatureSigner, timestamp: Any
) -> None:
    """Timestamps must be integers in 0..2**63-1 (tlog-cosignature)."""
    with pytest.raises(SignatureError):
        witness_key.cosign(Checkpoint("log.example", 5, ROOT).text(), timestamp)


def test_cosignature_of_wrong_length_is_rejected(witness_key: CosignatureSigner) -> None:
    """A cosignature payload that is not 76 bytes is malformed."""
    line = (
        f"{EM_DASH} {witness_key.name} {base64.b64encode(witness_key.key_id + bytes(71)).decode()}"
    )
    with pytest.raises(SignatureError, match="wrong size"):
        parse_cosignature(line)
