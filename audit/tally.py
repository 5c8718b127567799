"""Comparing two per-key tallies with flat memory: what the log implies against what is cached.

The verifier must check, for every account, that the cached balance equals the sum of the account's
postings in the log, and likewise for every lot and every member. Holding one number per account
and per lot grows with the ledger; instead each side is folded into a fixed number of buckets,
``F[b] = Σ w(k)·v(k) mod p`` over the keys ``k`` in bucket ``b``, where ``v(k)`` is the key's value
and ``w(k)`` a weight drawn from a keyed hash with a secret chosen afresh for each run. Both sides
are sums, so they can be accumulated in any order, in pieces, by several processes.

If every key has the same value on both sides, every bucket agrees. If some key differs, its
bucket disagrees except with probability 1/p (p = 2^61 − 1) — and since the weights are secret,
no one preparing the data can arrange for two edits to cancel. A bucket that disagrees is then
re-read, keeping exact values only for its keys, to name them (:meth:`Tally.owns`).

Memory: ``2 × buckets`` integers per tally, whatever the number of keys, and in each process a
bounded cache of the slots of keys that recur from chunk to chunk (accounts and members).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping

from audit.native import NATIVE as _native

#: The modulus of the fingerprints: the Mersenne prime 2^61 − 1.
P = (1 << 61) - 1
BUCKETS = 4096


_LOW = (1 << 64) - 1


def slot(key: str, secret: bytes, buckets: int = BUCKETS) -> tuple[int, int]:
    """The bucket and the secret weight of a key: from the first and the last 8 bytes of its
    keyed BLAKE2b digest."""
    return _slot(key, hashlib.blake2b(key=secret, digest_size=16), buckets)


def _slot(key: str, keyed: hashlib.blake2b, buckets: int) -> tuple[int, int]:
    # Copying a hasher that has absorbed the key is cheaper than keying a new one per call.
    hasher = keyed.copy()
    hasher.update(key.encode())
    value = int.from_bytes(hasher.digest(), "big")
    return (value >> 64) % buckets, (value & _LOW) % P


def fold(values: Mapping[str, int], secret: bytes, buckets: int = BUCKETS) -> dict[int, int]:
    """Fold exact per-key values into per-bucket fingerprints."""
    return fold_many({"": values}, secret, buckets)[""]


#: Slots of keys that recur from chunk to chunk (accounts, members), kept between calls in this
#: process for one (secret, buckets) at a time; bounded, so memory stays flat.
_KEPT: dict[tuple[bytes, int], dict[str, tuple[int, int]]] = {}
_KEPT_MAX = 1 << 15


def kept_slots(secret: bytes, buckets: int) -> dict[str, tuple[int, int]]:
    """This process's kept slots for one (secret, buckets): emptied when it outgrows its bound,
    and when asked for another (secret, buckets)."""
    kept = _KEPT.get((secret, buckets))
    if kept is None or len(kept) > _KEPT_MAX:
        _KEPT.clear()
        kept = _KEPT[(secret, buckets)] = {}
    return kept


def fold_many(
    tallies: Mapping[str, Mapping[str, int]],
    secret: bytes,
    buckets: int = BUCKETS,
    recurring: frozenset[str] = frozenset(),
) -> dict[str, dict[int, int]]:
    """:func:`fold` for several tallies at once, hashing each distinct key once. The slots of
    the keys of the ``recurring`` tallies are kept for the next call (up to a bound)."""
    fold_one = FOLDS[-1]
    kept = kept_slots(secret, buckets)
    fresh: dict[str, tuple[int, int]] = {}
    return {
        name: fold_one(values, secret, buckets, kept if name in recurring else fresh)
        for name, values in tallies.items()
    }


def merge(into: dict[int, int], folded: Mapping[int, int]) -> None:
    """Add one fold of a tally to another, bucket by bucket (zero buckets left out)."""
    for bucket, value in folded.items():
        total = (into.get(bucket, 0) + value) % P
        if total:
            into[bucket] = total
        else:
            into.pop(bucket, None)


def _fold_python(
    values: Mapping[str, int],
    secret: bytes,
    buckets: int,
    slots: dict[str, tuple[int, int]],
) -> dict[int, int]:
    """One tally of :func:`fold_many`: each key's slot from ``slots`` or derived from its
    BLAKE2b keyed with ``secret`` (and kept in ``slots``), then per bucket Σ weight × value
    mod p, the buckets that come to zero left out (a fold is a sum: they add nothing)."""
    copy = hashlib.blake2b(key=secret, digest_size=16).copy
    from_bytes, low, prime = int.from_bytes, _LOW, P
    # Sums first, reduced once per bucket: Python integers do not overflow.
    sums: dict[int, int] = {}
    for key, value in values.items():
        if value:
            found = slots.get(key)
            if found is None:  # _slot, inline: this loop runs once per key per chunk
                hasher = copy()
                hasher.update(key.encode())
                digest = from_bytes(hasher.digest(), "big")
                found = slots[key] = ((digest >> 64) % buckets, (digest & low) % prime)
            bucket, weight = found
            sums[bucket] = sums.get(bucket, 0) + weight * value
    return {bucket: total % prime for bucket, total in sums.items() if total % prime}


#: The folds of one tally, the fastest last: :func:`_fold_python`, then its C twin
#: (``audit/_native.c``) where it was built.
FOLDS: list[Callable[..., dict[int, int]]] = [_fold_python]
if _native is not None:
    FOLDS.append(_native.fold)


class Tally:
    """The two sides of one comparison (``log`` and ``cache``), bucket by bucket."""

    def __init__(self, name: str, secret: bytes, buckets: int = BUCKETS) -> None:
        self.name = name
        self.secret = secret
        self.buckets = buckets
        self.log = [0] * buckets
        self.cache = [0] * buckets

    def add(self, side: str, folded: Mapping[int, int]) -> None:
        target = self.log if side == "log" else self.cache
        for bucket, value in folded.items():
            target[bucket] += value  # reduced mod P when compared: one addition per bucket here

    def add_values(self, side: str, values: Mapping[str, int]) -> None:
        self.add(side, fold(values, self.secret, self.buckets))

    def bad_buckets(self) -> frozenset[int]:
        """The buckets whose two sides disagree."""
        log, cache = self.log, self.cache
        return frozenset(b for b in range(self.buckets) if (log[b] - cache[b]) % P)

    def owns(self, key: str, bad: frozenset[int]) -> bool:
        """Whether ``key`` falls in one of the ``bad`` buckets (to be re-read exactly)."""
        return slot(key, self.secret, self.buckets)[0] in bad


def differences(
    log: Mapping[str, int], cache: Mapping[str, int], keys: Iterable[str] | None = None
) -> list[tuple[str, int, int]]:
    """(key, log value, cache value) for every key whose exact values differ, sorted by key."""
    wanted = set(log) | set(cache) if keys is None else set(keys)
    return [
        (key, log.get(key, 0), cache.get(key, 0))
        for key in sorted(wanted)
        if log.get(key, 0) != cache.get(key, 0)
    ]
