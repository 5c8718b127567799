"""Build the worked example of docs/VERIFYING.md §8 and print every value in it.

Run from the repository root::

    python docs/verifying_example.py

Everything is deterministic: fixed Ed25519 seeds (32 bytes of 0x01 for the log, 0x02 for the log
after a key rotation, 0x03 for a witness), fixed UUIDs, nonces and times. The values come from
the project's own functions (``entry_record``, ``build_leaf``, ``MemoryTree``, ``NoteSigner.sign``,
``Receipt``), so the printed blocks are what the ledger itself would store and sign for these
entries. ``tests/unit/test_verifying_doc.py`` checks that every labelled block of
docs/VERIFYING.md equals the block printed here, so the specification cannot drift from the code.

Each block is printed as ``<!-- example: NAME -->`` followed by a fenced code block; paste the
output into §8 of docs/VERIFYING.md when the code changes on purpose.

The seeds are published test keys: never sign anything real with them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger.journal import GENESIS_PREV, LOG_START, Leaf, build_leaf, entry_record
from ledger.merkle import EMPTY_ROOT, MemoryTree, node_hash
from ledger.model import Entry, EntryKind, Lot, LotMove, Posting
from ledger.note import Checkpoint, CosignatureSigner, NoteSigner, cosigned_message
from ledger.receipts import Receipt

ORIGIN = "coalition.example/ledger"
NEXT_ORIGIN = "coalition.example/ledger/2"
WITNESS = "witness.example/rail"
LOG_SEED = bytes([0x01]) * 32
NEXT_LOG_SEED = bytes([0x02]) * 32
WITNESS_SEED = bytes([0x03]) * 32

MEMBER = "m_5f1c0a9e3b7d24c6a8e0f913"
EARN_ID = UUID("0b5e6f2a-3c1d-4e8f-9a7b-1c2d3e4f5a01")
BURN_ID = UUID("0b5e6f2a-3c1d-4e8f-9a7b-1c2d3e4f5a02")
REVERSAL_ID = UUID("0b5e6f2a-3c1d-4e8f-9a7b-1c2d3e4f5a03")
LOT_ID = UUID("5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c10")
SUPER_CREDENTIAL = "c3a1f09b7e24d6580b1e"
RAIL_CREDENTIAL = "9d04e7b2a6c15f38e0d7"

#: One batch per entry, so the log has a checkpoint at every size; committed_at of each batch.
COMMITTED_AT = (
    datetime(2025, 3, 14, 9, 26, 54, 310522, tzinfo=UTC),
    datetime(2025, 3, 20, 17, 45, 12, 590117, tzinfo=UTC),
    datetime(2025, 3, 21, 6, 2, 1, 48263, tzinfo=UTC),
)
NONCES = tuple(bytes(range(base, base + 16)) for base in (0xA0, 0xB0, 0xC0))
OPENED_AT = datetime(2025, 3, 1, 0, 0, 0, tzinfo=UTC)
COSIGNED_AT = int(datetime(2025, 3, 21, 6, 5, 0, tzinfo=UTC).timestamp())
ROTATED_AT = datetime(2025, 4, 1, 0, 0, 0, 125000, tzinfo=UTC)
ROTATION_NONCE = bytes(range(0xD0, 0xE0))


def log_signer() -> NoteSigner:
    """The example log's key (test seed 0x01…01), named after the log's origin."""
    return NoteSigner.from_private_bytes(ORIGIN, LOG_SEED)


def next_log_signer() -> NoteSigner:
    """The key of the log that follows a key rotation (test seed 0x02…02)."""
    return NoteSigner.from_private_bytes(NEXT_ORIGIN, NEXT_LOG_SEED)


def witness_signer() -> CosignatureSigner:
    """A partner's witness key (test seed 0x03…03), type 0x04 for cosignature/v1."""
    return CosignatureSigner.from_private_bytes(WITNESS, WITNESS_SEED)


def example_entries() -> list[Entry]:
    """EARN at the supermarket, BURN at the rail operator, BURN_REVERSAL of that burn."""
    earned_at = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
    earn = Entry(
        id=EARN_ID,
        kind=EntryKind.EARN,
        postings=(
            Posting("partner:SUPER:issued", -250),
            Posting(f"member:{MEMBER}:available", 250),
        ),
        business_time=earned_at,
        booked_at=datetime(2025, 3, 14, 9, 26, 54, 102300, tzinfo=UTC),
        partner="SUPER",
        credential=SUPER_CREDENTIAL,
        idempotency_key="till-0042:2025-03-14:000917",
        opened_lots=(
            Lot(
                id=LOT_ID,
                member=MEMBER,
                funder="SUPER",
                amount=250,
                earned_at=earned_at,
                expires_at=earned_at + timedelta(days=3 * 365),
                pending_until=None,
                price_version="SUPER/v3",
            ),
        ),
        attributes={
            "basket_cents": 25040,
            "cash_cents": 25040,
            "explanation": "1 point per whole euro paid (250.40 €)",
            "rules": {"contract": "SUPER/v3"},
        },
    )
    burn = Entry(
        id=BURN_ID,
        kind=EntryKind.BURN,
        postings=(
            Posting(f"member:{MEMBER}:available", -200),
            Posting("partner:RAIL:redeemed", 200),
        ),
        business_time=datetime(2025, 3, 20, 17, 45, 12, 0, tzinfo=UTC),
        booked_at=datetime(2025, 3, 20, 17, 45, 12, 381004, tzinfo=UTC),
        partner="RAIL",
        credential=RAIL_CREDENTIAL,
        idempotency_key="web-order-RN-88412",
        lot_moves=(LotMove(LOT_ID, -200),),
        attributes={"channel": "web", "order_ref": "RN-88412"},
    )
    reversal = Entry(
        id=REVERSAL_ID,
        kind=EntryKind.BURN_REVERSAL,
        postings=(
            Posting("partner:RAIL:redeemed", -200),
            Posting(f"member:{MEMBER}:available", 200),
        ),
        business_time=datetime(2025, 3, 21, 6, 1, 30, 0, tzinfo=UTC),
        booked_at=datetime(2025, 3, 21, 6, 1, 30, 774051, tzinfo=UTC),
        partner="RAIL",
        credential=RAIL_CREDENTIAL,
        idempotency_key="web-cancel-RN-88412",
        refers_to=BURN_ID,
        reason="train supprimé, billet remboursé",
        lot_moves=(LotMove(LOT_ID, 200),),
    )
    return [earn, burn, reversal]


@dataclass(frozen=True)
class Example:
    """Every value of the worked example."""

    signer: NoteSigner
    entries: list[Entry]
    leaves: list[Leaf]
    tree: MemoryTree
    roots: dict[int, bytes]
    notes: dict[int, str]
    """Signed checkpoint notes of the example log, by tree size (0: the log's opening)."""
    receipts: list[Receipt]
    """A receipt for each leaf against the checkpoint at size 3."""
    consistency: dict[tuple[int, int], list[bytes]]
    witness: CosignatureSigner
    cosignature: str
    next_signer: NoteSigner
    log_start: Leaf
    next_note: str


def build() -> Example:
    """Build the example log exactly as the integrator would, one batch per entry."""
    signer = log_signer()
    entries = example_entries()
    tree = MemoryTree()
    notes = {0: signer.sign(Checkpoint(ORIGIN, 0, EMPTY_ROOT).text())}
    roots = {0: EMPTY_ROOT}
    leaves: list[Leaf] = []
    prev = GENESIS_PREV
    for index, entry in enumerate(entries):
        leaf = build_leaf(
            log=ORIGIN,
            index=index,
            prev=prev,
            kind=entry.kind.value,
            body=entry_record(entry),
            committed_at=COMMITTED_AT[index],
            nonce=NONCES[index],
        )
        leaves.append(leaf)
        prev = leaf.hash
        tree.append(leaf.data)
        roots[tree.size] = tree.root()
        notes[tree.size] = signer.sign(Checkpoint(ORIGIN, tree.size, roots[tree.size]).text())
    size = tree.size
    receipts = [
        Receipt(
            entry.id, ORIGIN, i, leaf.data, notes[size], size, tuple(tree.inclusion_proof(i, size))
        )
        for i, (entry, leaf) in enumerate(zip(entries, leaves, strict=True))
    ]
    consistency = {(m, n): tree.consistency_proof(m, n) for m, n in ((1, 3), (2, 3))}
    witness = witness_signer()
    cosignature = witness.cosign(Checkpoint(ORIGIN, size, roots[size]).text(), COSIGNED_AT)
    next_signer = next_log_signer()
    log_start = build_leaf(
        log=NEXT_ORIGIN,
        index=0,
        prev=GENESIS_PREV,
        kind=LOG_START,
        body={
            "previous_log": ORIGIN,
            "previous_checkpoint": notes[size],
            "previous_vkey": signer.vkey,
        },
        committed_at=ROTATED_AT,
        nonce=ROTATION_NONCE,
    )
    next_note = next_signer.sign(Checkpoint(NEXT_ORIGIN, 1, log_start.hash).text())
    return Example(
        signer,
        entries,
        leaves,
        tree,
        roots,
        notes,
        receipts,
        consistency,
        witness,
        cosignature,
        next_signer,
        log_start,
        next_note,
    )


# --- Traces of the RFC 9162 verification algorithms ---------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _shift(fn: int, sn: int) -> tuple[int, int]:
    while fn and not fn & 1:
        fn, sn = fn >> 1, sn >> 1
    return fn, sn


def inclusion_trace(leaf: bytes, index: int, size: int, proof: list[bytes]) -> list[str]:
    """RFC 9162 §2.1.3.2, step by step, as text lines; the last ``r`` is the root."""
    fn, sn, r = index, size - 1, leaf
    lines = [f"step 2-3: fn = {fn}, sn = {sn}, r = leaf hash = {r.hex()}"]
    for i, p in enumerate(proof):
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            how = f"LSB(fn) = {fn & 1}, fn {'=' if fn == sn else '!='} sn: r = H(0x01 || p || r)"
            if not fn & 1:
                fn, sn = _shift(fn, sn)
        else:
            r = node_hash(r, p)
            how = "LSB(fn) = 0, fn != sn: r = H(0x01 || r || p)"
        fn, sn = fn >> 1, sn >> 1
        lines.append(f"step 4, p[{i}] = {p.hex()}")
        lines.append(f"  {how} = {r.hex()}; shift: fn = {fn}, sn = {sn}")
    lines.append(f"step 5: sn = {sn}; r = {r.hex()}")
    return lines


def consistency_trace(size1: int, size2: int, proof: list[bytes], root1: bytes) -> list[str]:
    """RFC 9162 §2.1.4.2, step by step, as text lines; the last fr, sr are the two roots."""
    path = list(proof)
    lines = [f"step 1: proof has {len(proof)} hash(es)"]
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
        lines.append(f"step 2: first = {size1} is a power of two: prepend root1 = {root1.hex()}")
    else:
        lines.append(f"step 2: first = {size1} is not a power of two: nothing prepended")
    fn, sn = size1 - 1, size2 - 1
    lines.append(f"step 3: fn = {fn}, sn = {sn}")
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    lines.append(f"step 4: fn = {fn}, sn = {sn}")
    fr = sr = path[0]
    lines.append(f"step 5: fr = sr = c[0] = {fr.hex()}")
    for i, c in enumerate(path[1:], start=1):
        lines.append(f"step 6, c[{i}] = {c.hex()}")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            lines.append(f"  LSB(fn) = {fn & 1}, fn {'=' if fn == sn else '!='} sn:")
            lines.append(f"  fr = H(0x01 || c || fr) = {fr.hex()}")
            lines.append(f"  sr = H(0x01 || c || sr) = {sr.hex()}")
            if not fn & 1:
                fn, sn = _shift(fn, sn)
        else:
            sr = node_hash(sr, c)
            lines.append("  LSB(fn) = 0, fn != sn:")
            lines.append(f"  sr = H(0x01 || sr || c) = {sr.hex()}")
        fn, sn = fn >> 1, sn >> 1
        lines.append(f"  shift: fn = {fn}, sn = {sn}")
    lines.append(f"step 7: sn = {sn}; fr = {fr.hex()}; sr = {sr.hex()}")
    return lines


# --- The labelled blocks ------------------------------------------------------------------------


def _keys_block(ex: Example) -> str:
    signer = ex.signer
    public = signer.verifier.public_bytes
    preimage = ORIGIN.encode() + b"\n" + b"\x01" + public
    return "\n".join(
        [
            f"key name (= origin)        {signer.name}",
            f"Ed25519 seed (TEST ONLY)   {signer.private_bytes().hex()}",
            f"public key                 {public.hex()}",
            f"key id input (hex)         {preimage.hex()}",
            f"SHA-256(key id input)      {hashlib.sha256(preimage).hexdigest()}",
            f"key id                     {signer.key_id.hex()}",
            f"vkey                       {signer.vkey}",
            f"skey (TEST ONLY)           {signer.skey}",
        ]
    )


def _leaf_hashes_block(ex: Example) -> str:
    lines = []
    for leaf in ex.leaves:
        head = (b"\x00" + leaf.data[:8]).hex(" ")
        lines.append(f"leaf {leaf.index}: {len(leaf.data)} bytes; hashed input starts {head} ...")
        lines.append(f"  leaf hash = SHA-256(0x00 || leaf) = {leaf.hash.hex()}")
    return "\n".join(lines)


def _nodes_block(ex: Example) -> str:
    nodes = ex.tree.nodes()
    lines = [
        f"({level}, {index})  {value.hex()}"
        for (level, index), value in sorted(nodes.items(), key=lambda kv: (kv[0][0], kv[0][1]))
    ]
    lines.append(f"(1, 0) = H(0x01 || (0, 0) || (0, 1)) = {nodes[(1, 0)].hex()}")
    return "\n".join(lines)


def _roots_block(ex: Example) -> str:
    lines = []
    formulas = {
        0: 'SHA-256("")',
        1: "(0, 0)",
        2: "(1, 0)",
        3: "H(0x01 || (1, 0) || (0, 2))",
    }
    for size, root in sorted(ex.roots.items()):
        lines.append(f"size {size}: {formulas[size]}")
        lines.append(f"  hex    {root.hex()}")
        lines.append(f"  base64 {_b64(root)}")
    return "\n".join(lines)


def _signature_block(ex: Example) -> str:
    note = ex.notes[3]
    text, _, line = note.rpartition("\n\n")
    text += "\n"
    payload = base64.b64decode(line.rstrip("\n").split(" ")[-1])
    return "\n".join(
        [
            f"signed message = note text, UTF-8, {len(text.encode())} bytes (hex):",
            f"  {text.encode().hex()}",
            f"signature line payload = base64-decoded, {len(payload)} bytes:",
            f"  key id    {payload[:4].hex()}",
            f"  signature {payload[4:].hex()}",
        ]
    )


def _inclusion_block(ex: Example, index: int) -> str:
    receipt = ex.receipts[index]
    proof = list(receipt.proof)
    lines = [
        f"leaf index {index}, tree size {receipt.tree_size}",
        *(f"proof[{i}] = {p.hex()}" for i, p in enumerate(proof)),
        "",
        *inclusion_trace(ex.leaves[index].hash, index, receipt.tree_size, proof),
        f"root at size {receipt.tree_size} = {ex.roots[receipt.tree_size].hex()}",
        "r = root and sn = 0: included",
    ]
    return "\n".join(lines)


def _consistency_block(ex: Example, size1: int, size2: int) -> str:
    proof = ex.consistency[(size1, size2)]
    root1, root2 = ex.roots[size1], ex.roots[size2]
    lines = [
        f"first = {size1}, root1 = {root1.hex()}",
        f"second = {size2}, root2 = {root2.hex()}",
        *(f"proof[{i}] = {p.hex()}" for i, p in enumerate(proof)),
        "",
        *consistency_trace(size1, size2, proof, root1),
        "fr = root1, sr = root2 and sn = 0: consistent",
    ]
    return "\n".join(lines)


def _cosignature_block(ex: Example) -> str:
    text = Checkpoint(ORIGIN, 3, ex.roots[3]).text()
    message = cosigned_message(text, COSIGNED_AT)
    payload = base64.b64decode(ex.cosignature.rstrip("\n").split(" ")[-1])
    return "\n".join(
        [
            f"witness vkey (TEST ONLY seed 03…03)  {ex.witness.vkey}",
            f"timestamp                            {COSIGNED_AT}",
            f"signed message (hex)                 {message.hex()}",
            "cosignature line:",
            ex.cosignature.rstrip("\n"),
            "payload (base64-decoded, 76 bytes):",
            f"  key id    {payload[:4].hex()}",
            f"  timestamp {payload[4:12].hex()}",
            f"  signature {payload[12:].hex()}",
        ]
    )


def _rotation_block(ex: Example) -> str:
    return "\n".join(
        [
            f"new log vkey (TEST ONLY seed 02…02)  {ex.next_signer.vkey}",
            f"LOG_START leaf hash = root at size 1  {ex.log_start.hash.hex()}",
        ]
    )


def repro_script(ex: Example) -> str:
    """A POSIX sh script that recomputes the hashes, the root and the key id with openssl."""
    lines = [
        "#!/bin/sh",
        "# Needs openssl (1.1.1 or later), xxd and base64. H(x) = SHA-256(x) in lowercase hex.",
        "set -eu",
        "h() { openssl dgst -sha256 -r | cut -c1-64; }",
        "",
    ]
    for leaf in ex.leaves:
        text = leaf.data.decode("utf-8")
        assert "'" not in text, "leaf text must be quotable in sh"
        lines.append(f"leaf{leaf.index}='{text}'")
    lines += [
        "",
        "# leaf hash = H(0x00 || leaf bytes); printf '\\000' writes the 0x00 byte",
        *(
            f"h{i}=$({{ printf '\\000'; printf '%s' \"$leaf{i}\"; }} | h)"
            for i in range(len(ex.leaves))
        ),
        "# node hash = H(0x01 || left || right), from the hex of the children",
        'n10=$(printf \'01%s%s\' "$h0" "$h1" | xxd -r -p | h)',
        'root3=$(printf \'01%s%s\' "$n10" "$h2" | xxd -r -p | h)',
        'echo "leaf hash 0   $h0"',
        'echo "leaf hash 1   $h1"',
        'echo "leaf hash 2   $h2"',
        'echo "node (1, 0)   $n10"',
        'echo "root size 3   $root3"',
        'echo "root base64   $(printf \'%s\' "$root3" | xxd -r -p | base64)"',
        "",
        "# key id = first 4 bytes of H(name || 0x0A || 0x01 || public key)",
        f"pub={ex.signer.verifier.public_bytes.hex()}",
        f"kid=$({{ printf '%s\\n' '{ORIGIN}'; printf '01%s' \"$pub\" | xxd -r -p; }} \\",
        "  | h | cut -c1-8)",
        'echo "key id        $kid"',
        "",
        "# the checkpoint signature: Ed25519 over the note text (everything before the blank line)",
        "dir=$(mktemp -d)",
        f"printf '%s\\n' '{ORIGIN}' 3 \"$(printf '%s' \"$root3\" | xxd -r -p | base64)\""
        ' > "$dir/text"',
        f"sig='{ex.notes[3].rstrip(chr(10)).split(' ')[-1]}'",
        'printf \'%s\' "$sig" | base64 -d | tail -c 64 > "$dir/sig"',
        "# an Ed25519 public key as DER SubjectPublicKeyInfo: fixed 12-byte prefix, then the key",
        'printf \'302a300506032b6570032100%s\' "$pub" | xxd -r -p > "$dir/pub.der"',
        'openssl pkey -pubin -inform DER -in "$dir/pub.der" -out "$dir/pub.pem"',
        'openssl pkeyutl -verify -pubin -inkey "$dir/pub.pem" -rawin \\',
        '  -in "$dir/text" -sigfile "$dir/sig"',
        'rm -r "$dir"',
    ]
    return "\n".join(lines)


def repro_output(ex: Example) -> str:
    """What :func:`repro_script` prints."""
    h = [leaf.hash.hex() for leaf in ex.leaves]
    return "\n".join(
        [
            f"leaf hash 0   {h[0]}",
            f"leaf hash 1   {h[1]}",
            f"leaf hash 2   {h[2]}",
            f"node (1, 0)   {ex.tree.node(1, 0).hex()}",
            f"root size 3   {ex.roots[3].hex()}",
            f"root base64   {_b64(ex.roots[3])}",
            f"key id        {ex.signer.key_id.hex()}",
            "Signature Verified Successfully",
        ]
    )


def blocks(ex: Example | None = None) -> dict[str, tuple[str, str]]:
    """Every labelled block of §8: name → (fence language, exact content without final newline).

    Notes end in a newline; their blocks hold the note without it (a fence ends the line).
    """
    ex = ex or build()
    out: dict[str, tuple[str, str]] = {"keys": ("text", _keys_block(ex))}
    out["leaf-0-pretty"] = (
        "json",
        json.dumps(json.loads(ex.leaves[0].data), indent=2, ensure_ascii=False),
    )
    for leaf in ex.leaves:
        out[f"leaf-{leaf.index}"] = ("json", leaf.data.decode("utf-8"))
    out["leaf-hashes"] = ("text", _leaf_hashes_block(ex))
    out["nodes"] = ("text", _nodes_block(ex))
    out["roots"] = ("text", _roots_block(ex))
    for size in sorted(ex.notes):
        out[f"checkpoint-{size}"] = ("text", ex.notes[size].removesuffix("\n"))
    out["signature-3"] = ("text", _signature_block(ex))
    out["inclusion-1-of-3"] = ("text", _inclusion_block(ex, 1))
    out["consistency-2-3"] = ("text", _consistency_block(ex, 2, 3))
    out["consistency-1-3"] = ("text", _consistency_block(ex, 1, 3))
    out["receipt-1-json"] = (
        "json",
        json.dumps(ex.receipts[1].to_json(), indent=2, ensure_ascii=False),
    )
    out["receipt-1-tlog-proof"] = ("text", ex.receipts[1].tlog_proof().removesuffix("\n"))
    out["cosignature-3"] = ("text", _cosignature_block(ex))
    out["log-start-leaf"] = ("json", ex.log_start.data.decode("utf-8"))
    out["rotation"] = ("text", _rotation_block(ex))
    out["checkpoint-next-1"] = ("text", ex.next_note.removesuffix("\n"))
    out["repro.sh"] = ("sh", repro_script(ex))
    out["repro-output"] = ("text", repro_output(ex))
    return out


def render(ex: Example | None = None) -> str:
    """The blocks as Markdown, each preceded by its ``<!-- example: NAME -->`` label."""
    parts = []
    for name, (lang, content) in blocks(ex).items():
        parts.append(f"<!-- example: {name} -->\n```{lang}\n{content}\n```\n")
    return "\n".join(parts)


def main() -> None:
    """Print every block of the worked example."""
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
