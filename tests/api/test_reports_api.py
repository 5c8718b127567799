"""The reports under /v1/audit/reports, over the reports' March–May 2026 ledger.

The ledger is :func:`tests.integration.test_reports.build_ledger`'s, booked in the application's
own database and integrated under the application's log key; the figures are the ones worked out
by hand there. Auditors and finance see every partner; a partner sees its own rows only and never
the trial balance; a bad size, period or instant is a problem document, never a 500.
"""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from ledger.note import NoteSigner
from partners.directory import Role
from tests.api.conftest import PROBLEM_JSON, Issuer, bearer
from tests.integration.test_reports import Scenario, build_ledger

BASE = "/v1/audit/reports"


@pytest.fixture
def scenario(app: Flask, log_signer: NoteSigner) -> Scenario:
    return build_ledger(app.extensions["coalition"].db, log_signer)


@pytest.fixture
def staff(scenario: Scenario, issue: Issuer) -> dict[str, dict[str, str]]:
    """Headers of an auditor, a finance user, and partners SUPER and DEPT (after the ledger)."""
    return {
        "auditor": bearer(issue.staff(Role.AUDITOR)),
        "finance": bearer(issue.staff(Role.FINANCE)),
        "SUPER": bearer(issue.partner("SUPER")),
        "DEPT": bearer(issue.partner("DEPT")),
    }


def get(client: FlaskClient, headers: dict[str, str], path: str):  # type: ignore[no-untyped-def]
    return client.get(f"{BASE}/{path}", headers=headers)


def test_the_trial_balance_balances_at_the_latest_checkpoint_and_at_march(
    client: FlaskClient, staff: dict[str, dict[str, str]], scenario: Scenario
) -> None:
    """Default: the final checkpoint, 18 entries; size 9: March only, 855 points each side."""
    latest = get(client, staff["auditor"], "trial-balance")
    assert latest.status_code == 200, latest.get_data(as_text=True)
    body = latest.get_json()
    assert (body["size"], body["entries"], body["balanced"]) == (scenario.final_size, 18, True)
    eur = [line for line in body["lines"] if line["book"] == "EUR"]
    assert {line["key"]: line["balance_eur"] for line in eur} == {
        "operator:income": "-12.34", "partner:SUPER:settlement": "12.34"
    }
    march = get(client, staff["finance"], f"trial-balance?size={scenario.march_size}").get_json()
    assert march["entries"] == 9
    assert {t["book"]: (t["debits"], t["credits"]) for t in march["totals"]} == {
        "POINTS": (855, 855), "EUR": (0, 0)
    }
    assert "member:alice:available" in {line["key"] for line in march["lines"]}
    by_kind = get(client, staff["auditor"], "trial-balance?by=kind").get_json()
    assert {line["key"] for line in by_kind["lines"]} >= {"member:available", "partner:issued"}


@pytest.mark.parametrize(
    ("query", "code"),
    [("size=-1", "invalid-request"), ("size=19", "invalid-tree-size"),
     ("size=nine", "invalid-request"), (f"size={2**63}", "invalid-request"),
     ("by=member", "invalid-request")],
)
def test_a_bad_tree_size_is_a_422_problem(
    client: FlaskClient, staff: dict[str, dict[str, str]], query: str, code: str
) -> None:
    """Negative, beyond the log, not a number or out of range: 422 problem+json."""
    response = get(client, staff["auditor"], f"trial-balance?{query}")
    assert response.status_code == 422
    assert response.mimetype == PROBLEM_JSON
    assert response.get_json()["type"] == f"/problems/{code}"


def test_liability_for_staff_covers_every_funder(
    client: FlaskClient, staff: dict[str, dict[str, str]]
) -> None:
    """By partner: DEPT 393, RAIL 200, SUPER 7, program 25, reconciled; by vintage: 3 months."""
    body = get(client, staff["auditor"], "liability").get_json()
    assert [(x["key"], x["points"]) for x in body["lines"]] == [
        ("DEPT", 393), ("RAIL", 200), ("SUPER", 7), ("program", 25)
    ]
    assert body["reconciled"] is True
    vintage = get(client, staff["finance"], "liability?by=vintage").get_json()
    assert [(x["key"], x["points"]) for x in vintage["lines"]] == [
        ("2026-03", 85), ("2026-04", 333), ("2026-05", 207)
    ]


def test_a_partner_sees_only_its_own_rows(
    client: FlaskClient, staff: dict[str, dict[str, str]]
) -> None:
    """DEPT's liability, breakage and exposure are DEPT's alone; asking for SUPER's is a 403."""
    liability = get(client, staff["DEPT"], "liability").get_json()
    assert [(x["key"], x["points"]) for x in liability["lines"]] == [("DEPT", 393)]
    assert liability["member_points"] is None
    breakage = get(client, staff["DEPT"], "breakage").get_json()
    assert [(x["partner"], x["points"]) for x in breakage["lines"]] == [("DEPT", 150)]
    exposure = get(client, staff["DEPT"], "exposure?at=2026-05-10T00:00:00Z").get_json()
    assert [(x["partner"], x["cents"]) for x in exposure["lines"]] == [("DEPT", 374)]
    for path in ("liability?partner=SUPER", "breakage?partner=SUPER", "exposure?partner=SUPER"):
        refused = get(client, staff["DEPT"], path)
        assert refused.status_code == 403
        assert refused.mimetype == PROBLEM_JSON
    assert get(client, staff["SUPER"], "trial-balance").status_code == 403


def test_breakage_and_exposure_for_staff(
    client: FlaskClient, staff: dict[str, dict[str, str]]
) -> None:
    """April breakage: SUPER 400; exposure on 10 May: 3.81 EUR, RAIL's 200 points unpriced."""
    april = get(client, staff["finance"], "breakage?period=2026-04").get_json()
    assert april["lines"] == [{"partner": "SUPER", "period": "2026-04", "points": 400}]
    exposure = get(client, staff["auditor"], "exposure?at=2026-05-10T00:00:00%2B02:00").get_json()
    assert (exposure["cents"], exposure["eur"], exposure["unpriced_points"]) == (381, "3.81", 200)
    super_line = next(x for x in exposure["lines"] if x["partner"] == "SUPER")
    assert (super_line["price"], super_line["exact"], super_line["cents"]) == (
        "0.0095", "0.0665", 7
    )


@pytest.mark.parametrize(
    "path",
    ["breakage?period=2026-13", "breakage?period=March", "exposure?at=2026-05-10T00:00:00",
     "liability?by=age", "liability?partner=no%20such"],
)
def test_bad_report_queries_are_422_problems(
    client: FlaskClient, staff: dict[str, dict[str, str]], path: str
) -> None:
    """A period that names nothing, a naive instant, an unknown grouping: 422, never a 500."""
    response = get(client, staff["auditor"], path)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM_JSON
