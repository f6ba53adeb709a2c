"""The live map as an operations team uses it, in Chromium: marker clustering (counts, zoom in,
the pick list of a stack), live moves out of a cluster, the shipment list (sort, exception filter,
lateness and ETA window filters, row selection, CSV export), `#shipment=` links followed while the
page is open, and the offline basemap's place labels by zoom."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from playwright.sync_api import Page

from tests.conftest import RunEnv, Server, Tenant, wait_for
from tests.e2e.test_dashboard_browser import WITHIN_MS, chromium_page, iso

SINGAPORE = (1.26, 103.84)
STACK = 30
HELD = 2  # of the stack, held by customs
ELSEWHERE = {"CHI": (41.88, -87.63), "SAN": (-23.96, -46.33), "CPT": (-33.91, 18.43)}
SYDNEY = (-33.97, 151.22)
FLEET = 20  # a second stack, so that the list has two pages of 50
# Three shipments a few km apart: one cluster on the world view, apart once zoomed in.
ROTTERDAM = [(51.95, 4.14), (51.92, 4.48), (51.90, 4.30)]


def create(tenant: Tenant, number: str, lat: float, lon: float) -> str:
    r = tenant.http.post(
        "/v1/shipments",
        json={
            "tracking_number": number,
            "carrier": "Ops Lines",
            "legs": [
                {
                    "mode": "sea",
                    "origin": {"name": "here", "lat": lat, "lon": lon},
                    "destination": {"name": "there", "lat": 35.0, "lon": 139.0},
                }
            ],
        },
    )
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


def open_kinds(tenant: Tenant, sid: str) -> list[str]:
    body = tenant.http.get(f"/v1/shipments/{sid}").json()
    return [e["kind"] for e in body.get("exceptions") or [] if not e.get("cleared_at")]


def test_clusters_list_hash_and_labels(server: Server, tenant: Tenant, tmp_path: Path) -> None:
    prefix = f"OPS-{tenant.name.upper()}"
    stack = {create(tenant, f"{prefix}-SG-{i:02d}", *SINGAPORE): f"{prefix}-SG-{i:02d}" for i in range(1, STACK + 1)}
    others = {create(tenant, f"{prefix}-{code}", *ll): f"{prefix}-{code}" for code, ll in ELSEWHERE.items()}
    trio = {create(tenant, f"{prefix}-RTM-{i}", *ll): f"{prefix}-RTM-{i}" for i, ll in enumerate(ROTTERDAM, 1)}
    fleet = {create(tenant, f"{prefix}-SYD-{i:02d}", *SYDNEY): f"{prefix}-SYD-{i:02d}" for i in range(1, FLEET + 1)}
    numbers = {**stack, **others, **trio, **fleet}
    held = list(stack)[:HELD]
    now = datetime.now(UTC)
    events: list[dict[str, Any]] = [
        {
            "shipment": stack[sid],
            "occurred_at": iso(now - timedelta(minutes=5)),
            "milestone": {"code": "customs_hold", "classifier": "actual"},
        }
        for sid in held
    ]
    res = tenant.signed("native", orjson.dumps(events))
    assert res.status_code == 202, res.text
    wait_for(lambda: all(open_kinds(tenant, sid) == ["customs_hold"] for sid in held), timeout=10)

    with chromium_page() as page:
        page.goto(f"{server.url}/#key={tenant.api_key}")
        page.wait_for_selector("#conn-status[data-state=connected]", timeout=10_000)
        page.wait_for_function("n => window.trackd.shipments.size === n", arg=len(numbers), timeout=10_000)
        check_clusters(page, tenant, stack, others, trio, fleet)
        check_list(page, numbers, held, tmp_path)
        check_hash(page, numbers)
        check_labels(page)


def drawn_singles(page: Page) -> list[str]:
    ids: list[str] = page.evaluate(
        "() => [...window.trackd.markers].filter(([, m]) => window.trackd.map.hasLayer(m)).map(([id]) => id)"
    )
    return sorted(ids)


def check_clusters(
    page: Page,
    tenant: Tenant,
    stack: dict[str, str],
    others: dict[str, str],
    trio: dict[str, str],
    fleet: dict[str, str],
) -> None:
    clusters = page.evaluate("() => window.trackd.clusters()")
    by_count = {c["count"]: sorted(c["ids"]) for c in clusters}
    assert sorted(by_count) == [len(trio), FLEET, STACK], clusters
    assert by_count[STACK] == sorted(stack)
    assert by_count[FLEET] == sorted(fleet)
    assert by_count[len(trio)] == sorted(trio)
    assert drawn_singles(page) == sorted(others)  # 3 clusters + 3 markers for 56 shipments
    assert page.locator(".cluster-marker").count() == 3
    assert page.get_attribute(f".cluster-marker[data-count='{STACK}']", "title") == f"{STACK} shipments"

    # A live position on its sea lane to Tokyo (so it raises no exception) takes one out of the stack.
    mover = list(stack)[-1]
    move = [{"shipment": stack[mover], "occurred_at": iso(datetime.now(UTC)), "position": {"lat": 20.6, "lon": 116.5}}]
    assert tenant.signed("native", orjson.dumps(move)).status_code == 202
    page.wait_for_function(
        "([id, n]) => { const p = window.trackd.markers.get(id).getLatLng();"
        " return p.lat === 20.6 && window.trackd.clusters().some((c) => c.count === n); }",
        arg=[mover, STACK - 1],
        timeout=WITHIN_MS,
    )
    assert drawn_singles(page) == sorted([*others, mover])

    # All on one spot: a click lists them, and each entry opens its shipment.
    page.click(f".cluster-marker[data-count='{STACK - 1}']")
    page.wait_for_selector(".cluster-list", timeout=WITHIN_MS)
    listed = page.eval_on_selector_all(".cluster-list button[data-id]", "bs => bs.map((b) => b.dataset.id)")
    assert sorted(listed) == sorted(set(stack) - {mover})
    assert page.text_content(".cluster-list-head") == f"{STACK - 1} shipments here"
    pick = listed[6]
    page.click(f".cluster-list button[data-id='{pick}']")
    page.wait_for_function(
        "n => !document.getElementById('panel').hidden && document.getElementById('panel-tracking').textContent === n",
        arg=stack[pick],
        timeout=WITHIN_MS,
    )
    assert page.evaluate("() => location.hash") == f"#shipment={pick}"
    page.wait_for_selector(".cluster-list", state="detached", timeout=WITHIN_MS)
    # The selected one is drawn alone, on top of the rest of its stack.
    page.wait_for_function(
        "([id, n]) => window.trackd.map.hasLayer(window.trackd.markers.get(id))"
        " && window.trackd.clusters().some((c) => c.count === n && !c.ids.includes(id))",
        arg=[pick, STACK - 2],
        timeout=WITHIN_MS,
    )

    # Spread over a few km: a click zooms in until they are apart.
    page.evaluate("() => { window.trackd.select(null); window.trackd.map.setView([25, 10], 2, { animate: false }); }")
    page.click(f".cluster-marker[data-count='{len(trio)}']")
    page.wait_for_function(
        "ids => window.trackd.map.getZoom() >= 8"
        " && ids.every((id) => window.trackd.map.hasLayer(window.trackd.markers.get(id)))"
        " && !window.trackd.clusters().some((c) => c.ids.some((i) => ids.includes(i)))",
        arg=list(trio),
        timeout=WITHIN_MS,
    )
    page.evaluate("() => { window.trackd.map.setView([25, 10], 2, { animate: false }); }")


def list_numbers(page: Page) -> list[str]:
    numbers: list[str] = page.eval_on_selector_all("#list-body tr td.tn", "tds => tds.map((td) => td.textContent)")
    return numbers


def check_list(page: Page, numbers: dict[str, str], held: list[str], tmp_path: Path) -> None:
    total = len(numbers)
    assert total == 56
    assert page.is_hidden("#list")
    page.click("#list-toggle")
    page.wait_for_function("() => document.querySelectorAll('#list-body tr').length === 50")
    ordered = sorted(numbers.values())
    assert list_numbers(page) == ordered[:50]
    assert page.get_attribute("th[data-sort=tracking_number]", "aria-sort") == "ascending"
    assert page.text_content("#list-page") == "1–50 · page 1 of 2"
    assert page.is_disabled("#list-prev")
    assert page.is_enabled("#list-next")
    page.click("#list-next")
    assert list_numbers(page) == ordered[50:]
    assert page.text_content("#list-page") == f"51–{total} · page 2 of 2"
    page.click("th[data-sort=tracking_number] button")  # a new order starts at page 1
    assert page.get_attribute("th[data-sort=tracking_number]", "aria-sort") == "descending"
    assert list_numbers(page) == ordered[::-1][:50]
    page.click("th[data-sort=exceptions] button")  # ascending: the held ones last
    page.click("#list-next")
    assert list_numbers(page)[-HELD:] == sorted(numbers[sid] for sid in held)

    options = page.eval_on_selector_all("#list-exception option", "os => os.map((o) => o.value)")
    assert options == ["", "any", "none", "customs_hold"]
    page.select_option("#list-exception", "customs_hold")
    page.wait_for_function("n => document.querySelectorAll('#list-body tr').length === n", arg=HELD)
    assert sorted(list_numbers(page)) == sorted(numbers[sid] for sid in held)
    assert page.input_value("#filter-exception") == "customs_hold"  # one filter, map and list
    assert sorted(page.evaluate("() => window.trackd.visibleIds()")) == sorted(held)

    with page.expect_download() as download:
        page.click("#list-export")
    path = tmp_path / "export.csv"
    download.value.save_as(path)
    rows = list(csv.DictReader(io.StringIO(path.read_text("utf-8"))))
    assert sorted(r["tracking_number"] for r in rows) == sorted(numbers[sid] for sid in held)
    assert {r["open_exceptions"] for r in rows} == {"customs_hold"}
    assert {r["id"] for r in rows} == set(held)

    page.select_option("#list-exception", "none")
    page.wait_for_function("() => document.querySelectorAll('#list-body tr').length === 50")
    assert page.text_content("#list-count") == f"{total - HELD} of {total}"
    page.select_option("#list-exception", "")
    page.wait_for_function("n => document.getElementById('list-count').textContent === n", arg=str(total))

    page.click("th[data-sort=tracking_number] button")
    assert page.get_attribute("th[data-sort=tracking_number]", "aria-sort") == "ascending"
    chicago = next(sid for sid, n in numbers.items() if n.endswith("-CHI"))
    page.click(f"#list-body tr[data-id='{chicago}']")
    page.wait_for_function(
        "n => !document.getElementById('panel').hidden && document.getElementById('panel-tracking').textContent === n",
        arg=numbers[chicago],
        timeout=WITHIN_MS,
    )
    page.wait_for_function(
        "() => { const c = window.trackd.map.getCenter(); return Math.abs(c.lat - 41.88) < 0.5"
        " && Math.abs(c.lng + 87.63) < 0.5; }",
        timeout=WITHIN_MS,
    )
    page.wait_for_selector(f"#list-body tr.selected[data-id='{chicago}']", timeout=WITHIN_MS)
    page.click("#list-close")
    assert page.is_hidden("#list")


def check_hash(page: Page, numbers: dict[str, str]) -> None:
    target = next(sid for sid, n in numbers.items() if n.endswith("-SAN"))
    page.evaluate("id => { location.hash = '#shipment=' + id; }", target)
    page.wait_for_function(
        "n => document.getElementById('panel-tracking').textContent === n", arg=numbers[target], timeout=WITHIN_MS
    )
    assert page.evaluate("() => window.trackd.state.selected") == target
    # A tracking number works as well, and the address then names the id.
    other = next(sid for sid, n in numbers.items() if n.endswith("-CPT"))
    page.evaluate("n => { location.hash = '#shipment=' + encodeURIComponent(n); }", numbers[other])
    page.wait_for_function("id => location.hash === '#shipment=' + id", arg=other, timeout=WITHIN_MS)
    assert page.text_content("#panel-tracking") == numbers[other]
    page.evaluate("() => { location.hash = ''; }")
    page.wait_for_function("() => document.getElementById('panel').hidden", timeout=WITHIN_MS)


def labels_at(page: Page, zoom: float, lat: float, lng: float) -> list[str]:
    """The place labels drawn once the map is at `zoom` over (`lat`, `lng`)."""
    page.evaluate(
        "([z, lat, lng]) => { window.trackd.map.setView([lat, lng], z, { animate: false }); }", [zoom, lat, lng]
    )
    page.wait_for_function(
        "([z, lat, lng]) => { const d = window.trackd.labels();"
        " return d.zoom === z && Math.abs(d.lat - lat) < 1e-6 && Math.abs(d.lng - lng) < 1e-6; }",
        arg=[zoom, lat, lng],
        timeout=WITHIN_MS,
    )
    names: list[str] = page.evaluate("() => window.trackd.labels().names")
    return names


def check_labels(page: Page) -> None:
    world = labels_at(page, 2, 20, 100)
    assert {"Shanghai", "Singapore", "Mumbai"} <= set(world)
    assert "Kuala Lumpur" not in world
    assert "✈ SIN" not in world
    at5 = labels_at(page, 5, 1.3, 103.8)
    assert "Singapore" in at5
    assert {"Kuala Lumpur", "Malaysia", "Indonesia"} <= set(at5)
    assert "✈ SIN" not in at5
    close = labels_at(page, 9, 1.3, 103.9)  # airports show close in, where they no longer cover the city
    assert {"Singapore", "✈ SIN"} <= set(close)


def test_list_lateness_and_eta_window(server: Server, tenant: Tenant, testenv: RunEnv) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    day = timedelta(days=1)
    prefix = f"LATE-{tenant.name.upper()}"
    # number: (promised_at, predicted_at, p_late); the promise of -LATE has passed
    plan = {
        f"{prefix}-LATE": (now - day, now + day, 0.1),
        f"{prefix}-ONTIME": (now + 5 * day, now + 3 * day, 0.05),
        f"{prefix}-MAYBE": (now + 5 * day, now + 4 * day, 0.5),
        f"{prefix}-NOPROMISE": (None, now + 2 * day, None),
    }
    ids: dict[str, str] = {}
    for number, (promised, predicted, p_late) in plan.items():
        body: dict[str, Any] = {"tracking_number": number}
        if promised is not None:
            body["promised_at"] = iso(promised)
        r = tenant.http.post("/v1/shipments", json=body)
        assert r.status_code == 201, r.text
        ids[number] = r.json()["id"]
        eta = {"predicted_at": iso(predicted), "earliest": iso(predicted - day), "latest": iso(predicted + day)}
        testenv.sql(  # p_late is the ETA's own: not writable through the API
            "UPDATE shipment_state SET status = 'in_transit', eta = %s::jsonb WHERE shipment_id = %s RETURNING 1",
            orjson.dumps({**eta, "method": "physics", "computed_at": iso(now), "p_late": p_late}).decode(),
            ids[number],
        )
    late = ids[f"{prefix}-LATE"]

    with chromium_page() as page:
        page.goto(f"{server.url}/#key={tenant.api_key}")
        page.wait_for_selector("#conn-status[data-state=connected]", timeout=10_000)
        page.wait_for_function("n => window.trackd.shipments.size === n", arg=len(plan), timeout=10_000)
        page.click("#list-toggle")
        page.wait_for_function("n => document.querySelectorAll('#list-body tr').length === n", arg=len(plan))
        options = page.eval_on_selector_all("#list-lateness option", "os => os.map((o) => o.textContent)")
        assert options == ["Any lateness", "On time", "Might be late", "Late"]

        page.select_option("#list-lateness", "late")
        page.wait_for_function("() => document.querySelectorAll('#list-body tr').length === 1", timeout=WITHIN_MS)
        assert list_numbers(page) == [f"{prefix}-LATE"]
        assert page.evaluate("() => window.trackd.visibleIds()") == [late]  # the map shows the same
        page.wait_for_function("() => location.hash.includes('lateness=late')", timeout=WITHIN_MS)

        page.reload()
        page.wait_for_selector("#conn-status[data-state=connected]", timeout=10_000)
        page.wait_for_function("n => window.trackd.shipments.size === n", arg=len(plan), timeout=10_000)
        assert "lateness=late" in page.evaluate("() => location.hash")
        assert page.input_value("#list-lateness") == "late"
        page.wait_for_function("() => document.querySelectorAll('#list-body tr').length === 1", timeout=WITHIN_MS)
        assert list_numbers(page) == [f"{prefix}-LATE"]

        # An ETA window (the browser's local time), alone and with a lateness.
        page.select_option("#list-lateness", "")
        local = "t => { const d = new Date(t); d.setMinutes(d.getMinutes() - d.getTimezoneOffset());"
        local += " return d.toISOString().slice(0, 16); }"
        page.fill("#list-eta-after", page.evaluate(local, iso(now + 2 * day)))
        page.fill("#list-eta-before", page.evaluate(local, iso(now + 4 * day)))
        page.wait_for_function("() => document.querySelectorAll('#list-body tr').length === 2", timeout=WITHIN_MS)
        assert sorted(list_numbers(page)) == [f"{prefix}-NOPROMISE", f"{prefix}-ONTIME"]
        page.select_option("#list-lateness", "on_time")
        page.wait_for_function("() => document.querySelectorAll('#list-body tr').length === 1", timeout=WITHIN_MS)
        assert list_numbers(page) == [f"{prefix}-ONTIME"]
        hash_ = page.evaluate("() => decodeURIComponent(location.hash)")
        assert "lateness=on_time" in hash_
        assert "eta_after=" in hash_
        assert "eta_before=" in hash_
