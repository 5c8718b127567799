"""docs/VERIFYING.md cannot drift from the code: its worked example is what the code produces now.

The worked example (§8) is built by ``docs/verifying_example.py`` with the project's own functions.
Each value in the document sits in a fenced block labelled ``<!-- example: NAME -->``; these tests
rebuild every block and compare it byte for byte, then check the example's evidence with the
verifier functions (inclusion, consistency, signed notes, receipts, cosignatures).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ledger import merkle
from ledger.canonical import _DECIMAL, _TIMESTAMP, _UUID, canonical_bytes
from ledger.errors import ProfileError, ProofError, SignatureError
from ledger.journal import GENESIS_PREV, LOG_START, entry_from_record, parse_leaf
from ledger.model import Account
from ledger.note import (
    TYPE_ED25519,
    Checkpoint,
    CosignatureVerifier,
    NoteVerifier,
    compute_key_id,
    open_checkpoint,
    open_note,
    verify_cosignature,
)
from ledger.receipts import TLOG_PROOF_HEADER, Receipt, verify_receipt

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "VERIFYING.md"
GENERATOR = ROOT / "docs" / "verifying_example.py"

_BLOCK = re.compile(r"<!-- example: (\S+) -->\n```([a-z.]*)\n(.*?)\n```\n", re.DOTALL)
_HEX64 = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("verifying_example", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
EXAMPLE = gen.build()
GENERATED: dict[str, tuple[str, str]] = gen.blocks(EXAMPLE)


def _doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def _doc_blocks() -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for name, lang, content in _BLOCK.findall(_doc_text()):
        assert name not in found, f"block {name} appears twice in {DOC.name}"
        found[name] = (lang, content)
    return found


DOC_BLOCKS = _doc_blocks()


def _doc(name: str) -> str:
    return DOC_BLOCKS[name][1]


def _vkey_from_keys_block() -> str:
    line = next(ln for ln in _doc("keys").splitlines() if ln.startswith("vkey "))
    return line.split()[-1]


def test_doc_labels_exactly_the_generated_blocks() -> None:
    """The document labels every generated block, in order, and no block that is not generated."""
    assert list(DOC_BLOCKS) == list(GENERATED)
    assert _doc_text().count("<!-- example: ") == len(GENERATED)


@pytest.mark.parametrize("name", list(GENERATED))
def test_doc_block_equals_generated(name: str) -> None:
    """Each labelled block of §8 is exactly what docs/verifying_example.py prints now."""
    assert DOC_BLOCKS.get(name) == GENERATED[name]


def test_every_hash_in_the_doc_comes_from_the_example() -> None:
    """No 64-hex-digit value anywhere in the document is stale (prose and tables included)."""
    known = {m for _, content in GENERATED.values() for m in _HEX64.findall(content)}
    known |= {merkle.EMPTY_ROOT.hex(), GENESIS_PREV.hex()}
    stale = set(_HEX64.findall(_doc_text())) - known
    assert not stale


def test_generator_is_deterministic() -> None:
    """Two builds print byte-identical Markdown (fixed seeds, nonces, ids and times)."""
    assert gen.render(gen.build()) == gen.render(EXAMPLE)


def test_generator_main_prints_every_block(capsys: pytest.CaptureFixture[str]) -> None:
    """Running the generator prints each labelled block exactly as it appears in the document."""
    gen.main()
    printed = capsys.readouterr().out
    for name, (lang, content) in GENERATED.items():
        assert f"<!-- example: {name} -->\n```{lang}\n{content}\n```\n" in printed


def _table_pattern(kind: str) -> str:
    row = next(ln for ln in _doc_text().splitlines() if ln.startswith(f"| {kind} |"))
    return row.split("`")[1].replace("\\|", "|")


def test_profile_statements_of_section_2_hold_in_code() -> None:
    """The §2 forms, the UTF-16 key order example, NFC and the integer range are the code's."""
    for kind, code in (("timestamp", _TIMESTAMP), ("UUID", _UUID), ("decimal", _DECIMAL)):
        strip = str.maketrans("", "", "()?:")
        assert _table_pattern(kind).translate(strip) == code.pattern.translate(strip)
    assert canonical_bytes({"\uff21": 1, "\U0001f600": 2}).startswith('{"\U0001f600"'.encode())
    assert canonical_bytes(["\x1f\n"]) == b'["\\u001f\\n"]'
    for outside in ("A\u030a", 1.0, 2**53, -(2**53)):
        with pytest.raises(ProfileError):
            canonical_bytes({"x": outside})
    assert canonical_bytes([2**53 - 1, "\u00c5"]) == '[9007199254740991,"\u00c5"]'.encode()


def test_leaf_blocks_are_the_exact_leaf_bytes() -> None:
    """The leaf texts in the document are the hashed bytes, canonical, chained and indexed."""
    prev = GENESIS_PREV
    for leaf in EXAMPLE.leaves:
        data = _doc(f"leaf-{leaf.index}").encode("utf-8")
        assert data == leaf.data
        parsed = parse_leaf(data)
        assert (parsed.log, parsed.index, parsed.prev) == (gen.ORIGIN, leaf.index, prev)
        assert parsed.kind == parsed.body["kind"]
        assert hashlib.sha256(b"\x00" + data).digest() == merkle.leaf_hash(data) == leaf.hash
        prev = leaf.hash
    assert json.loads(_doc("leaf-0-pretty")) == json.loads(EXAMPLE.leaves[0].data)


def test_example_entries_follow_the_record_rules() -> None:
    """Each example entry record parses back, has ≥ 2 postings and balances in every book."""
    for leaf, entry in zip(EXAMPLE.leaves, EXAMPLE.entries, strict=True):
        record = json.loads(_doc(f"leaf-{leaf.index}"))["entry"]
        assert entry_from_record(record) == entry
        totals: dict[str, int] = {}
        for posting in record["postings"]:
            book = Account.parse(posting["account"]).book.value
            totals[book] = totals.get(book, 0) + posting["amount"]
        assert len(record["postings"]) >= 2
        assert set(totals.values()) == {0}


def _mth(hashes: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH over leaf hashes, written independently of ledger.merkle."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(hashes[:k]) + _mth(hashes[k:])).digest()


def test_roots_and_nodes_match_an_independent_mth() -> None:
    """Roots at sizes 0–3 and node (1, 0) equal a from-scratch recursive MTH."""
    hashes = [leaf.hash for leaf in EXAMPLE.leaves]
    for size in range(4):
        assert EXAMPLE.roots[size] == _mth(hashes[:size]) == EXAMPLE.tree.root(size)
    assert EXAMPLE.tree.node(1, 0) == _mth(hashes[:2])
    assert merkle.EMPTY_ROOT.hex() in _doc("roots")


def test_key_id_and_vkey_are_derived_as_documented() -> None:
    """The key id is SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)[:4] and the vkey parses to the same key."""
    verifier = NoteVerifier.from_vkey(_vkey_from_keys_block())
    public = verifier.public_bytes
    digest = hashlib.sha256(gen.ORIGIN.encode() + b"\n\x01" + public).digest()
    assert verifier.key_id == digest[:4] == compute_key_id(gen.ORIGIN, TYPE_ED25519, public)
    assert verifier.vkey == EXAMPLE.signer.vkey
    material = base64.b64decode(verifier.vkey.split("+", 2)[2])
    assert material == b"\x01" + public


def test_checkpoints_open_with_the_published_vkey() -> None:
    """Every signed checkpoint in §8 verifies under the vkey of §8.1 and carries the right root."""
    verifier = NoteVerifier.from_vkey(_vkey_from_keys_block())
    for size in range(4):
        note = _doc(f"checkpoint-{size}") + "\n"
        checkpoint, signed = open_checkpoint(note, [verifier], origin=gen.ORIGIN)
        assert (checkpoint.size, checkpoint.root) == (size, EXAMPLE.roots[size])
        assert signed.verified_by == (gen.ORIGIN,)
        assert note == f"{checkpoint.text()}\n\u2014 {gen.ORIGIN} " + note.rsplit(" ", 1)[1]


def test_signature_covers_exactly_the_note_text() -> None:
    """The size-3 signature is Ed25519 over the three text lines, final newline included."""
    text = Checkpoint(gen.ORIGIN, 3, EXAMPLE.roots[3]).text()
    payload = base64.b64decode(_doc("checkpoint-3").rsplit(" ", 1)[1])
    assert len(payload) == 4 + 64
    assert payload[:4] == EXAMPLE.signer.key_id
    assert EXAMPLE.signer.verifier.verify(text.encode("utf-8"), payload[4:])
    assert not EXAMPLE.signer.verifier.verify(text.rstrip("\n").encode("utf-8"), payload[4:])


def test_inclusion_proofs_verify_for_every_leaf() -> None:
    """Each leaf's proof at size 3 reaches the signed root; a wrong leaf or index does not."""
    root = EXAMPLE.roots[3]
    for receipt in EXAMPLE.receipts:
        merkle.verify_inclusion(receipt.leaf_hash, receipt.index, 3, list(receipt.proof), root)
    proof_1 = [
        bytes.fromhex(line.split(" = ")[1])
        for line in _doc("inclusion-1-of-3").splitlines()
        if line.startswith("proof[")
    ]
    assert proof_1 == list(EXAMPLE.receipts[1].proof)
    merkle.verify_inclusion(EXAMPLE.leaves[1].hash, 1, 3, proof_1, root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(EXAMPLE.leaves[2].hash, 1, 3, proof_1, root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(EXAMPLE.leaves[1].hash, 0, 3, proof_1, root)


@pytest.mark.parametrize(("size1", "size2"), [(2, 3), (1, 3)])
def test_consistency_proofs_verify(size1: int, size2: int) -> None:
    """The documented consistency proofs verify between the signed roots, and tampering fails."""
    block = _doc(f"consistency-{size1}-{size2}")
    proof = [
        bytes.fromhex(ln.split(" = ")[1]) for ln in block.splitlines() if ln.startswith("proof[")
    ]
    assert proof == EXAMPLE.tree.consistency_proof(size1, size2)
    root1, root2 = EXAMPLE.roots[size1], EXAMPLE.roots[size2]
    merkle.verify_consistency(size1, size2, proof, root1, root2)
    with pytest.raises(ProofError):
        merkle.verify_consistency(size1, size2, proof, root1, EXAMPLE.roots[size1])
    with pytest.raises(ProofError):
        merkle.verify_consistency(size1, size2, [*proof[:-1], bytes(32)], root1, root2)


def test_documented_receipt_verifies_offline() -> None:
    """The receipt JSON of §8.7 verifies with the published vkey in the documented order."""
    verifier = NoteVerifier.from_vkey(_vkey_from_keys_block())
    data = json.loads(_doc("receipt-1-json"))
    receipt = Receipt.from_json(data)
    checkpoint, _ = open_checkpoint(receipt.checkpoint, [verifier], origin=receipt.log)
    leaf = parse_leaf(receipt.leaf)
    assert (leaf.log, leaf.index, leaf.body["id"]) == (receipt.log, receipt.index, data["entry_id"])
    assert data["leaf_hash"] == merkle.leaf_hash(receipt.leaf).hex()
    merkle.verify_inclusion(
        leaf.hash, receipt.index, checkpoint.size, list(receipt.proof), checkpoint.root
    )
    assert verify_receipt(receipt, [verifier]).data == EXAMPLE.leaves[1].data
    assert data == EXAMPLE.receipts[1].to_json()


def test_every_example_receipt_verifies() -> None:
    """Receipts for all three leaves verify; under another key or a tampered leaf they do not."""
    verifier = EXAMPLE.signer.verifier
    for receipt in EXAMPLE.receipts:
        assert (
            verify_receipt(Receipt.from_json(receipt.to_json()), [verifier]).index == receipt.index
        )
    with pytest.raises(SignatureError):
        verify_receipt(EXAMPLE.receipts[0], [EXAMPLE.next_signer.verifier])
    forged = EXAMPLE.receipts[1].leaf.replace(b'"amount":200', b'"amount":2000')
    assert forged != EXAMPLE.receipts[1].leaf
    with pytest.raises(ProofError):
        verify_receipt(
            Receipt(**{**_receipt_fields(EXAMPLE.receipts[1]), "leaf": forged}), [verifier]
        )


def _receipt_fields(receipt: Receipt) -> dict[str, object]:
    return {name: getattr(receipt, name) for name in Receipt.__slots__}


def test_tlog_proof_parses_to_the_receipt() -> None:
    """The tlog-proof of §8.7 parses per §6.2 into the same leaf, index, proof and checkpoint."""
    text = _doc("receipt-1-tlog-proof") + "\n"
    head, _, note = text.partition("\n\n")
    lines = head.split("\n")
    assert lines[0] == TLOG_PROOF_HEADER
    assert lines[1].startswith("extra ")
    assert lines[2].startswith("index ")
    leaf_bytes = base64.b64decode(lines[1].removeprefix("extra "), validate=True)
    index = int(lines[2].removeprefix("index "))
    proof = [base64.b64decode(line, validate=True) for line in lines[3:]]
    checkpoint, _ = open_checkpoint(note, [EXAMPLE.signer.verifier], origin=gen.ORIGIN)
    leaf = parse_leaf(leaf_bytes)
    assert (leaf.index, leaf.body["id"]) == (index, str(gen.BURN_ID))
    merkle.verify_inclusion(leaf.hash, index, checkpoint.size, proof, checkpoint.root)
    assert text == EXAMPLE.receipts[1].tlog_proof()


def test_cosignature_verifies_and_is_ignored_by_log_verifiers() -> None:
    """The witness line verifies with its vkey; appended to the note, the log key still opens it."""
    block = _doc("cosignature-3").splitlines()
    vkey = block[0].split()[-1]
    line = block[block.index("cosignature line:") + 1] + "\n"
    witness = CosignatureVerifier.from_vkey(vkey)
    text = Checkpoint(gen.ORIGIN, 3, EXAMPLE.roots[3]).text()
    assert verify_cosignature(line, text, witness) == gen.COSIGNED_AT
    cosigned_note = _doc("checkpoint-3") + "\n" + line
    signed = open_note(cosigned_note, [EXAMPLE.signer.verifier])
    assert signed.verified_by == (gen.ORIGIN,)
    assert len(signed.signatures) == 2
    with pytest.raises(SignatureError):
        verify_cosignature(line, Checkpoint(gen.ORIGIN, 2, EXAMPLE.roots[2]).text(), witness)


def test_log_start_leaf_links_the_rotated_logs() -> None:
    """The LOG_START leaf quotes the old final checkpoint and key; the new log signs over it."""
    leaf = parse_leaf(_doc("log-start-leaf").encode("utf-8"))
    assert (leaf.log, leaf.index, leaf.prev, leaf.kind) == (
        gen.NEXT_ORIGIN,
        0,
        GENESIS_PREV,
        LOG_START,
    )
    old_key = NoteVerifier.from_vkey(_vkey_from_keys_block())
    assert leaf.body["previous_vkey"] == old_key.vkey
    old, _ = open_checkpoint(leaf.body["previous_checkpoint"], [old_key], origin=gen.ORIGIN)
    assert (old.size, old.root) == (3, EXAMPLE.roots[3])
    new_vkey = _doc("rotation").splitlines()[0].split()[-1]
    new, _ = open_checkpoint(
        _doc("checkpoint-next-1") + "\n", [NoteVerifier.from_vkey(new_vkey)], origin=gen.NEXT_ORIGIN
    )
    assert (new.size, new.root) == (1, leaf.hash)


@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("sh", "openssl", "xxd", "base64")),
    reason="needs sh, openssl, xxd and base64",
)
def test_repro_script_prints_the_documented_output() -> None:
    """The shell script of §8.10, run by sh, prints exactly the documented output."""
    result = subprocess.run(
        ["sh", "-s"],
        input=_doc("repro.sh").encode("utf-8") + b"\n",
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout.decode("utf-8") == _doc("repro-output") + "\n"
