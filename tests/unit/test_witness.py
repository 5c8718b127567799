"""The witness's logic and state: it cosigns consistent extensions and refuses everything else."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from audit.witness import (
    AddCheckpoint,
    Witness,
    WitnessRefusal,
    WitnessState,
    build_request,
    create_witness,
    load_witness,
    parse_request,
)
from ledger.merkle import MemoryTree
from ledger.note import Checkpoint, NoteSigner, verify_cosignature

ORIGIN = "coalition.example/ledger"
NOW = 1_764_000_000


@pytest.fixture
def log_key() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def tree() -> MemoryTree:
    return MemoryTree(f"leaf {i}".encode() for i in range(20))


@pytest.fixture
def witness(tmp_path: Path, log_key: NoteSigner) -> Witness:
    made = create_witness(tmp_path / "witness.db", "partner.example/w1", [log_key.verifier])
    made.clock = lambda: NOW
    return made


def note(key: NoteSigner, tree: MemoryTree, size: int, origin: str = ORIGIN) -> str:
    return key.sign(Checkpoint(origin, size, tree.root(size)).text())


def submit(witness: Witness, tree: MemoryTree, key: NoteSigner, old: int, size: int) -> str:
    proof = tree.consistency_proof(old, size) if 0 < old < size else []
    return witness.add_checkpoint(build_request(old, proof, note(key, tree, size)))


def refusal(call: object, *args: object) -> WitnessRefusal:
    with pytest.raises(WitnessRefusal) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


def text_of(tree: MemoryTree, size: int) -> str:
    return Checkpoint(ORIGIN, size, tree.root(size)).text()


# -- accepting -----------------------------------------------------------------------------------


def test_the_first_checkpoint_and_a_consistent_extension_are_cosigned(
    witness: Witness, tree: MemoryTree, log_key: NoteSigner
) -> None:
    """old 0 for a new log, then a proof from the stored size: both return a valid cosignature."""
    first = submit(witness, tree, log_key, 0, 5)
    assert verify_cosignature(first, text_of(tree, 5), witness.signer.verifier) == NOW
    second = submit(witness, tree, log_key, 5, 13)
    assert second.startswith("\u2014 partner.example/w1 ")
    assert second.endswith("\n")
    assert verify_cosignature(second, text_of(tree, 13), witness.signer.verifier) == NOW
    latest = witness.state.latest(ORIGIN)
    assert latest is not None
    assert (latest.size, latest.root) == (13, tree.root(13))


def test_the_same_checkpoint_again_is_cosigned_again(
    witness: Witness, tree: MemoryTree, log_key: NoteSigner
) -> None:
    submit(witness, tree, log_key, 0, 8)
    assert verify_cosignature(
        submit(witness, tree, log_key, 8, 8), text_of(tree, 8), witness.signer.verifier
    )


# -- refusing ------------------------------------------------------------------------------------


def test_a_fork_at_the_same_size_is_refused_with_409(
    witness: Witness, tree: MemoryTree, log_key: NoteSigner
) -> None:
    """Another root at the size the witness cosigned is a fork: 409, and the state is kept."""
    submit(witness, tree, log_key, 0, 10)
    forked = MemoryTree(f"forged {i}".encode() for i in range(10))
    body = build_request(10, [], note(log_key, forked, 10))
    refused = refusal(witness.add_checkpoint, body)
    assert (refused.status, refused.latest_size) == (409, 10)
    latest = witness.state.latest(ORIGIN)
    assert latest is not None
    assert latest.root == tree.root(10)


def test_a_forked_extension_fails_its_consistency_proof_with_422(
    witness: Witness, tree: MemoryTree, log_key: NoteSigner
) -> None:
    """A larger tree that does not extend the cosigned one cannot prove consistency."""
    submit(witness, tree, log_key, 0, 6)
    forked = MemoryTree(f"forged {i}".encode() for i in range(12))
    body = build_request(6, forked.consistency_proof(6, 12), note(log_key, forked, 12))
    assert refusal(witness.add_checkpoint, body).status == 422


def test_a_rollback_is_refused(witness: Witness, tree: MemoryTree, log_key: NoteSigner) -> None:
    """A smaller checkpoint never passes: 409 with the witness's size, or 400 if old > size."""
    submit(witness, tree, log_key, 0, 12)
    claimed_own_size = refusal(submit, witness, tree, log_key, 7, 7)
    assert (claimed_own_size.status, claimed_own_size.latest_size) == (409, 12)
    from_zero = refusal(submit, witness, tree, log_key, 0, 7)
    assert (from_zero.status, from_zero.latest_size) == (409, 12)
    honest_old = build_request(12, [], note(log_key, tree, 7))
    assert refusal(witness.add_checkpoint, honest_old).status == 400
    latest = witness.state.latest(ORIGIN)
    assert latest is not None
    assert latest.size == 12


def test_a_stale_old_size_gets_409_with_the_latest_size(
    witness: Witness, tree: MemoryTree, log_key: NoteSigner
) -> None:
    submit(witness, tree, log_key, 0, 9)
    refused = refusal(submit, witness, tree, log_key, 4, 15)
    assert (refused.status, refused.latest_size) == (409, 9)


def test_a_bad_consistency_proof_is_422(
    witness: Witness, tree: MemoryTree, log_key: NoteSigner
) -> None:
    submit(witness, tree, log_key, 0, 5)
    proof = tree.consistency_proof(5, 14)
    proof[0] = bytes(32)
    body = build_request(5, proof, note(log_key, tree, 14))
    assert refusal(witness.add_checkpoint, body).status == 422
    empty = build_request(5, [], note(log_key, tree, 14))
    assert refusal(witness.add_checkpoint, empty).status == 422
    latest = witness.state.latest(ORIGIN)
    assert latest is not None
    assert latest.size == 5


def test_a_proof_from_size_zero_must_be_empty(
    witness: Witness, tree: MemoryTree, log_key: NoteSigner
) -> None:
    body = build_request(0, [tree.root(1)], note(log_key, tree, 5))
    assert refusal(witness.add_checkpoint, body).status == 422
    assert witness.state.latest(ORIGIN) is None


def test_a_checkpoint_not_signed_by_the_log_key_is_403(witness: Witness, tree: MemoryTree) -> None:
    """Same origin, another key (ignored as unknown): no trusted signature verifies."""
    impostor = NoteSigner.generate(ORIGIN)
    body = build_request(0, [], note(impostor, tree, 5))
    assert refusal(witness.add_checkpoint, body).status == 403


def test_a_tampered_signature_is_403(
    witness: Witness, tree: MemoryTree, log_key: NoteSigner
) -> None:
    signed = note(log_key, tree, 5)
    text, _, line = signed.partition("\n\n")
    name, payload = line.removeprefix("\u2014 ").split(" ")
    raw = bytearray(base64.b64decode(payload))
    raw[-1] ^= 1
    tampered = f"{text}\n\n\u2014 {name} {base64.b64encode(bytes(raw)).decode()}\n"
    assert refusal(witness.add_checkpoint, build_request(0, [], tampered)).status == 403


def test_an_unknown_log_is_404(witness: Witness, tree: MemoryTree) -> None:
    other = NoteSigner.generate("other.example/log")
    body = build_request(0, [], note(other, tree, 5, origin="other.example/log"))
    assert refusal(witness.add_checkpoint, body).status == 404


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"old 1\n",
        b"new 0\n\nx",
        b"old 01\n\nx",
        b"old -1\n\nx",
        b"old 0\nnot base64!\n\nx",
        b"old 0\nAAAA\n\nx",
        b"old 0\n\xff\n\nx",
        b"old 0\n\nnot a note",
        b"old 0\n" + base64.b64encode(bytes(33)) + b"\n\nx",
    ],
)
def test_malformed_requests_are_400(witness: Witness, body: bytes) -> None:
    assert refusal(witness.add_checkpoint, body).status == 400


def test_more_than_63_proof_lines_is_400() -> None:
    body = build_request(1, [bytes(32)] * 64, "x")
    assert refusal(parse_request, body).status == 400
    assert parse_request(build_request(1, [bytes(32)] * 63, "n\n")) == AddCheckpoint(
        1, (bytes(32),) * 63, "n\n"
    )


# -- state ---------------------------------------------------------------------------------------


def test_state_survives_a_restart(
    tmp_path: Path, witness: Witness, tree: MemoryTree, log_key: NoteSigner
) -> None:
    """A reloaded witness (same state file and key) continues from what it cosigned."""
    submit(witness, tree, log_key, 0, 11)
    reloaded = load_witness(tmp_path / "witness.db", clock=lambda: NOW)
    assert reloaded.vkey == witness.vkey
    assert list(reloaded.logs) == [ORIGIN]
    latest = reloaded.state.latest(ORIGIN)
    assert latest is not None
    assert (latest.size, latest.root, latest.note) == (11, tree.root(11), note(log_key, tree, 11))
    assert refusal(submit, reloaded, tree, log_key, 0, 15).latest_size == 11
    assert verify_cosignature(
        submit(reloaded, tree, log_key, 11, 15), text_of(tree, 15), reloaded.signer.verifier
    )


def test_the_key_file_is_private_and_state_is_never_overwritten(
    tmp_path: Path, witness: Witness, log_key: NoteSigner
) -> None:
    key_file = tmp_path / "witness.db.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with pytest.raises(Exception, match="exists already"):
        create_witness(tmp_path / "witness.db", "partner.example/w1", [log_key.verifier])
    with pytest.raises(Exception, match="no witness state"):
        WitnessState(tmp_path / "missing.db").config()
