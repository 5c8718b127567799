"""What each finding means, and which tamper class it points to.

A verifier finding names the *check* that failed (``leaf-chain``, ``cached-balance``); one
tampering usually fails several checks (an edited amount breaks the leaf's chain link, every later
signed root, and the cached balance of the account). Each check maps to the tamper class it is
evidence of, so a report can say what kind of change was made (docs/AUDITING.md lists them all):

==========================  =====================================================================
class                       what was done
==========================  =====================================================================
edited-amount               an amount of a posting was changed (in a leaf or in the journal tables)
edited-account              the account of a posting was changed
edited-entry                another field of an entry was changed, or an entry breaks its rules
altered-leaf                a leaf's bytes no longer hash to what the chain and the signed roots say
deleted-entry               a leaf (entry) was removed from the log
reordered-entries           leaves were moved out of index or time order
forged-leaf                 a leaf the operator never signed was added (even with its chain redone)
truncated-log               the newest leaves were cut off
forked-checkpoint           a validly signed checkpoint of another tree (a fork of the log)
forged-checkpoint           a checkpoint not signed by the trusted key
edited-audit-log            the audit log disagrees with its leaves, or lost an event
edited-statement            a settlement statement does not follow from the log
edited-cached-balance       a cached balance differs from the balance recomputed from the log
edited-lot                  a cached lot (remainder, pending state, terms) differs from the log
edited-bundle-file          a bundle file does not match its manifest, or cannot be read
==========================  =====================================================================
"""

from __future__ import annotations

from typing import Any

#: check name -> tamper class.
TAMPER_CLASSES: dict[str, str] = {
    # entries: what the leaves say against what the journal tables say, and the entry rules
    "entry-amount": "edited-amount",
    "entry-account": "edited-account",
    "entry-altered": "edited-entry",
    "entry-balance": "edited-amount",
    "book-sum": "edited-amount",
    "negative-balance": "edited-amount",
    "entry-postings": "edited-entry",
    "entry-invalid": "edited-entry",
    # leaves: bytes, chain, tree
    "leaf-hash": "altered-leaf",
    "leaf-chain": "altered-leaf",
    "leaf-canonical": "altered-leaf",
    "leaf-entry": "altered-leaf",
    "tree-node": "altered-leaf",
    "checkpoint-root": "altered-leaf",
    # order and completeness
    "leaf-sequence": "deleted-entry",
    "leaf-gap": "deleted-entry",
    "entry-not-logged": "deleted-entry",
    "leaf-position": "reordered-entries",
    "leaf-order": "reordered-entries",
    "leaf-backdated": "reordered-entries",
    "leaf-duplicate": "forged-leaf",
    "entry-unrecorded": "forged-leaf",
    "log-rewritten": "forged-leaf",
    "log-unsigned": "forged-leaf",
    "leaf-log": "forged-leaf",
    "checkpoint-beyond-log": "truncated-log",
    # checkpoints and keys
    "checkpoint-fork": "forked-checkpoint",
    "checkpoint-fields": "forked-checkpoint",
    "rotation-link": "forked-checkpoint",
    "checkpoint-signature": "forged-checkpoint",
    "log-key": "forged-checkpoint",
    # the audit log
    "audit-altered": "edited-audit-log",
    "audit-missing": "edited-audit-log",
    "audit-not-logged": "edited-audit-log",
    "audit-position": "edited-audit-log",
    "audit-invalid": "edited-audit-log",
    # statements (settlement): audit.statementcheck
    "statement-altered": "edited-statement",
    "statement-hash": "edited-statement",
    "statement-document": "edited-statement",
    "statement-note": "edited-statement",
    "statement-signature": "edited-statement",
    "statement-checkpoint": "edited-statement",
    "statements-recompute": "edited-statement",
    "settlement-hash": "edited-statement",
    "settlement-document": "edited-statement",
    "control-total": "edited-statement",
    "checkpoint-coverage": "edited-statement",
    # caches derived from the journal
    "cached-balance": "edited-cached-balance",
    "lot-remainder": "edited-lot",
    "lot-pending": "edited-lot",
    "lot-terms": "edited-lot",
    "lots-available": "edited-lot",
    "lots-pending": "edited-lot",
    # the bundle itself
    "manifest-hash": "edited-bundle-file",
    "manifest-missing": "edited-bundle-file",
    "manifest-extra": "edited-bundle-file",
    "bundle-format": "edited-bundle-file",
}


def tamper_class(check: str) -> str:
    """The tamper class a failed check is evidence of (``unclassified`` for an unknown check)."""
    return TAMPER_CLASSES.get(check, "unclassified")


def entry_differences(leaf: Any, table: Any) -> list[str]:
    """Which checks an entry record that differs from its leaf fails: ``entry-amount`` when a
    posting's amount differs, ``entry-account`` when a posting's account differs, and
    ``entry-altered`` alone when something else differs."""
    if not (isinstance(leaf, dict) and isinstance(table, dict)):
        return ["entry-altered"]
    checks: list[str] = []
    mine, theirs = leaf.get("postings"), table.get("postings")
    if isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
        pairs = [(a, b) for a, b in zip(mine, theirs, strict=True)]
        if any(_field(a, "amount") != _field(b, "amount") for a, b in pairs):
            checks.append("entry-amount")
        if any(_field(a, "account") != _field(b, "account") for a, b in pairs):
            checks.append("entry-account")
    elif mine != theirs:
        checks.append("entry-altered")
    others = {k for k in set(leaf) | set(table) if k != "postings" and leaf.get(k) != table.get(k)}
    if others and "entry-altered" not in checks:
        checks.append("entry-altered")
    return checks or ["entry-altered"]


def _field(posting: Any, name: str) -> Any:
    return posting.get(name) if isinstance(posting, dict) else posting
