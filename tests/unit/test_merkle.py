"""Merkle tree: RFC 6962 known answers, verifier probes, and properties checked against the RFC.

The reference used by the properties, :class:`RecursiveTree`, transcribes RFC 9162 §2.1.1, §2.1.3.1
and §2.1.4.1 literally (recursion on ranges, memoised), independent of the store-shaped code under
test and of the bit-walking verifiers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import InvalidRequest, ProofError
from ledger.merkle import (
    EMPTY_ROOT,
    Address,
    MemoryTree,
    consistency_addresses,
    consistency_proof,
    inclusion_addresses,
    inclusion_proof,
    leaf_hash,
    node_hash,
    nodes_created_by_append,
    root_addresses,
    root_from_inclusion,
    root_from_nodes,
    verify_consistency,
    verify_inclusion,
)
from tests.vectors import load_vector

VECTORS = load_vector("rfc6962-vectors")


def _hashes(hex_list: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in hex_list]


@pytest.fixture(scope="module")
def reference_tree() -> MemoryTree:
    """The 8-leaf reference tree of the vectors."""
    return MemoryTree(bytes.fromhex(leaf["input_hex"]) for leaf in VECTORS["leaves"])


# --- Known answers ------------------------------------------------------------------------------


def test_empty_root_is_sha256_of_nothing() -> None:
    """The empty tree's root is SHA-256 of the empty string, as published for size 0."""
    assert VECTORS["roots"][0]["tree_size"] == 0
    assert EMPTY_ROOT.hex() == VECTORS["roots"][0]["root_hex"]
    assert MemoryTree().root() == EMPTY_ROOT


@pytest.mark.parametrize("case", VECTORS["roots"], ids=lambda c: f"size{c['tree_size']}")
def test_root_matches_published_value(reference_tree: MemoryTree, case: dict[str, Any]) -> None:
    """The root at every size 0..8 of the reference tree is the published one."""
    assert reference_tree.root(case["tree_size"]).hex() == case["root_hex"]


@pytest.mark.parametrize(
    "case", VECTORS["complete_subtree_hashes"], ids=lambda c: f"L{c['level']}i{c['index']}"
)
def test_complete_subtree_matches_published_value(
    reference_tree: MemoryTree, case: dict[str, Any]
) -> None:
    """Node (level, index) covers the published leaf range and has the published hash."""
    assert case["first_leaf"] == case["index"] << case["level"]
    assert case["end_leaf_exclusive"] == (case["index"] + 1) << case["level"]
    assert reference_tree.node(case["level"], case["index"]).hex() == case["hash_hex"]


@pytest.mark.parametrize("case", VECTORS["inclusion_proofs"], ids=lambda c: c["source"])
def test_inclusion_proof_matches_and_verifies(
    reference_tree: MemoryTree, case: dict[str, Any]
) -> None:
    """The generated audit path is the published one, and the published one verifies."""
    index, size = case["leaf_index"], case["tree_size"]
    proof = _hashes(case["proof_hex"])
    assert reference_tree.node(0, index).hex() == case["leaf_hash_hex"]
    assert reference_tree.inclusion_proof(index, size) == proof
    verify_inclusion(
        bytes.fromhex(case["leaf_hash_hex"]), index, size, proof, bytes.fromhex(case["root_hex"])
    )


@pytest.mark.parametrize("case", VECTORS["consistency_proofs"], ids=lambda c: c["source"])
def test_consistency_proof_matches_and_verifies(
    reference_tree: MemoryTree, case: dict[str, Any]
) -> None:
    """The generated consistency proof is the published one, and the published one verifies."""
    size1, size2 = case["size1"], case["size2"]
    proof = _hashes(case["proof_hex"])
    assert reference_tree.consistency_proof(size1, size2) == proof
    verify_consistency(
        size1, size2, proof, bytes.fromhex(case["root1_hex"]), bytes.fromhex(case["root2_hex"])
    )


def _probe_id(probe: dict[str, Any]) -> str:
    return f"{probe['file'].removeprefix('testdata/')}"


def test_probe_set_is_complete() -> None:
    """All 196 published probes are present, one per file."""
    assert len(VECTORS["probes"]) == 196
    assert len({_probe_id(p) for p in VECTORS["probes"]}) == 196


@pytest.mark.parametrize("probe", VECTORS["probes"], ids=_probe_id)
def test_verifier_probe(probe: dict[str, Any]) -> None:
    """Each published probe is accepted or rejected as published (strict 32-byte hashes)."""
    expect = probe.get("expect_strict", probe["expect"])
    if expect == "accept":
        _run_probe(probe)
    else:
        with pytest.raises(ProofError):
            _run_probe(probe)


def _run_probe(probe: dict[str, Any]) -> None:
    proof = _hashes(probe["proof_hex"])
    if probe["kind"] == "inclusion":
        verify_inclusion(
            bytes.fromhex(probe["leaf_hash_hex"]),
            probe["leaf_index"],
            probe["tree_size"],
            proof,
            bytes.fromhex(probe["root_hex"]),
        )
    else:
        verify_consistency(
            probe["size1"],
            probe["size2"],
            proof,
            bytes.fromhex(probe["root1_hex"]),
            bytes.fromhex(probe["root2_hex"]),
        )


def test_strict_probe_is_arithmetically_sound_but_has_short_hashes() -> None:
    """The one policy probe would pass a lenient verifier: equal sizes, equal 12-byte roots."""
    (probe,) = [p for p in VECTORS["probes"] if "expect_strict" in p]
    assert probe["expect"] == "accept"
    assert probe["expect_strict"] == "reject"
    assert probe["size1"] == probe["size2"]
    assert probe["root1_hex"] == probe["root2_hex"]
    assert len(bytes.fromhex(probe["root1_hex"])) == 12


@pytest.mark.parametrize(
    "case",
    [c for c in VECTORS["other_known_answers"] if "leaf_hash_hex" in c],
    ids=lambda c: c["source"],
)
def test_other_leaf_hash_known_answer(case: dict[str, Any]) -> None:
    """The leaf hash of published inputs (Go sumdb's RecordHash) matches."""
    digest = leaf_hash(bytes.fromhex(case["input_hex"]))
    assert digest.hex() == case["leaf_hash_hex"]
    if "leaf_hash_base64" in case:
        import base64

        assert base64.b64encode(digest).decode() == case["leaf_hash_base64"]


# --- Store-facing planning and batching ---------------------------------------------------------


class RecordingStore:
    """A dict of nodes that records every batch fetched, like a SQL store counting queries."""

    def __init__(self, nodes: Mapping[Address, bytes]) -> None:
        self.nodes = dict(nodes)
        self.calls: list[list[Address]] = []

    def get(self, addresses: Sequence[Address]) -> dict[Address, bytes]:
        self.calls.append(list(addresses))
        return {a: self.nodes[a] for a in addresses if a in self.nodes}


def test_append_fetches_only_the_old_peaks_in_one_batch() -> None:
    """Appending to a tree of 13 leaves fetches nodes (3,0), (2,2), (0,12) in one call."""
    tree = MemoryTree(bytes([i]) for i in range(13))
    store = RecordingStore(tree.nodes())
    nodes_created_by_append(13, [leaf_hash(b"x")], store.get)
    assert store.calls == [[(3, 0), (2, 2), (0, 12)]]


def test_append_to_empty_tree_fetches_nothing() -> None:
    """The empty tree has no peaks, so no query is made."""
    store = RecordingStore({})
    created = nodes_created_by_append(0, [leaf_hash(b"a"), leaf_hash(b"b")], store.get)
    assert store.calls == []
    assert [(level, index) for level, index, _ in created] == [(0, 0), (0, 1), (1, 0)]


def test_append_with_missing_store_node_is_a_bug() -> None:
    """A store that lacks a peak it should hold raises LookupError, not a wrong tree."""
    with pytest.raises(LookupError):
        nodes_created_by_append(3, [leaf_hash(b"x")], lambda addresses: {})


def test_append_refuses_malformed_leaf_hash() -> None:
    """A new leaf hash must be 32 bytes."""
    with pytest.raises(ProofError):
        nodes_created_by_append(0, [b"short"], lambda addresses: {})


@pytest.mark.parametrize(
    "call",
    [
        lambda: inclusion_addresses(5, 5),
        lambda: inclusion_addresses(-1, 5),
        lambda: consistency_addresses(0, 5),
        lambda: consistency_addresses(6, 5),
        lambda: root_addresses(-1),
        lambda: root_addresses(2**64),
        lambda: MemoryTree([b"a"]).root(2),
    ],
    ids=[
        "index=size",
        "negative index",
        "from zero",
        "shrinking",
        "negative size",
        "u64",
        "future",
    ],
)
def test_planner_refuses_impossible_requests(call: Any) -> None:
    """Proofs of leaves or sizes that do not exist are refused as invalid requests."""
    with pytest.raises(InvalidRequest):
        call()


def test_root_addresses_follow_the_bits_of_the_size() -> None:
    """Size 13 = 8 + 4 + 1: the root folds nodes (3,0), (2,2), (0,12)."""
    assert root_addresses(13) == [(3, 0), (2, 2), (0, 12)]
    assert root_addresses(0) == []
    assert root_addresses(16) == [(4, 0)]


# --- The RFC's recursive definitions, as an independent reference -------------------------------


def _split(count: int) -> int:
    k = 1
    while k * 2 < count:
        k *= 2
    return k


class RecursiveTree:
    """MTH, PATH and PROOF of RFC 9162 §2.1, transcribed as recursion over leaf ranges."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self.leaves = list(leaf_hashes)
        self._memo: dict[tuple[int, int], bytes] = {}

    def mth(self, start: int, end: int) -> bytes:
        if (start, end) not in self._memo:
            if end - start == 0:
                value = EMPTY_ROOT
            elif end - start == 1:
                value = self.leaves[start]
            else:
                k = _split(end - start)
                value = node_hash(self.mth(start, start + k), self.mth(start + k, end))
            self._memo[(start, end)] = value
        return self._memo[(start, end)]

    def path(self, m: int, start: int, end: int) -> list[bytes]:
        if end - start == 1:
            return []
        k = _split(end - start)
        if m < k:
            return [*self.path(m, start, start + k), self.mth(start + k, end)]
        return [*self.path(m - k, start + k, end), self.mth(start, start + k)]

    def subproof(self, m: int, start: int, end: int, whole: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if whole else [self.mth(start, end)]
        k = _split(n)
        if m <= k:
            return [*self.subproof(m, start, start + k, whole), self.mth(start + k, end)]
        return [*self.subproof(m - k, start + k, end, False), self.mth(start, start + k)]


def _inclusion_sides(m: int, n: int) -> list[bool]:
    """For PATH(m, D[n]), bottom-up: is each proof hash a *left* sibling? (recursive definition)"""
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_inclusion_sides(m, k), False]
    return [*_inclusion_sides(m - k, n - k), True]


def oracle_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Would the RFC's recursive PATH, for this claimed position, rebuild ``root``?"""
    if not 0 <= index < size:
        return False
    sides = _inclusion_sides(index, size)
    if len(sides) != len(proof):
        return False
    acc = leaf
    for sibling, is_left in zip(proof, sides, strict=True):
        acc = node_hash(sibling, acc) if is_left else node_hash(acc, sibling)
    return acc == root


def oracle_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> bool:
    """Would the RFC's recursive SUBPROOF, for these claimed sizes, rebuild both roots?"""
    if not 0 < size1 <= size2:
        return False
    elements = iter(proof)

    def rebuild(m: int, n: int, whole: bool) -> tuple[bytes, bytes]:
        if m == n:
            if whole:
                return root1, root1
            value = next(elements)
            return value, value
        k = _split(n)
        if m <= k:
            old, new = rebuild(m, k, whole)
            return old, node_hash(new, next(elements))
        old, new = rebuild(m - k, n - k, False)
        left = next(elements)
        return node_hash(left, old), node_hash(left, new)

    try:
        rebuilt = rebuild(size1, size2, True)
    except StopIteration:
        return False
    leftover = next(elements, None) is not None
    return not leftover and rebuilt == (root1, root2)


def _accepts(check: Any, *args: Any) -> bool:
    try:
        check(*args)
    except ProofError:
        return False
    return True


# --- Properties over random trees ---------------------------------------------------------------

# Sizes around powers of two are where the right edge of the tree changes shape.
EDGE_SIZES = sorted({2**k + d for k in range(14) for d in (-1, 0, 1)} - {0})
LARGE_SIZES = st.integers(min_value=1, max_value=10_000) | st.sampled_from(EDGE_SIZES)
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None)


def _leaves(size: int, salt: int) -> Iterator[bytes]:
    return (f"{salt}:{i}".encode() for i in range(size))


@st.composite
def trees(draw: st.DrawFn, sizes: st.SearchStrategy[int] = LARGE_SIZES) -> MemoryTree:
    size = draw(sizes)
    return MemoryTree(_leaves(size, draw(st.integers(0, 2**16))))


def _reference(tree: MemoryTree) -> RecursiveTree:
    return RecursiveTree([tree.node(0, i) for i in range(tree.size)])


@given(trees(), st.data())
@PROPERTY_SETTINGS
def test_inclusion_proofs_match_rfc_and_verify(tree: MemoryTree, data: st.DataObject) -> None:
    """Every sampled audit path equals RFC PATH and verifies against the recursive root."""
    reference = _reference(tree)
    for _ in range(6):
        size = data.draw(st.integers(1, tree.size))
        index = data.draw(st.integers(0, size - 1))
        proof = tree.inclusion_proof(index, size)
        root = reference.mth(0, size)
        assert tree.root(size) == root
        assert proof == reference.path(index, 0, size)
        verify_inclusion(tree.node(0, index), index, size, proof, root)


@given(trees(), st.data())
@PROPERTY_SETTINGS
def test_consistency_proofs_match_rfc_and_verify(tree: MemoryTree, data: st.DataObject) -> None:
    """Every sampled consistency proof equals RFC PROOF and verifies between recursive roots."""
    reference = _reference(tree)
    for _ in range(6):
        size2 = data.draw(st.integers(1, tree.size))
        size1 = data.draw(st.integers(1, size2))
        proof = tree.consistency_proof(size1, size2)
        assert proof == reference.subproof(size1, 0, size2, True)
        verify_consistency(size1, size2, proof, reference.mth(0, size1), reference.mth(0, size2))


def _flip(value: bytes, bit: int) -> bytes:
    flipped = bytearray(value)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


@given(trees(), st.data())
@PROPERTY_SETTINGS
def test_tampered_inclusion_is_rejected(tree: MemoryTree, data: st.DataObject) -> None:
    """Flipping any bit of the leaf, a proof hash or the root, or another index, is rejected."""
    size = data.draw(st.integers(1, tree.size))
    index = data.draw(st.integers(0, size - 1))
    leaf, proof, root = tree.node(0, index), tree.inclusion_proof(index, size), tree.root(size)
    bit = data.draw(st.integers(0, 255))
    with pytest.raises(ProofError):
        verify_inclusion(_flip(leaf, bit), index, size, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(leaf, index, size, proof, _flip(root, bit))
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1))
        tampered = [*proof[:at], _flip(proof[at], bit), *proof[at + 1 :]]
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, size, tampered, root)
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, size, proof[:-1], root)
    with pytest.raises(ProofError):
        verify_inclusion(leaf, index, size, [*proof, root], root)
    if size > 1:
        other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
        with pytest.raises(ProofError):
            verify_inclusion(leaf, other, size, proof, root)


@given(trees(), st.data())
@PROPERTY_SETTINGS
def test_tampered_consistency_is_rejected(tree: MemoryTree, data: st.DataObject) -> None:
    """Flipping any bit of either root or of a proof hash is rejected."""
    size2 = data.draw(st.integers(1, tree.size))
    size1 = data.draw(st.integers(1, size2))
    root1, root2 = tree.root(size1), tree.root(size2)
    proof = tree.consistency_proof(size1, size2)
    bit = data.draw(st.integers(0, 255))
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, proof, _flip(root1, bit), root2)
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, proof, root1, _flip(root2, bit))
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1))
        tampered = [*proof[:at], _flip(proof[at], bit), *proof[at + 1 :]]
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, tampered, root1, root2)
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, [*proof, root2], root1, root2)


def _nearby(value: int, data: st.DataObject, upper: int) -> int:
    candidates = {value - 1, value + 1, value * 2, value // 2, value ^ 1, value ^ 2}
    random_pick = data.draw(st.integers(0, upper))
    return data.draw(st.sampled_from(sorted(c for c in {*candidates, random_pick} if c >= 0)))


@given(trees(st.integers(1, 600)), st.data())
@settings(max_examples=60, deadline=None)
def test_wrong_position_verdict_agrees_with_rfc_recursion(
    tree: MemoryTree, data: st.DataObject
) -> None:
    """For any claimed index and sizes, the RFC 9162 bit-walk verifiers accept exactly when the
    RFC's recursive definitions would rebuild the given roots from the given proof.

    A wrong size is not always an error: sizes whose paths have the same shape verify alike.
    """
    size = data.draw(st.integers(1, tree.size))
    index = data.draw(st.integers(0, size - 1))
    leaf, proof, root = tree.node(0, index), tree.inclusion_proof(index, size), tree.root(size)
    claimed_index = _nearby(index, data, 2 * size)
    claimed_size = _nearby(size, data, 2 * size)
    args = (leaf, claimed_index, claimed_size, proof, root)
    assert _accepts(verify_inclusion, *args) == oracle_inclusion(*args)

    size1 = data.draw(st.integers(1, size))
    c_proof, root1 = tree.consistency_proof(size1, size), tree.root(size1)
    claimed1, claimed2 = _nearby(size1, data, 2 * size), _nearby(size, data, 2 * size)
    args2 = (claimed1, claimed2, c_proof, root1, root)
    assert _accepts(verify_consistency, *args2) == oracle_consistency(*args2)


@given(st.integers(1, 64), st.integers(1, 64), st.data())
@settings(max_examples=200, deadline=None)
def test_oracle_agreement_over_all_small_positions(
    size_a: int, size_b: int, data: st.DataObject
) -> None:
    """On small trees, verifier and recursive oracle agree for every claimed (index, size) pair."""
    tree = MemoryTree(_leaves(max(size_a, size_b), 7))
    size1, size2 = min(size_a, size_b), max(size_a, size_b)
    root1, root2 = tree.root(size1), tree.root(size2)
    proof = tree.consistency_proof(size1, size2)
    for claimed1 in range(0, size2 + 2):
        args = (claimed1, size2, proof, root1, root2)
        assert _accepts(verify_consistency, *args) == oracle_consistency(*args)
    index = data.draw(st.integers(0, size2 - 1))
    i_proof, leaf = tree.inclusion_proof(index, size2), tree.node(0, index)
    for claimed_size in range(0, size2 + 3):
        args3 = (leaf, index, claimed_size, i_proof, root2)
        assert _accepts(verify_inclusion, *args3) == oracle_inclusion(*args3)


def _expected_new_nodes(old_size: int, new_size: int) -> set[Address]:
    return {
        (level, index)
        for level in range(new_size.bit_length())
        for index in range(new_size >> level)
        if (index + 1) << level > old_size
    }


@given(st.lists(st.integers(0, 40), max_size=12), st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_batched_appends_equal_one_by_one(batches: list[int], salt: int) -> None:
    """Appending in random batches creates exactly the new complete subtrees, and the same
    nodes and roots as appending one leaf at a time."""
    total = sum(batches)
    hashes = [leaf_hash(data) for data in _leaves(total, salt)]
    single, batched = MemoryTree(), MemoryTree()
    for value in hashes:
        single.append_leaf_hashes([value])
    reference = RecursiveTree(hashes)
    offset = 0
    for count in batches:
        created = batched.append_leaf_hashes(hashes[offset : offset + count])
        addresses = [(level, index) for level, index, _ in created]
        assert len(addresses) == len(set(addresses))
        assert set(addresses) == _expected_new_nodes(offset, offset + count)
        offset += count
        assert batched.root() == reference.mth(0, offset)
    assert batched.nodes() == single.nodes()


@given(trees(st.integers(1, 2_000)), st.data())
@settings(max_examples=30, deadline=None)
def test_planned_addresses_suffice_and_exist(tree: MemoryTree, data: st.DataObject) -> None:
    """Evaluators need only the planned nodes, all of which exist at the requested size."""
    size = data.draw(st.integers(1, tree.size))
    index = data.draw(st.integers(0, size - 1))
    size1 = data.draw(st.integers(1, size))

    def fetch(addresses: list[Address]) -> dict[Address, bytes]:
        assert all((i + 1) << level <= size for level, i in addresses)
        return {a: tree.node(*a) for a in addresses}

    assert root_from_nodes(size, fetch(root_addresses(size))) == tree.root(size)
    assert inclusion_proof(index, size, fetch(inclusion_addresses(index, size))) == (
        tree.inclusion_proof(index, size)
    )
    assert consistency_proof(size1, size, fetch(consistency_addresses(size1, size))) == (
        tree.consistency_proof(size1, size)
    )


# --- Verifier input checking --------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [b"", b"\x00" * 31, b"\x00" * 33, bytearray(32), "00" * 32], ids=repr
)
def test_verifiers_require_32_byte_hashes(reference_tree: MemoryTree, bad: Any) -> None:
    """A leaf, root or proof hash that is not exactly 32 bytes is rejected before any hashing."""
    leaf, proof, root = (
        reference_tree.node(0, 1),
        reference_tree.inclusion_proof(1, 8),
        reference_tree.root(),
    )
    for args in [
        (bad, 1, 8, proof, root),
        (leaf, 1, 8, [bad, *proof[1:]], root),
        (leaf, 1, 8, proof, bad),
    ]:
        with pytest.raises(ProofError, match="32-byte"):
            verify_inclusion(*args)
    root3 = reference_tree.root(3)
    c_proof = reference_tree.consistency_proof(3, 8)
    with pytest.raises(ProofError, match="32-byte"):
        verify_consistency(3, 8, c_proof, bad, root)
    with pytest.raises(ProofError, match="32-byte"):
        verify_consistency(3, 8, [bad, *c_proof[1:]], root3, root)


@pytest.mark.parametrize("size", [True, -1, 2**64, 1.0], ids=repr)
def test_verifiers_reject_non_sizes(reference_tree: MemoryTree, size: Any) -> None:
    """Booleans, negatives, floats and sizes beyond u64 are not tree sizes."""
    with pytest.raises(ProofError):
        root_from_inclusion(reference_tree.node(0, 0), 0, size, [])
    with pytest.raises(ProofError):
        verify_consistency(size, 8, [], reference_tree.root(), reference_tree.root())


def test_proof_error_names_expected_and_computed(reference_tree: MemoryTree) -> None:
    """A root mismatch reports both roots as machine fields."""
    wrong_root = reference_tree.root(7)
    with pytest.raises(ProofError) as caught:
        verify_inclusion(
            reference_tree.node(0, 0), 0, 8, reference_tree.inclusion_proof(0, 8), wrong_root
        )
    assert caught.value.expected == wrong_root
    assert caught.value.computed == reference_tree.root(8)
    assert caught.value.fields() == {
        "expected": wrong_root.hex(),
        "computed": reference_tree.root(8).hex(),
    }


def test_overlong_proofs_stop_at_rfc_step_4a(reference_tree: MemoryTree) -> None:
    """A hash past the top of the path fails the ``sn == 0`` check, not just the root compare."""
    root = reference_tree.root(8)
    proof = reference_tree.inclusion_proof(2, 8)
    with pytest.raises(ProofError, match="longer than the path") as caught:
        verify_inclusion(reference_tree.node(0, 2), 2, 8, [*proof, root], root)
    assert (caught.value.expected, caught.value.computed) == (len(proof), len(proof) + 1)
    c_proof = reference_tree.consistency_proof(3, 8)
    with pytest.raises(ProofError, match="longer than the path"):
        verify_consistency(3, 8, [*c_proof, root], reference_tree.root(3), root)


def test_consistency_from_empty_tree_is_refused_by_policy() -> None:
    """Even a 'proof' from size 0 whose roots look right is refused: it proves nothing."""
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
