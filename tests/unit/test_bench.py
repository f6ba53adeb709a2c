"""The pure parts of `trackd bench`: percentiles, ratios, the table, argument checks."""

from __future__ import annotations

import argparse
from array import array

import pytest

from lab.bench import check_args
from lab.bench_e2e import latencies
from lab.bench_figures import Figure, fmt, percentile, ratio, render
from lab.bench_load import Events
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
