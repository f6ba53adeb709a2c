"""The pure parts of `trackd bench`: percentiles, ratios, the table, argument checks, the hostile payloads and
the hostile run's figures."""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
from array import array
from datetime import UTC, datetime

import orjson
import pytest

from lab.bench import check_args
from lab.bench_e2e import latencies
from lab.bench_figures import Figure, fmt, percentile, ratio, render
from lab.bench_hostile import (
    ATTACKS,
    MIN_PER_WINDOW,
    Gate,
    Outcome,
    Side,
    _paced,
    _steady,
    attacks,
    big_payload,
    deliveries_by_window,
    delivery_latencies,
    depth_of,
    figures,
    latencies_by_window,
    nested_json,
    not_json,
    read_answer,
    side,
    slices,
    slow_request,
    typical_p99,
    watched,
    where,
    windows,
    within,
)
from lab.bench_load import Events
from lab.bench_stream import Clients, Receipts
from serve.cli import build_parser
from trackd.errors import ConfigError


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.5) == pytest.approx(50.5)
    assert percentile(values, 0.99) == pytest.approx(99.01)
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 100.0


def test_percentile_ignores_input_order_and_handles_one_or_none() -> None:
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None
    with pytest.raises(ValueError, match=r"0\.\.1"):
        percentile([1.0], 1.5)


def test_ratio_of_rates_and_of_latencies() -> None:
    assert ratio(25_000, 50_000) == "50%"
    assert ratio(60_000, 50_000) == "120%"
    assert ratio(40, 10, lower_is_better=True) == "25%"  # 40 ms against a 10 ms floor
    assert ratio(2_000, 1_000_000) == "0.2%"
    assert ratio(None, 10) == "-"
    assert ratio(10, None) == "-"
    assert ratio(0, 10) == "-"


def test_small_ratios_keep_one_decimal() -> None:
    assert ratio(986, 34_218) == "2.9%"
    assert ratio(460, 1930) == "24%"


def test_fmt_units() -> None:
    assert fmt(51234.4, "events/s") == "51,234 events/s"
    assert fmt(12.34, "ms") == "12.3 ms"
    assert fmt(25_970.2, "ms") == "25,970 ms"
    assert fmt(None, "ms") == "-"


def test_figure_targets() -> None:
    assert Figure("x", 51_000, "events/s", target=">= 50,000").met() == "yes"
    assert Figure("x", 49_999, "events/s", target=">= 50,000").met() == "no"
    assert Figure("x", 99.9, "ms", target="< 100").met() == "yes"
    assert Figure("x", 100.0, "ms", target="< 100").met() == "no"
    assert Figure("x", 1.0, "ms").met() == ""
    assert Figure("x", None, "ms", target="< 100").met() == ""


def test_render_puts_figure_ceiling_and_ratio_on_one_line() -> None:
    text = render(
        "title",
        [Figure("webhook ingest", 25_000, "events/s", 50_000, "PostgreSQL COPY", target=">= 50,000")],
        ["a note"],
    )
    lines = text.splitlines()
    assert lines[0] == "title"
    row = next(line for line in lines if line.startswith("webhook ingest"))
    assert "25,000 events/s" in row
    assert "50,000 events/s (PostgreSQL COPY)" in row
    assert "50%" in row
    assert row.rstrip().endswith("no")
    assert lines[-1] == "  a note"


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *argv])


def test_cli_defaults_are_accepted() -> None:
    for kind in ("ingest", "e2e", "query", "stream"):
        check_args(_args(kind))
    args = _args("ingest", "--transport", "mqtt", "--processes", "2")
    assert (args.transport, args.processes, args.duration) == ("mqtt", 2, 30.0)


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (("ingest", "--processes", "0"), "--processes"),
        (("ingest", "--duration", "0"), "--duration"),
        (("ingest", "--duration", "5000"), "--duration"),
        (("e2e", "--rate", "0"), "--rate"),
        (("e2e", "--clients", "-1"), "--clients"),
        (("e2e", "--shipments", "10"), "--shipments"),
        (("query", "--positions", "10"), "--positions"),
    ],
)
def test_bad_arguments_are_one_clear_config_error(argv: tuple[str, ...], word: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_args(_args(*argv))
    assert word in err.value.detail


def test_unknown_transport_is_refused_by_the_parser() -> None:
    with pytest.raises(SystemExit):
        _args("ingest", "--transport", "amqp")


def test_events_are_unique_and_indexable_by_time() -> None:
    ev = Events(["A1", "B2"], base=1_700_000_000.0)
    one = ev.one(1234)
    assert one.startswith(b'{"occurred_at":1700000001.234,')
    batch = ev.batch(0, 3)
    assert batch.startswith(b"[")
    assert batch.endswith(b"]")
    assert batch.count(b"occurred_at") == 3


def test_latencies_match_receipts_to_sends_by_index_and_parity() -> None:
    sent = array("d", [10.0, 10.1, 10.2])
    got = (array("q", [0, 1, 2, 7]), array("d", [10.005, 10.2, 10.19, 11.0]))
    assert latencies(sent, got, 0) == pytest.approx([5.0, 0.0])  # early receipt clamps to 0
    assert latencies(sent, got, 1) == pytest.approx([100.0])
    assert len(latencies(sent, got, None)) == 3  # index 7 was never sent


# -- figures against a share of the ceiling, and `trackd bench hostile`'s pure parts --------------
def test_figure_min_share_judges_the_ratio_column() -> None:
    rate = Figure("x", 950, "events/s", 1_000, "clean run", min_share=0.9)
    assert (rate.met(), rate.target_text()) == ("yes", ">= 90% of clean run")
    assert Figure("x", 899, "events/s", 1_000, "clean run", min_share=0.9).met() == "no"
    # latencies: the share is ceiling / value
    assert Figure("p99", 11.0, "ms", 10.0, "clean run", lower_is_better=True, min_share=0.9).met() == "yes"
    assert Figure("p99", 11.2, "ms", 10.0, "clean run", lower_is_better=True, min_share=0.9).met() == "no"
    assert Figure("p99", None, "ms", 10.0, "clean run", min_share=0.9).met() == ""
    assert Figure("lost", 0, "events", target="= 0").met() == "yes"
    assert Figure("lost", 3, "events", target="= 0").met() == "no"
    row = next(
        line
        for line in render("t", [Figure("lost", 0, "events", target="= 0")]).splitlines()
        if line.startswith("lost")
    )
    assert row.split() == ["lost", "0", "events", "-", "-", "=", "0", "events", "yes"]


def test_hostile_payloads_are_what_they_claim() -> None:
    for depth in (200, 1000):
        doc = nested_json(depth, "hostile-ab12")
        assert depth_of(doc) == depth
        assert b"hostile-ab12" in doc[:40]
    assert orjson.loads(nested_json(200, "m"))["bench"] == "m"
    junk = not_json(random.Random(1), 4096, "hostile-ab12")
    assert len(junk) == 4096
    assert junk.startswith(b"hostile-ab12\x00")
    with pytest.raises(UnicodeDecodeError):
        junk.decode()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(junk)
    big = big_payload(2 << 20, "hostile-ab12")
    assert len(big) == 2 << 20
    assert set(orjson.loads(big)) == {"bench", "pad"}  # JSON, but no event in it
    with pytest.raises(ValueError, match="depth"):
        nested_json(1, "m")


def test_depth_of_does_not_count_brackets_in_strings() -> None:
    assert depth_of(b'{"a": "[[[[{{", "b": [1, [2]], "c": "\\"[["}') == 3
    assert depth_of(b"[]") == 1
    assert depth_of(b"7") == 0


def test_slow_requests_never_complete() -> None:
    head, more = slow_request("head", "127.0.0.1:8080", "/v1/ingest/t/native")
    assert head.startswith(b"POST /v1/ingest/t/native HTTP/1.1\r\n")
    assert b"\r\n\r\n" not in head + more * 1000  # the head never ends
    head, more = slow_request("body", "127.0.0.1:8080", "/v1/ingest/t/native")
    assert head.endswith(b"Content-Length: 100000\r\n\r\n")
    assert more == b" "
    with pytest.raises(ValueError, match="head or body"):
        slow_request("neither", "h", "/")


def test_attacks_are_all_by_default_or_named() -> None:
    assert attacks("all") == ATTACKS
    assert attacks("osmand, poison") == ("poison", "osmand")  # in the order they are listed in ATTACKS
    assert attacks("none") == ()  # the control: hostile windows without hostile traffic
    with pytest.raises(ValueError, match="'floods'"):
        attacks("poison,floods")
    with pytest.raises(ValueError, match="none"):
        attacks(" , ")
    check_args(_args("hostile"))
    check_args(_args("hostile", "--attacks", "slow-clients,slow-endpoint"))
    with pytest.raises(ConfigError) as err:
        check_args(_args("hostile", "--attacks", "floods"))
    assert "--attacks" in err.value.detail
    check_args(_args("hostile", "--notified", "50"))
    for bad in ("0", "-1", "3000"):  # more than --rate (2,000 by default)
        with pytest.raises(ConfigError) as err:
            check_args(_args("hostile", "--notified", bad))
        assert "--notified" in err.value.detail


def test_slices_take_turns_so_that_a_drift_weighs_on_both_alike() -> None:
    plan = slices(30.0)  # 5 s slices: 30 s of each
    assert plan == [False, True, True, False] * 3
    assert sum(plan) == len(plan) - sum(plan)
    assert slices(1.0) == [False, True, True, False]  # one round at least


def test_paced_hostile_traffic_goes_only_while_the_switch_is_on() -> None:
    async def go() -> list[int]:
        on, done = threading.Event(), asyncio.Event()
        gate = Gate(on, done)
        watcher = asyncio.create_task(gate.watch())
        got: list[int] = []

        async def take() -> None:
            async for n in _paced(gate, 200.0):
                got.append(n)

        task = asyncio.create_task(take())
        await asyncio.sleep(0.1)
        assert got == []  # held from the start
        on.set()
        await asyncio.sleep(0.2)
        assert got
        on.clear()
        await asyncio.sleep(0.1)
        held = len(got)
        await asyncio.sleep(0.2)
        assert len(got) == held  # nothing while held
        on.set()
        await asyncio.sleep(0.1)
        done.set()
        await asyncio.wait_for(task, 5)
        await asyncio.wait_for(watcher, 5)
        return got

    got = asyncio.run(go())
    assert got == list(range(len(got)))  # numbered on across the pause


def test_the_neighbours_steady_traffic_goes_whether_the_switch_is_on_or_not_until_done() -> None:
    async def go() -> tuple[list[int], int]:
        on, done = threading.Event(), asyncio.Event()
        gate = Gate(on, done)
        watcher = asyncio.create_task(gate.watch())
        got: list[int] = []

        async def take() -> None:
            async for n in _steady(gate, 200.0):
                got.append(n)

        task = asyncio.create_task(take())
        await asyncio.sleep(0.2)
        held = len(got)
        assert held > 0  # held from the start, and it goes
        on.set()
        await asyncio.sleep(0.2)
        assert len(got) > held
        done.set()
        await asyncio.wait_for(task, 5)
        await asyncio.wait_for(watcher, 5)
        return got, held

    got, _ = asyncio.run(go())
    assert got == list(range(len(got)))
    assert len(got) <= 200 * 0.4 * 1.5 + 2  # paced: about 200 a second, not as fast as it can


def test_the_attackers_http_client_reads_whole_answers_by_their_length() -> None:
    async def answer(data: bytes) -> tuple[int, bool, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        status, keep = await read_answer(reader)
        return status, keep, await reader.read()

    two = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 202 Accepted\r\n"
    assert asyncio.run(answer(two)) == (413, True, b"HTTP/1.1 202 Accepted\r\n")  # the next one left unread
    closing = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert asyncio.run(answer(closing)) == (408, False, b"")
    with pytest.raises(ValueError, match="Content-Length"):
        asyncio.run(answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"))
    with pytest.raises(ValueError, match="status line"):
        asyncio.run(answer(b"SSH-2.0-OpenSSH\r\n\r\n"))


def test_windows_count_all_of_the_hostile_time_and_leave_a_guard_around_the_clean() -> None:
    toggles = [(0.0, False), (5.0, True), (10.0, True), (15.0, False), (20.0, False), (25.0, True)]
    clean, bad = windows(toggles, 30.0, 1.0)
    assert bad == [(5.0, 10.0), (10.0, 15.0), (25.0, 30.0)]  # one window per slice
    # the guard after the start (the warm-up ends hostile), after and before a hostile slice, not
    # between two clean ones
    assert clean == [(1.0, 4.0), (16.0, 20.0), (20.0, 24.0)]
    assert windows([(0.0, False), (10.0, False)], 20.0, 1.0) == ([(1.0, 10.0), (10.0, 19.0)], [])  # and at the end
    assert windows([(0.0, False), (1.0, True)], 2.0, 1.0) == ([], [(1.0, 2.0)])  # too short to keep
    assert [within(t, bad) for t in (4.99, 5.0, 14.99, 15.0, 25.0, 30.0)] == [False, True, True, False, True, False]
    assert [within(t, clean) for t in (-1.0, 0.5, 1.0, 3.99, 4.0, 20.0)] == [False, False, True, True, False, True]


def test_side_counts_rate_latency_and_loss_per_transport_within_its_windows() -> None:
    sent = array("d", [100.0 + i * 0.001 for i in range(10)])  # events 0..9, 1 ms apart
    got = Receipts(frames=5)
    for i, delay in ((0, 0.010), (2, 0.020), (4, 0.030), (1, 0.005), (3, 0.007), (99, 1.0)):
        got.idx.append(i)
        got.at.append(sent[i] + delay if i < 10 else 200.0)
    spans = [(99.0, 101.0)]
    mqtt = side(sent, got, 0, spans, accepted=5, stored=3)
    assert (mqtt.accepted, mqtt.stored, mqtt.lost) == (5, 3, 2)
    assert mqtt.p99_ms == pytest.approx(29.8)  # of 10, 20 and 30 ms; event 99 was never sent
    assert mqtt.per_s == pytest.approx(3 / 2.0)  # arrived within the 2 s window
    early = side(sent, got, 0, [(99.0, sent[2] + 0.0005)], 5, 3)  # events 0 and 2 sent within it
    assert early.p99_ms == pytest.approx(19.9)
    assert early.per_s == 0.0  # none arrived within it
    webhook = side(sent, got, 1, spans, accepted=5, stored=6)  # stored more than was answered 202: none lost
    assert webhook.lost == 0
    assert webhook.p99_ms == pytest.approx(6.98)
    assert side(sent, Receipts(), 1, spans, 0, 0) == Side(0, 0, None, None)


def test_hostile_figures_compare_with_the_clean_run() -> None:
    clean = Outcome(Side(1000, 1000, 500.0, 20.0), Side(1000, 1000, 500.0, 30.0), ((10.0, 12.0),))
    hostile = Outcome(Side(1000, 1000, 480.0, 21.0), Side(1000, 990, 300.0, 90.0), ((10.0,), (500.0,)))
    rows = {f.name: f for f in figures(clean, hostile)}
    assert rows["webhook: valid events stored/s"].met() == "yes"  # 96%
    assert rows["webhook: send -> stored p99"].met() == "yes"  # 20 / 21 = 95%
    assert rows["MQTT: valid events stored/s"].met() == "no"  # 60%
    assert rows["MQTT: send -> stored p99"].met() == "no"
    assert rows["valid notification webhooks p99"].met() == "no"
    assert (rows["valid events lost (webhook)"].value, rows["valid events lost (webhook)"].met()) == (0, "yes")
    assert (rows["valid events lost (MQTT)"].value, rows["valid events lost (MQTT)"].met()) == (10, "no")


def test_the_receiver_follows_enough_shipments_for_its_notification_rate() -> None:
    assert watched(500.0, 10_000) == 250  # 250 of 10,000 shipments at 0.05 positions/s each: 12.5/s
    assert watched(2000.0, 10_000) == 62
    assert watched(1.0, 10_000) == 10_000
    assert watched(10**9, 10_000) == 1
    assert watched(0.0, 5) == 5
    assert watched(2000.0, 10_000, 50.0) == 250  # --notified 50


def test_typical_p99_is_the_median_of_the_windows_p99s() -> None:
    calm = [float(v) for v in range(1, 101)]  # p99 99.01
    stalled = [*calm[:-5], 800.0, 800.0, 800.0, 800.0, 800.0]  # one window with a stall: p99 800
    assert percentile([v for g in (calm, calm, stalled) for v in g], 0.99) == pytest.approx(800.0)  # pooled
    assert typical_p99([calm, stalled, calm]) == pytest.approx(99.01)  # one stalled window of three
    assert typical_p99([stalled, stalled, calm]) == pytest.approx(800.0)  # most windows slower
    assert typical_p99([calm, [5000.0] * (MIN_PER_WINDOW - 1)]) == pytest.approx(99.01)  # too few to count
    assert typical_p99([[1.0, 2.0], [3.0]]) == pytest.approx(2.98)  # none has enough: all of them
    assert typical_p99([]) is None


def test_latencies_by_window_sort_events_into_their_windows() -> None:
    sent = array("d", [10.0, 11.0, 12.0, 13.0])
    got = Receipts()
    for i, at in ((0, 10.1), (1, 11.2), (2, 12.3), (3, 13.4), (7, 20.0)):
        got.idx.append(i)
        got.at.append(at)
    spans = [(9.0, 11.5), (12.5, 14.0)]
    assert latencies_by_window(sent, got, None, spans) == [pytest.approx([100.0, 200.0]), pytest.approx([400.0])]
    assert latencies_by_window(sent, got, 1, spans) == [pytest.approx([200.0]), pytest.approx([400.0])]
    assert [where(t, spans) for t in (8.9, 9.0, 11.5, 12.5, 14.0)] == [None, 0, None, 1, None]


def test_delivery_latencies_read_the_event_index_from_the_webhook_body() -> None:
    base = 1_700_000_000.0
    sent = array("d", [50.0, 50.5, 51.0])

    def body(i: int) -> bytes:
        at = datetime.fromtimestamp(base + i / 1000, UTC).isoformat()
        return orjson.dumps({"type": "position", "data": {"type": "position", "occurred_at": at}})

    got = [(50.25, body(0)), (51.5, body(2)), (52.0, body(7)), (52.0, b"not json")]
    assert delivery_latencies(sent, base, got) == pytest.approx([250.0, 500.0])
    assert delivery_latencies(sent, base, got, [(50.9, 52.0)]) == pytest.approx([500.0])  # sent within
    by_window = deliveries_by_window(sent, base, got, [(49.0, 50.2), (50.2, 50.9), (50.9, 52.0)])
    assert by_window == [pytest.approx([250.0]), [], pytest.approx([500.0])]


def test_websocket_clients_read_the_event_index_from_occurred_at() -> None:
    clients = Clients(["ws://127.0.0.1:1/v1/stream"], "tk_x", 1_700_000_000.0)
    assert clients.index("2023-11-14T22:13:21.234000+00:00") == 1234
    assert clients.index("2023-11-14T22:13:20Z") == 0
