"""Offline bundle verification: entries per second and peak memory, against raw SHA-256.

Run ``python -m bench.verify [--quick] [--workers N]``. It writes synthetic bundles straight to
files (no database) in a temporary directory, verifies each with
:func:`audit.bundle.verify_bundle` in a fresh process, and reports:

- entries/s of the verifier (one process, and ``--workers`` processes), against two baselines in
  the same run over the same ``leaves.jsonl``: reading it line by line and hashing ``0x00 ‖ line``
  with SHA-256 (the least any verifier must do), and that plus one ``json.loads`` and one
  ``json.dumps(sort_keys=True)`` per line with the C codec (the least a canonical check costs in
  CPython);
- the peak resident memory of the verifying process (``VmHWM``; the workers' peak too when
  they run) and the peak of Python's own allocations (``tracemalloc``, in a separate run) at
  two sizes, to show it does not grow with the log;
- the CPU time per entry of the verifier (its own and its workers'), which other load on the
  machine does not change, and of the per-leaf stages at the largest size, beside the floors
  (SHA-256, the orjson round trip).

Sizes: 100,000 and 1,000,000 entries (``--quick``: 10,000 and 50,000). The journal: 2,000
members, 20 partners; about two thirds EARN (one lot each, with the attributes the partners'
layer records: an explanation with "€" and "×", a request digest, rule versions, amounts) and
one third BURN (lot moves); an audit event every 500 leaves; a signed checkpoint every 1,000
leaves (one integrator batch). Leaves are built with the C JSON codec, which equals RFC 8785 for
this data (integers only, ASCII keys, NFC text written as itself); the first 200 are checked
against :func:`ledger.journal.build_leaf` before anything else.
Goal (issue 7): ≥ 100,000 entries/s with flat memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import random
import resource
import subprocess
import tempfile
import time
import tracemalloc
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from api.batchwork import collecting_less
from audit.bundle import FILES, FORMAT, TRUST_POLICY, verify_bundle
from bench.suite import Figure, cpu_model
from ledger import merkle
from ledger.canonical import format_timestamp, parse_timestamp
from ledger.journal import build_leaf
from ledger.note import Checkpoint, NoteSigner, NoteVerifier

ORIGIN = "bench.coalition.local/ledger"
MEMBERS = 2_000
PARTNERS = [f"P{n:02d}" for n in range(20)]
BATCH = 1_000
START = datetime(2026, 1, 1, tzinfo=UTC)
GOAL = 100_000
GOAL_SIZE = 1_000_000
RESULTS = Path(__file__).with_name("RESULTS.md")
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


# -- a synthetic bundle, written straight to files -----------------------------------------------


class Writer:
    """Lines into a bundle file, with the manifest's hash, size and count kept as it goes."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("wb", buffering=1 << 20)
        self.sha = hashlib.sha256()
        self.bytes = self.lines = 0

    def line(self, data: bytes) -> None:
        data += b"\n"
        self.file.write(data)
        self.sha.update(data)
        self.bytes += len(data)
        self.lines += data.count(b"\n")

    def close(self) -> dict[str, object]:
        self.file.close()
        return {"sha256": self.sha.hexdigest(), "bytes": self.bytes, "lines": self.lines}


class Journal:
    """A synthetic ledger's state while its leaves are generated."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.members = [f"m_{n:024x}" for n in range(MEMBERS)]
        self.lots: dict[str, deque[list]] = {m: deque() for m in self.members}
        self.balances: dict[str, int] = {}
        self.all_lots: list[list] = []  # [id, opened_by, record, remaining]

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def entry(self, now: datetime) -> dict:
        member = self.rng.choice(self.members)
        available = sum(lot[3] for lot in self.lots[member])
        if available >= 50 and self.rng.random() < 0.35:
            return self._burn(member, self.rng.randint(10, min(available, 400)), now)
        return self._earn(member, self.rng.choice(PARTNERS), self.rng.randint(1, 500), now)

    def _record(self, kind: str, partner: str, now: datetime) -> dict:
        stamp = format_timestamp(now)
        return {
            "id": self.uuid(),
            "kind": kind,
            "business_time": stamp,
            "booked_at": stamp,
            "partner": partner,
            "credential": f"key-{partner.lower()}",
            "idempotency_key": f"k-{self.rng.getrandbits(64):016x}",
            "refers_to": None,
            "reason": None,
            "postings": [],
            "lots_opened": [],
            "lot_moves": [],
            "lots_released": [],
            "attributes": {},
        }

    def _earn(self, member: str, partner: str, points: int, now: datetime) -> dict:
        record = self._record("EARN", partner, now)
        # What the partners' layer records with a purchase's points (partners.earning): text
        # beyond ASCII and integers, as in a real ledger's leaves.
        cents = points * 100
        record["attributes"] = {
            "basket_cents": cents,
            "cash_cents": cents,
            "explanation": f"{points} pts = {cents // 100}.{cents % 100:02d} € × 1 pt/€, White ×1",
            "request_digest": f"{self.rng.getrandbits(256):064x}",
            "rules": {"contract": 1, "engine": 1, "tier": "White"},
        }
        record["postings"] = self._post(
            [(f"partner:{partner}:issued", -points), (f"member:{member}:available", points)]
        )
        lot = {
            "id": self.uuid(),
            "member": member,
            "funder": partner,
            "amount": points,
            "earned_at": record["business_time"],
            "expires_at": format_timestamp(now + timedelta(days=1095)),
            "pending_until": None,
            "price_version": f"{partner}/v1",
        }
        record["lots_opened"] = [lot]
        state = [lot["id"], record["id"], lot, points]
        self.lots[member].append(state)
        self.all_lots.append(state)
        return record

    def _burn(self, member: str, points: int, now: datetime) -> dict:
        partner = self.rng.choice(PARTNERS)
        record = self._record("BURN", partner, now)
        record["postings"] = self._post(
            [(f"member:{member}:available", -points), (f"partner:{partner}:redeemed", points)]
        )
        left, moves, lots = points, [], self.lots[member]
        while left:
            lot = lots[0]
            take = min(left, lot[3])
            lot[3] -= take
            left -= take
            moves.append({"lot": lot[0], "delta": -take})
            if not lot[3]:
                lots.popleft()
        record["lot_moves"] = moves
        return record

    def _post(self, postings: list[tuple[str, int]]) -> list[dict]:
        for account, amount in postings:
            self.balances[account] = self.balances.get(account, 0) + amount
        return [{"account": account, "amount": amount} for account, amount in postings]

    def audit_event(self, now: datetime) -> dict:
        return {
            "kind": "AUDIT",
            "id": self.uuid(),
            "at": format_timestamp(now),
            "actor": "staff-bench",
            "role": "admin",
            "credential": "cred-bench",
            "request_id": None,
            "source": "cli",
            "action": "member.read",
            "subject": self.rng.choice(self.members),
            "before": None,
            "after": {"email": "[redacted]"},
            "reason": "bench",
        }


def leaf_bytes(index: int, prev: bytes, kind: str, body: dict, stamp: str, nonce: bytes) -> bytes:
    envelope = {
        "v": 1,
        "log": ORIGIN,
        "index": index,
        "prev": prev.hex(),
        "kind": kind,
        "entry": body,
        "committed_at": stamp,
        "nonce": nonce.hex(),
    }
    return _ENCODE(envelope).encode()


def record_line(index: int, record: bytes) -> bytes:
    return b'{"index":%d,"log":"%s","queued":false,"record":%s}' % (
        index,
        ORIGIN.encode(),
        record,
    )


def generate(path: Path, entries: int, signer: NoteSigner, seed: int = 7) -> None:
    """Write a bundle of ``entries`` entries (plus audit events) to the new directory ``path``."""
    path.mkdir(parents=True)
    # No settlement period is prepared in the synthetic journal: contracts.jsonl and
    # statements.jsonl are written empty (statements cost per period, not per entry).
    files = {name: Writer(path / name) for name in FILES}
    keys = {"logs": [{"origin": ORIGIN, "vkey": signer.vkey, "previous_origin": None}]}
    files["keys.json"].line(json.dumps({**keys, "trust_policy": TRUST_POLICY}).encode())
    journal = Journal(seed)
    peaks: list[tuple[int, bytes]] = []
    prev, index, booked = bytes(32), 0, 0
    checkpoint(files["checkpoints.jsonl"], signer, 0, merkle.EMPTY_ROOT)
    while booked < entries:
        now = START + timedelta(seconds=index)
        stamp = format_timestamp(now)
        for _ in range(BATCH):
            if index % 500 == 499:
                kind, body, target = "AUDIT", journal.audit_event(now), "audit.jsonl"
            elif booked < entries:
                body = journal.entry(now)
                kind, target = body["kind"], "entries.jsonl"
                booked += 1
            else:
                break
            data = leaf_bytes(index, prev, kind, body, stamp, journal.rng.randbytes(16))
            if index < 200:
                assert (
                    data
                    == build_leaf(
                        log=ORIGIN,
                        index=index,
                        prev=prev,
                        kind=kind,
                        body=body,
                        committed_at=parse_timestamp(stamp),
                        nonce=bytes.fromhex(json.loads(data)["nonce"]),
                    ).data
                )
            files["leaves.jsonl"].line(data)
            files[target].line(record_line(index, _ENCODE(body).encode()))
            prev = merkle.leaf_hash(data)
            push(peaks, prev)
            index += 1
        checkpoint(files["checkpoints.jsonl"], signer, index, root(peaks))
    for account in sorted(journal.balances):
        row = {"account": account, "balance": journal.balances[account], "shard": 0}
        files["balances.jsonl"].line(json.dumps(row, separators=(",", ":")).encode())
    for lot_id, opened_by, lot, remaining in journal.all_lots:
        row = {**lot, "opened_by": opened_by, "remaining": remaining, "pending": False}
        files["lots.jsonl"].line(json.dumps(row, separators=(",", ":")).encode())
        del lot_id
    manifest = {
        "format": FORMAT,
        "created_at": format_timestamp(datetime.now(UTC)),
        "logs": [ORIGIN],
        "files": {name: writer.close() for name, writer in files.items()},
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def checkpoint(out: Writer, signer: NoteSigner, size: int, at: bytes) -> None:
    note = signer.sign(Checkpoint(ORIGIN, size, at).text())
    out.line(json.dumps({"log": ORIGIN, "size": size, "note": note}).encode())


def push(peaks: list[tuple[int, bytes]], leaf: bytes) -> None:
    level, value = 0, leaf
    while peaks and peaks[-1][0] == level:
        value = merkle.node_hash(peaks.pop()[1], value)
        level += 1
    peaks.append((level, value))


def root(peaks: list[tuple[int, bytes]]) -> bytes:
    value = peaks[-1][1]
    for _, left in reversed(peaks[:-1]):
        value = merkle.node_hash(left, value)
    return value


# -- measuring -----------------------------------------------------------------------------------


def verify_in_child(path: str, vkey: str, workers: int, queue: multiprocessing.Queue) -> None:
    """Verify in a fresh process, as ``coalition audit verify --bundle`` does (collecting
    garbage less often), and report (seconds, findings, leaves, peak RSS KiB self and workers,
    CPU seconds self and workers)."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    with collecting_less():
        report = verify_bundle(Path(path), [NoteVerifier.from_vkey(vkey)], workers=workers)
    elapsed = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    own_cpu = own.ru_utime + own.ru_stime - before.ru_utime - before.ru_stime
    cpu = (own_cpu, children.ru_utime + children.ru_stime)
    peaks = (high_water_kib(), children.ru_maxrss)
    queue.put((elapsed, len(report.findings), report.leaves, *peaks, *cpu))


def high_water_kib() -> int:
    """This process's peak RSS (VmHWM). Not ru_maxrss: on Linux that survives fork and exec, so
    a child would report its parent's size at the fork."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def heap_in_child(path: str, vkey: str, queue: multiprocessing.Queue) -> None:
    """The peak of Python's own allocations while verifying in one process (tracemalloc)."""
    tracemalloc.start()
    verify_bundle(Path(path), [NoteVerifier.from_vkey(vkey)])
    queue.put(tracemalloc.get_traced_memory()[1])


SAMPLE = 100_000


def stages_in_child(path: str, queue: multiprocessing.Queue) -> None:
    """CPU microseconds per entry of the per-leaf stages, on the first ``SAMPLE`` leaves (and
    lots) of the bundle, in one process: the floors (SHA-256, the orjson round trip) and what
    the workers do (:func:`audit.leafscan.scan_chunk`, the cached lots' fold)."""
    from audit.leafscan import fold_cache_chunk, scan_chunk

    bundle = Path(path)
    with (bundle / "leaves.jsonl").open("rb") as handle:
        lines = [line[:-1] for _, line in zip(range(SAMPLE), handle, strict=False)]
    with (bundle / "lots.jsonl").open("rb") as handle:
        lots = [line[:-1] for _, line in zip(range(SAMPLE), handle, strict=False)]
    counts = json.loads((bundle / "manifest.json").read_text())["files"]
    lots_per_leaf = counts["lots.jsonl"]["lines"] / counts["leaves.jsonl"]["lines"]
    secret, option = os.urandom(32), orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
    chunk = 4700  # about the lines of a 4 MiB chunk

    def sha() -> None:
        for line in lines:
            hashlib.sha256(b"\x00" + line).digest()

    def codec() -> None:
        for line in lines:
            orjson.dumps(orjson.loads(line), option=option) == line  # noqa: B015

    def scan() -> None:
        for start in range(0, len(lines), chunk):
            scan_chunk(lines[start : start + chunk], start + 1, secret)

    def fold_lots() -> None:
        for start in range(0, len(lots), 3 * chunk):
            fold_cache_chunk("lots.jsonl", lots[start : start + 3 * chunk], start + 1, secret)

    def cost(work: Any, per: int, scale: float = 1.0) -> float:
        best = float("inf")
        for _ in range(2):
            started = time.process_time()
            work()
            best = min(best, time.process_time() - started)
        return best * 1e6 / max(per, 1) * scale

    queue.put(
        {
            "SHA-256 of each leaf (floor)": cost(sha, len(lines)),
            "orjson parse + sorted re-serialise + compare (floor)": cost(codec, len(lines)),
            "scan_chunk: canonical bytes, envelope, entry rules, tallies, fold": cost(
                scan, len(lines)
            ),
            "cached lots: parse, terms, fold (per entry)": cost(
                fold_lots, len(lots), lots_per_leaf
            ),
        }
    )


def idle_child(queue: multiprocessing.Queue) -> None:
    """The peak RSS of a process that has imported the verifier and done nothing."""
    queue.put(high_water_kib())


def generate_in_child(path: str, entries: int, skey: str, queue: multiprocessing.Queue) -> None:
    """Generate in a process of its own, so the generator's state never inflates the parent."""
    started = time.perf_counter()
    generate(Path(path), entries, NoteSigner.from_skey(skey))
    queue.put(time.perf_counter() - started)


def in_child(target: object, *args: object) -> Any:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def sha_baseline(path: Path) -> float:
    """Seconds to read leaves.jsonl line by line and SHA-256 each leaf: the floor."""
    started = time.perf_counter()
    with (path / "leaves.jsonl").open("rb") as handle:
        for line in handle:
            hashlib.sha256(b"\x00" + line[:-1]).digest()
    return time.perf_counter() - started


def codec_baseline(path: Path) -> float:
    """Seconds to read, hash, parse and re-serialise every leaf with the C JSON codec."""
    started = time.perf_counter()
    with (path / "leaves.jsonl").open("rb") as handle:
        for line in handle:
            data = line[:-1]
            hashlib.sha256(b"\x00" + data).digest()
            _ENCODE(json.loads(data)) == data.decode()  # noqa: B015
    return time.perf_counter() - started


def machine() -> list[str]:
    model = cpu_model()
    date = subprocess.run(["date", "-u"], capture_output=True, text=True, check=False).stdout
    loads = " ".join(f"{load:.2f}" for load in os.getloadavg())
    return [
        f"date: {date.strip()}",
        f"machine: nproc {os.cpu_count()}, {model} ({platform.machine()}); load {loads}",
        f"python: {platform.python_version()}",
    ]


Row = tuple[int, int, float, float, float, float, Any, Any, int]


def measure(
    sizes: tuple[int, ...], workers: int, stages: dict[int, dict[str, float]] | None = None
) -> list[Row]:
    """Generate, baseline and verify a bundle of each size; one row per size (and, into
    ``stages``, the per-entry cost of the per-leaf stages at the largest size)."""
    signer = NoteSigner.generate(ORIGIN)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        for size in sizes:
            path = Path(tmp) / f"bundle-{size}"
            generated = in_child(generate_in_child, str(path), size, signer.skey)
            megabytes = sum(f.stat().st_size for f in path.iterdir()) / 1e6
            baseline = sha_baseline(path)
            codec = codec_baseline(path)
            one = in_child(verify_in_child, str(path), signer.vkey, 1)
            many = in_child(verify_in_child, str(path), signer.vkey, workers)
            assert one[1] == many[1] == 0, "the synthetic bundle must verify"
            heap = in_child(heap_in_child, str(path), signer.vkey)
            rows.append((size, one[2], megabytes, generated, baseline, codec, one, many, heap))
            if stages is not None and size == max(sizes):
                stages[size] = in_child(stages_in_child, str(path))
    return rows


def run(quick: bool) -> list[Figure]:
    """The figures of ``python -m bench``: entries/s (one process and all cores) against raw
    SHA-256 of the same leaves, and peak memory at the largest size."""
    workers = os.cpu_count() or 1
    rows = measure((10_000, 50_000) if quick else (100_000, 1_000_000), workers)
    figures = []
    for size, _, _, _, baseline, _, one, many, _ in rows:
        sha = size / baseline
        for processes, result in ((1, one), (workers, many)):
            rate = size / result[0]
            figures.append(
                Figure(
                    "verify",
                    f"offline bundle verification, {size:,} entries, {processes} process(es)",
                    rate,
                    "entries/s",
                    baseline=f"raw SHA-256 of the same leaves ({sha:,.0f}/s)",
                    ratio=rate / sha,
                    goal=f"≥ {GOAL:,} entries/s at {GOAL_SIZE:,} entries",
                    # Below that size the start (imports, the pool, the keys) weighs on the rate.
                    met=rate >= GOAL if size >= GOAL_SIZE else None,
                )
            )
    size, _, _, _, _, _, one, _, heap = rows[-1]
    first = rows[0]
    flat = one[3] <= first[6][3] * 1.25 and heap <= first[8] * 1.25
    figures.append(
        Figure(
            "verify",
            f"peak RSS of the verifier, {size:,} entries (vs {first[0]:,})",
            one[3] / 1024,
            "MiB",
            baseline=f"peak RSS at {first[0]:,} entries ({first[6][3] / 1024:.0f} MiB)",
            ratio=one[3] / first[6][3],
            goal="flat memory",
            met=flat,
        )
    )
    figures.append(
        Figure(
            "verify",
            f"peak Python heap of the verifier, {size:,} entries",
            heap / 2**20,
            "MiB",
            baseline=f"peak heap at {first[0]:,} entries ({first[8] / 2**20:.1f} MiB)",
            ratio=heap / first[8],
            goal="flat memory",
            met=flat,
        )
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 and 50,000 entries")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--sizes", type=str, default=None, help="comma-separated sizes (default 100000,1000000)"
    )
    args = parser.parse_args()
    sizes = (10_000, 50_000) if args.quick else (100_000, 1_000_000)
    if args.sizes:
        sizes = tuple(int(size) for size in args.sizes.split(","))
    idle = in_child(idle_child)
    loads = [" ".join(f"{load:.2f}" for load in os.getloadavg())]
    stages: dict[int, dict[str, float]] = {}
    rows = measure(sizes, args.workers, stages)
    loads.append(" ".join(f"{load:.2f}" for load in os.getloadavg()))
    print("\n".join(machine()))
    print(f"load average at start: {loads[0]}; at end: {loads[1]}")
    print(f"idle verifier process peak RSS: {idle / 1024:.0f} MiB; goal {GOAL:,} entries/s")
    n = args.workers
    print(
        "| entries | leaves | bundle MB | SHA-256 baseline | + C JSON codec | verify, 1 process | "
        f"verify, {n} processes | × SHA-256 (1 / {n}) | peak RSS 1 proc | peak RSS {n} procs "
        "| peak Python heap |"
    )
    print("|" + "---:|" * 11)
    for size, leaves, megabytes, _, baseline, codec, one, many, heap in rows:
        print(
            f"| {size:,} | {leaves:,} | {megabytes:,.0f} | {size / baseline:,.0f}/s "
            f"| {size / codec:,.0f}/s "
            f"| {size / one[0]:,.0f}/s ({one[0]:.1f} s) "
            f"| {size / many[0]:,.0f}/s ({many[0]:.1f} s) "
            f"| {baseline / one[0]:.3f} / {baseline / many[0]:.3f} "
            f"| {one[3] / 1024:.0f} MiB | {many[3] / 1024:.0f} + {many[4] / 1024:.0f} MiB "
            f"| {heap / 2**20:.1f} MiB |"
        )
    print("generation: " + ", ".join(f"{r[0]:,} in {r[3]:.0f} s" for r in rows))
    print("CPU per entry (µs; CPU time, so other load on the machine does not count):")
    for size, _, _, _, _, _, one, many, _ in rows:
        own, workers = many[5] * 1e6 / size, many[6] * 1e6 / size
        print(
            f"  {size:,} entries: 1 process {one[5] * 1e6 / size:.1f}; {n} processes "
            f"{own:.1f} (main: order, tree, records, manifest hash, reading) + {workers:.1f} "
            f"(workers: leaves and caches) = {own + workers:.1f}, so at most "
            f"{(os.cpu_count() or 1) * 1e6 / (own + workers):,.0f} entries/s on "
            f"{os.cpu_count()} idle cores"
        )
    for size, costs in stages.items():
        print(f"  per-leaf stages, first {min(SAMPLE, size):,} leaves of {size:,}, 1 process:")
        for name, micros in costs.items():
            print(f"    {name}: {micros:.2f}")


if __name__ == "__main__":
    main()
