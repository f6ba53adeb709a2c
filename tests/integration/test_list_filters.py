"""The shipment list's `lateness` and ETA window filters (`eta_after`, `eta_before`): each term and
bound, their combinations with the other filters and with each other, the CSV export, the 422s,
and tenant isolation."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

from tests.conftest import RunEnv, Tenant

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)


def create(t: Tenant, number: str, promised_at: datetime | None, **extra: Any) -> str:
    body: dict[str, Any] = {"tracking_number": number, **extra}
    if promised_at is not None:
        body["promised_at"] = promised_at.isoformat()
    r = t.http.post("/v1/shipments", json=body)
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


def set_state(
    testenv: RunEnv,
    sid: str,
    status: str,
    predicted: datetime | None,
    p_late: float | None = None,
    *,
    latest: datetime | None = None,
    delivered_at: datetime | None = None,
    with_p_late: bool = True,
) -> None:
    """The shipment's state as the ETA would have left it (`p_late` is not writable through the API)."""
    eta: dict[str, Any] | None = None
    if predicted is not None:
        eta = {
            "predicted_at": predicted.isoformat(),
            "earliest": (predicted - DAY / 2).isoformat(),
            "latest": (latest or predicted + DAY / 2).isoformat(),
            "method": "physics",
            "computed_at": NOW.isoformat(),
        }
        if with_p_late:
            eta["p_late"] = p_late
    testenv.sql(
        "UPDATE shipment_state SET status = %s, eta = %s::jsonb, delivered_at = %s WHERE shipment_id = %s RETURNING 1",
        status,
        None if eta is None else orjson.dumps(eta).decode(),
        delivered_at,
        sid,
    )


def listed(t: Tenant, **params: str) -> set[str]:
    r = t.http.get("/v1/shipments", params=params)
    assert r.status_code == 200, r.text
    return {s["id"] for s in r.json()["items"]}


def test_lateness_and_eta_window(make_tenant: Any, testenv: RunEnv) -> None:
    t, other = make_tenant("lf"), make_tenant("lf")
    soon = NOW + 5 * DAY
    ids = {
        "on_time": create(t, "LF-ON", soon, carrier="Swift"),
        "maybe": create(t, "LF-MAYBE", soon),  # p_late exactly 0.25
        "late_p": create(t, "LF-LATE-P", soon, carrier="Swift"),  # p_late exactly 0.75
        "overdue": create(t, "LF-OVERDUE", NOW - DAY),  # an old, hopeful p_late: the promise has passed
        "unpromised": create(t, "LF-NOPROMISE", None),
        "delivered_late": create(t, "LF-DLATE", NOW - 3 * DAY),
        "delivered_ok": create(t, "LF-DOK", NOW - DAY),
        "cancelled": create(t, "LF-CANCEL", NOW - DAY),
        "no_eta": create(t, "LF-NOETA", soon),
        "fallback": create(t, "LF-FALLBACK", soon),  # an estimate without p_late: from the promise
    }
    set_state(testenv, ids["on_time"], "in_transit", NOW + 3 * DAY, 0.1)
    set_state(testenv, ids["maybe"], "in_transit", NOW + 4 * DAY, 0.25)
    set_state(testenv, ids["late_p"], "customs", NOW + 6 * DAY, 0.75)
    set_state(testenv, ids["overdue"], "in_transit", NOW + 2 * DAY, 0.1)
    set_state(testenv, ids["unpromised"], "in_transit", NOW + DAY, None)
    set_state(testenv, ids["delivered_late"], "delivered", NOW - 2 * DAY, 1.0, delivered_at=NOW - 2 * DAY)
    set_state(testenv, ids["delivered_ok"], "delivered", NOW - 2 * DAY, 0.0, delivered_at=NOW - 2 * DAY)
    set_state(testenv, ids["cancelled"], "cancelled", NOW + DAY, 0.9)
    set_state(testenv, ids["fallback"], "in_transit", NOW + 4 * DAY, latest=NOW + 6 * DAY, with_p_late=False)
    theirs = create(other, "LF-THEIRS", soon)
    set_state(testenv, theirs, "in_transit", NOW + 3 * DAY, 0.9)
    every = set(ids.values())

    def of(*names: str) -> set[str]:
        return {ids[n] for n in names}

    assert listed(t, lateness="late") == of("late_p", "overdue", "delivered_late")
    assert listed(t, lateness="might_be_late") == of("maybe", "fallback")
    assert listed(t, lateness="on_time") == of("on_time", "delivered_ok")
    assert listed(t, lateness="on_time,might_be_late") == of("on_time", "delivered_ok", "maybe", "fallback")
    assert listed(t, lateness=" late , late ") == of("late_p", "overdue", "delivered_late")
    assert listed(t, lateness="on_time,might_be_late,late") == every - of("unpromised", "cancelled", "no_eta")
    assert listed(t, lateness="") == every  # no terms: no filter
    r = t.http.get("/v1/shipments", params={"lateness": "late", "limit": 1})  # pages as the list does
    assert r.status_code == 200
    first, cursor = r.json()["items"], r.json()["next_cursor"]
    assert [s["id"] for s in first] == [ids["delivered_late"]]  # newest first
    rest = listed(t, lateness="late", cursor=cursor)
    assert rest == of("late_p", "overdue")

    # The ETA window: at or after `eta_after`, before `eta_before`; no prediction, no match.
    assert listed(t, eta_after=(NOW + 3 * DAY).isoformat()) == of("on_time", "maybe", "late_p", "fallback")
    assert listed(t, eta_before=(NOW + 3 * DAY).isoformat()) == of(
        "overdue", "unpromised", "delivered_late", "delivered_ok", "cancelled"
    )
    window = {"eta_after": (NOW + 3 * DAY).isoformat(), "eta_before": (NOW + 4 * DAY).isoformat()}
    assert listed(t, **window) == of("on_time")
    in_tokyo = (NOW + 3 * DAY).astimezone(timezone(timedelta(hours=9))).isoformat()  # the same instant
    assert listed(t, eta_after=in_tokyo) == of("on_time", "maybe", "late_p", "fallback")
    assert ids["no_eta"] not in listed(t, eta_after=(NOW - 365 * DAY).isoformat())
    assert ids["no_eta"] not in listed(t, eta_before=(NOW + 365 * DAY).isoformat())

    # Combined with each other and with the other filters.
    assert listed(t, lateness="late", eta_after=(NOW + 5 * DAY).isoformat()) == of("late_p")
    assert listed(t, lateness="late", eta_before=NOW.isoformat()) == of("delivered_late")
    assert listed(t, lateness="late", status="in_transit") == of("overdue")
    assert listed(t, lateness="on_time,late", carrier="swift") == of("on_time", "late_p")
    assert listed(t, lateness="might_be_late", q="LF-MAYBE") == of("maybe")
    assert listed(t, lateness="late", exception="none") == of("late_p", "overdue", "delivered_late")
    assert listed(t, lateness="on_time", **window, status="delivered") == set()

    # Another tenant's late shipment, inside every window, never matches; nor ours theirs.
    assert theirs not in listed(t, lateness="late", **window)
    assert listed(other, lateness="late") == {theirs}
    assert listed(other, lateness="late", **window) == {theirs}
    assert listed(other, lateness="on_time,might_be_late") == set()

    # The CSV export takes the same filters.
    r = t.http.get("/v1/shipments.csv", params={"lateness": "might_be_late"})
    assert r.status_code == 200, r.text
    assert {row["id"] for row in csv.DictReader(io.StringIO(r.text))} == of("maybe", "fallback")
    r = t.http.get("/v1/shipments.csv", params=window)
    assert {row["id"] for row in csv.DictReader(io.StringIO(r.text))} == of("on_time")
    assert t.http.get("/v1/shipments.csv", params={"lateness": "soon"}).status_code == 422


def test_filter_errors(make_tenant: Any) -> None:
    t = make_tenant("lfe")
    for value, name in (("soon", "soon"), ("late,Late", "Late"), ("on_time,overdue", "overdue")):
        r = t.http.get("/v1/shipments", params={"lateness": value})
        assert r.status_code == 422, value
        assert r.json() == {
            "error": "ValidationError",
            "detail": f"lateness: unknown term {name!r} (expected on_time, might_be_late, late)",
        }
    for param in ("eta_after", "eta_before"):
        naive = t.http.get("/v1/shipments", params={param: "2026-05-01T10:00:00"})
        assert naive.status_code == 422
        assert naive.json() == {"error": "ValidationError", "detail": f"{param}: needs a UTC offset"}
        garbled = t.http.get("/v1/shipments.csv", params={param: "next tuesday"})
        assert garbled.status_code == 422
        assert garbled.json()["error"] == "ValidationError"
        assert param in garbled.json()["detail"]


def test_openapi_documents_the_filters(make_tenant: Any) -> None:
    t = make_tenant("lfo")
    doc = t.http.get("/openapi.json").json()
    for path, op_id in (("/v1/shipments", "list_shipments"), ("/v1/shipments.csv", "export_shipments")):
        op = doc["paths"][path]["get"]
        assert op["operationId"].startswith(op_id), op["operationId"]
        params = {p["name"]: p for p in op["parameters"]}
        assert {"lateness", "eta_after", "eta_before"} <= set(params)
        for name in ("lateness", "eta_after", "eta_before"):
            assert params[name]["in"] == "query"
            assert params[name]["description"]
        assert "might_be_late" in params["lateness"]["description"]
        assert "state" not in params


def test_an_estimate_with_only_a_window_end_is_judged_by_it(make_tenant: Any, testenv: RunEnv) -> None:
    """As the tracking page reads it: without `p_late` or a predicted time, an end of the window
    after the promise is "might be late", before it "on time"."""
    t = make_tenant("lf")
    soon = NOW + 5 * DAY
    after, before = create(t, "LF-END-AFTER", soon), create(t, "LF-END-BEFORE", soon)
    for sid, latest in ((after, soon + DAY), (before, soon - DAY)):
        eta = {"latest": latest.isoformat(), "method": "carrier", "computed_at": NOW.isoformat()}
        testenv.sql(
            "UPDATE shipment_state SET status = 'in_transit', eta = %s::jsonb WHERE shipment_id = %s RETURNING 1",
            orjson.dumps(eta).decode(),
            sid,
        )
    assert listed(t, lateness="might_be_late") == {after}
    assert listed(t, lateness="on_time") == {before}
    assert listed(t, lateness="late") == set()
