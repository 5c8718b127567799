"""RFC 6962 / RFC 9162 Merkle tree over the journal, shaped for a store of complete subtrees.

Hashing (RFC 9162 §2.1.1): a leaf is SHA-256(0x00 ‖ bytes), an interior node SHA-256(0x01 ‖ left ‖
right); the distinct prefixes keep a leaf from ever being passed off as a node (second-preimage
resistance). The empty tree's root is SHA-256 of the empty string. A tree of n > 1 leaves splits at
k, the largest power of two smaller than n.

Node addressing: ``(level, index)`` names the *complete* subtree over leaves
``[index·2**level, (index+1)·2**level)``; level 0 holds the leaf hashes. Such a node never changes
once it exists, which is why a store can keep exactly these rows, append-only. Every other hash the
RFC needs (the root, a proof element over a ragged right edge) is a range that is not a complete
subtree; it is hashed by folding its complete subtrees right to left, which is what the RFC's
recursive definition amounts to.

Reading from a store is planned in two steps so that SQL needs one query per request:

1. a planner (:func:`root_addresses`, :func:`inclusion_addresses`, :func:`consistency_addresses`)
   names every node it will need;
2. an evaluator (:func:`root_from_nodes`, :func:`inclusion_proof`, :func:`consistency_proof`) takes
   the fetched ``{address: hash}`` mapping and computes.

Writing is :func:`nodes_created_by_append`. Verifying (:func:`verify_inclusion`,
:func:`verify_consistency`) needs no store and follows RFC 9162 §2.1.3.2 and §2.1.4.2 step by step;
every hash it touches must be exactly 32 bytes, and every failure is a :class:`ProofError` naming
what was expected and what was computed.

:class:`MemoryTree` puts the same functions over a dict, for tests and the offline verifier.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeAlias

from ledger.errors import InvalidRequest, ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "Address",
    "MemoryTree",
    "NodeFetcher",
    "consistency_addresses",
    "consistency_proof",
    "inclusion_addresses",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "nodes_created_by_append",
    "root_addresses",
    "root_from_inclusion",
    "root_from_nodes",
    "verify_consistency",
    "verify_inclusion",
]

Address: TypeAlias = tuple[int, int]
"""``(level, index)`` of a complete subtree."""

NodeFetcher: TypeAlias = Callable[[Sequence[Address]], Mapping[Address, bytes]]
"""Fetches the named nodes in one batch (one SQL query) and returns them by address."""

HASH_SIZE = 32
#: Tree sizes are u64 in checkpoints (C2SP tlog-checkpoint) and in RFC 9162 structures.
MAX_TREE_SIZE = 2**64 - 1

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root of the tree with no leaves (RFC 9162 §2.1.1: MTH({}) = HASH())."""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 ‖ data): the hash of one journal leaf."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right): the hash of an interior node."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


# --- Ranges and their complete subtrees ---------------------------------------------------------


def _split_point(count: int) -> int:
    """k, the largest power of two strictly smaller than ``count`` (> 1): RFC 9162 §2.1.1."""
    return 1 << ((count - 1).bit_length() - 1)


def _range_addresses(start: int, end: int) -> list[Address]:
    """The complete subtrees covering ``[start, end)``, left to right (largest first).

    Only called for ranges that occur in the RFC's recursion, whose start is aligned to a power of
    two at least as large as the range, so greedy decomposition matches the recursive split.
    """
    addresses: list[Address] = []
    while start < end:
        level = (end - start).bit_length() - 1
        if start:
            level = min(level, (start & -start).bit_length() - 1)
        addresses.append((level, start >> level))
        start += 1 << level
    return addresses


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Right fold of complete-subtree hashes: MTH of the range they cover."""
    acc = hashes[-1]
    for left in reversed(hashes[:-1]):
        acc = node_hash(left, acc)
    return acc


def _range_hash(start: int, end: int, nodes: Mapping[Address, bytes]) -> bytes:
    return _fold([_node(nodes, address) for address in _range_addresses(start, end)])


def _node(nodes: Mapping[Address, bytes], address: Address) -> bytes:
    """A fetched node; a missing or malformed one means the store is broken, which is a bug."""
    value = nodes.get(address)
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise LookupError(f"tree node {address} is missing from the store or malformed")
    return value


def _addresses_of(ranges: Iterable[tuple[int, int]]) -> list[Address]:
    return [address for start, end in ranges for address in _range_addresses(start, end)]


def _require_size(size: int, what: str = "tree size") -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_TREE_SIZE:
        raise InvalidRequest(f"{what} must be an integer in 0..2**64-1, not {size!r}")


# --- Roots --------------------------------------------------------------------------------------


def root_addresses(size: int) -> list[Address]:
    """The nodes whose fold is the root at ``size``: one per set bit of ``size``."""
    _require_size(size)
    return _range_addresses(0, size)


def root_from_nodes(size: int, nodes: Mapping[Address, bytes]) -> bytes:
    """The root at ``size`` from the nodes named by :func:`root_addresses`."""
    _require_size(size)
    return _range_hash(0, size, nodes) if size else EMPTY_ROOT


# --- Inclusion proofs (RFC 9162 §2.1.3.1) -------------------------------------------------------


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges whose hashes form PATH(index, D[0:size]), from the leaf level upward."""
    if not 0 <= index < size:
        raise InvalidRequest(f"leaf index {index} is not in a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        mid = start + _split_point(end - start)
        if index < mid:
            ranges.append((mid, end))  # PATH(m, D[0:k]) : MTH(D[k:n])
            end = mid
        else:
            ranges.append((start, mid))  # PATH(m - k, D[k:n]) : MTH(D[0:k])
            start = mid
    ranges.reverse()
    return ranges


def inclusion_addresses(index: int, size: int) -> list[Address]:
    """The nodes :func:`inclusion_proof` needs for leaf ``index`` in the tree of ``size``."""
    _require_size(size)
    return _addresses_of(_inclusion_ranges(index, size))


def inclusion_proof(index: int, size: int, nodes: Mapping[Address, bytes]) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size``, leaf level first."""
    _require_size(size)
    return [_range_hash(start, end, nodes) for start, end in _inclusion_ranges(index, size)]


# --- Consistency proofs (RFC 9162 §2.1.4.1) -----------------------------------------------------


def _consistency_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    """The ranges whose hashes form PROOF(size1, D[0:size2]), from the bottom upward."""
    if not 0 < size1 <= size2:
        # From size 0 there is nothing to prove (any tree extends the empty one): policy, see
        # verify_consistency.
        raise InvalidRequest(f"no consistency proof from size {size1} to size {size2}")
    ranges: list[tuple[int, int]] = []
    start, end, whole = 0, size2, True
    while size1 != end:
        mid = start + _split_point(end - start)
        if size1 <= mid:
            ranges.append((mid, end))  # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            end = mid
        else:
            ranges.append((start, mid))  # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            start, whole = mid, False
    if not whole:
        ranges.append((start, end))  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
    ranges.reverse()
    return ranges


def consistency_addresses(size1: int, size2: int) -> list[Address]:
    """The nodes :func:`consistency_proof` needs between ``size1`` and ``size2``."""
    _require_size(size1, "first tree size")
    _require_size(size2, "second tree size")
    return _addresses_of(_consistency_ranges(size1, size2))


def consistency_proof(size1: int, size2: int, nodes: Mapping[Address, bytes]) -> list[bytes]:
    """The consistency proof from ``size1`` to ``size2`` (RFC 9162 §2.1.4.1 order)."""
    _require_size(size1, "first tree size")
    _require_size(size2, "second tree size")
    return [_range_hash(start, end, nodes) for start, end in _consistency_ranges(size1, size2)]


# --- Appending ----------------------------------------------------------------------------------


def nodes_created_by_append(
    old_size: int, new_leaf_hashes: Sequence[bytes], get: NodeFetcher
) -> list[tuple[int, int, bytes]]:
    """Every complete subtree, leaves included, that exists after the append and not before.

    Returns ``(level, index, hash)`` rows in creation order. The only existing nodes that new ones
    build on are the old tree's right-edge peaks (a new node's left child is either new or a
    maximal complete subtree of the old tree), so ``get`` is called once, for those peaks.
    """
    _require_size(old_size, "old tree size")
    _require_size(old_size + len(new_leaf_hashes), "new tree size")
    peaks = root_addresses(old_size)
    fetched = get(peaks) if peaks else {}
    stack = [(level, index, _node(fetched, (level, index))) for level, index in peaks]
    created: list[tuple[int, int, bytes]] = []
    for offset, value in enumerate(new_leaf_hashes):
        _require_hash(value, f"new leaf hash {offset}")
        level, index = 0, old_size + offset
        created.append((level, index, value))
        # Like carrying in binary addition: equal-sized neighbours merge into their parent.
        while stack and stack[-1][0] == level:
            _, _, left = stack.pop()
            value = node_hash(left, value)
            level, index = level + 1, index >> 1
            created.append((level, index, value))
        stack.append((level, index, value))
    return created


# --- Verification (RFC 9162 §2.1.3.2 and §2.1.4.2) ----------------------------------------------


def _require_hash(value: object, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        shown = value.hex() if isinstance(value, bytes) else repr(value)
        raise ProofError(
            f"{what} is not a {HASH_SIZE}-byte SHA-256 hash", expected=HASH_SIZE, computed=shown
        )


def _require_proof(proof: Sequence[bytes]) -> None:
    for position, value in enumerate(proof):
        _require_hash(value, f"proof hash {position}")


def _require_proof_size(size: int, what: str) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_TREE_SIZE:
        raise ProofError(
            f"{what} {size!r} is not a tree size", expected="0..2**64-1", computed=size
        )


def _inclusion_length_error(how: str, index: int, size: int, proof: Sequence[bytes]) -> ProofError:
    return ProofError(
        f"inclusion proof is {how} than the path of leaf {index} in a tree of size {size}",
        expected=len(_inclusion_ranges(index, size)),
        computed=len(proof),
    )


def _consistency_length_error(
    how: str, size1: int, size2: int, proof: Sequence[bytes]
) -> ProofError:
    return ProofError(
        f"consistency proof from {size1} to {size2} is {how} than the path",
        expected=len(_consistency_ranges(size1, size2)),
        computed=len(proof),
    )


def _shift_until_odd_or_zero(fn: int, sn: int) -> tuple[int, int]:
    while fn and not fn & 1:
        fn, sn = fn >> 1, sn >> 1
    return fn, sn


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` implies for ``leaf`` at ``index`` (RFC 9162 §2.1.3.2 steps 1-4).

    Raises ProofError when the proof cannot be an audit path for that position at all (wrong
    length, index out of range, malformed hash); comparing the result to a root is the caller's.
    """
    _require_hash(leaf, "leaf hash")
    _require_proof(proof)
    _require_proof_size(size, "tree size")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
        raise ProofError(f"leaf index {index!r} is not in a tree of size {size}")  # step 1
    fn, sn, r = index, size - 1, leaf  # steps 2-3
    for p in proof:  # step 4
        if sn == 0:
            raise _inclusion_length_error("longer", index, size, proof)
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                fn, sn = _shift_until_odd_or_zero(fn, sn)
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:  # step 5, first half
        raise _inclusion_length_error("shorter", index, size, proof)
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless ``proof`` shows ``leaf`` at ``index`` in the tree with ``root``."""
    _require_hash(root, "root")
    computed = root_from_inclusion(leaf, index, size, proof)
    if computed != root:  # step 5, second half
        raise ProofError(
            f"inclusion proof for leaf {index} of {size} does not reach the root",
            expected=root,
            computed=computed,
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Raise ProofError unless ``proof`` shows the tree ``root2`` extends the tree ``root1``.

    A proof from size 0 is refused: it would prove nothing (every tree extends the empty tree), so
    a caller asking for one has confused "no previous checkpoint" with "checkpoint of size 0".
    """
    _require_hash(root1, "first root")
    _require_hash(root2, "second root")
    _require_proof(proof)
    _require_proof_size(size1, "first tree size")
    _require_proof_size(size2, "second tree size")
    if size1 == 0:
        raise ProofError(
            "consistency from the empty tree is not checked", expected=">0", computed=0
        )
    if size1 > size2:
        raise ProofError("first tree is larger than the second", expected=size2, computed=size1)
    if size1 == size2:
        _verify_same_size(proof, root1, root2)
        return
    first, second = _roots_from_consistency(size1, size2, proof, root1)
    if first != root1:
        raise ProofError(
            "consistency proof does not rebuild the first root", expected=root1, computed=first
        )
    if second != root2:
        raise ProofError(
            "consistency proof does not rebuild the second root", expected=root2, computed=second
        )


def _verify_same_size(proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    # PROOF(n, D[n]) is empty (RFC 9162 §2.1.4.1); equal sizes must have equal roots.
    if proof:
        raise ProofError("proof between equal sizes must be empty", expected=0, computed=len(proof))
    if root1 != root2:
        raise ProofError("equal tree sizes with different roots", expected=root1, computed=root2)


def _roots_from_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes
) -> tuple[bytes, bytes]:
    """RFC 9162 §2.1.4.2 steps 1-6 and the ``sn == 0`` check of step 7: (fr, sr)."""
    if not proof:  # step 1
        raise ProofError("consistency proof is empty", expected=">0 hashes", computed=0)
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # step 2: size1 is a power of two
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1  # step 3
    while fn & 1:  # step 4
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            raise _consistency_length_error("longer", size1, size2, proof)
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                fn, sn = _shift_until_odd_or_zero(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:  # step 7
        raise _consistency_length_error("shorter", size1, size2, proof)
    return fr, sr


# --- In-memory tree -----------------------------------------------------------------------------


class MemoryTree:
    """A Merkle tree held in a dict of complete subtrees, built with the store functions above.

    Used by tests and by the offline verifier, which rebuilds a log from its leaves and compares.
    """

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._nodes: dict[Address, bytes] = {}
        self._size = 0
        self.extend(leaves)

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, data: bytes) -> int:
        """Append one leaf (its bytes, not its hash); return its index."""
        self.append_leaf_hashes([leaf_hash(data)])
        return self._size - 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append leaves (their bytes) in order, as one batch."""
        self.append_leaf_hashes([leaf_hash(data) for data in leaves])

    def append_leaf_hashes(self, hashes: Sequence[bytes]) -> list[tuple[int, int, bytes]]:
        """Append leaves by hash, as one batch; return the nodes created."""
        created = nodes_created_by_append(self._size, hashes, self._fetch)
        self._nodes.update(((level, index), value) for level, index, value in created)
        self._size += len(hashes)
        return created

    def nodes(self) -> dict[Address, bytes]:
        """A copy of every stored complete subtree, by address."""
        return dict(self._nodes)

    def node(self, level: int, index: int) -> bytes:
        """The hash of complete subtree ``(level, index)``; KeyError if it does not exist yet."""
        return self._nodes[(level, index)]

    def root(self, size: int | None = None) -> bytes:
        """The root at ``size`` (default: now)."""
        size = self._checked_size(size)
        return root_from_nodes(size, self._fetch(root_addresses(size)))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path of leaf ``index`` in the tree of ``size`` (default: now)."""
        size = self._checked_size(size)
        return inclusion_proof(index, size, self._fetch(inclusion_addresses(index, size)))

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """Consistency proof from ``size1`` to ``size2`` (default: now)."""
        size2 = self._checked_size(size2)
        return consistency_proof(size1, size2, self._fetch(consistency_addresses(size1, size2)))

    def _checked_size(self, size: int | None) -> int:
        if size is None:
            return self._size
        _require_size(size)
        if size > self._size:
            raise InvalidRequest(f"tree has {self._size} leaves, not {size}")
        return size

    def _fetch(self, addresses: Sequence[Address]) -> dict[Address, bytes]:
        return {address: self._nodes[address] for address in addresses if address in self._nodes}
