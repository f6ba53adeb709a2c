"""HTTP limits of `trackd serve` against hostile clients on raw sockets: request heads over 64 KB or
with more than 100 fields are 431 without the server reading them whole, and a request not sent
whole within the request timeout (3 s here, 30 s by default) is cut off, while other clients, kept-
alive connections and websockets carry on."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from serve.http import MAX_HEAD_BYTES, MAX_HEADER_FIELDS
from tests.conftest import RunEnv, Server, Tenant, start_server, stop_server

TIMEOUT_S = 3.0  # TRACKD_REQUEST_TIMEOUT_S of the `quick` server


@pytest.fixture(scope="module")
def quick(testenv: RunEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a request timeout of `TIMEOUT_S` (the header limits are the same)."""
    srv = start_server(
        testenv, tmp_path_factory.mktemp("quick"), roles="api", extra={"TRACKD_REQUEST_TIMEOUT_S": str(TIMEOUT_S)}
    )
    yield srv
    stop_server(srv)


@dataclass
class Answer:
    status: int | None  # None: closed without an answer
    body: bytes
    closed: bool  # the server closed the connection (EOF or reset)
    elapsed_s: float


def _open(server: Server) -> socket.socket:
    u = urlparse(server.url)
    return socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=10)


def _receive(sock: socket.socket, until: float) -> tuple[bytes, bool]:
    """What arrives before monotonic time `until`, and whether the server closed the connection."""
    data = b""
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:  # the server closed with the rest of our request unread
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def _answer(data: bytes, closed: bool, started: float) -> Answer:
    elapsed = time.monotonic() - started
    if not data:
        return Answer(None, b"", closed, elapsed)
    head, _, body = data.partition(b"\r\n\r\n")
    return Answer(int(head.split(b" ", 2)[1]), body, closed, elapsed)


def _read_answer(sock: socket.socket, started: float, within: float) -> Answer:
    """Read until the server closes or `within` s have passed since `started`; parse one answer."""
    return _answer(*_receive(sock, started + within), started)


def _send_all(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before reading it all


def _exchange(server: Server, request: bytes, within: float = 10) -> Answer:
    started = time.monotonic()
    with _open(server) as sock:
        _send_all(sock, request)
        return _read_answer(sock, started, within)


def _request(path: str = "/healthz", headers: Sequence[tuple[str, str]] = (), method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _padded(total: int) -> bytes:
    """A /healthz request head of exactly `total` bytes (with a `Connection: close`)."""
    base = _request(headers=[("Connection", "close"), ("X-Pad", "")])
    return base.replace(b"X-Pad: ", b"X-Pad: " + b"a" * (total - len(base)))


def _refused(answer: Answer, status: int, error: str) -> dict[str, Any]:
    assert answer.status == status, answer
    assert answer.closed, "the server keeps the connection open after refusing it"
    doc: dict[str, Any] = orjson.loads(answer.body)
    assert doc["error"] == error
    assert set(doc) == {"error", "detail"}
    return doc


def _healthz_within(server: Server, seconds: float) -> float:
    started = time.monotonic()
    r = httpx.get(server.url + "/healthz", timeout=seconds)
    elapsed = time.monotonic() - started
    assert r.status_code == 200
    assert elapsed < seconds
    return elapsed


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# Heads


def test_a_1mb_header_is_431_while_healthz_answers(server: Server) -> None:
    request = _request(headers=[("Authorization", "Bearer " + "a" * (1 << 20))])
    started = time.monotonic()
    with _open(server) as sock, ThreadPoolExecutor(1) as pool:
        sock.sendall(request[: 32 * 1024])  # the server now holds half a head
        _healthz_within(server, 1.0)
        sending = pool.submit(_send_all, sock, request[32 * 1024 :])
        while not sending.done():
            _healthz_within(server, 1.0)
        sending.result()
        answer = _read_answer(sock, started, 5)
    doc = _refused(answer, 431, "RequestHeaderFieldsTooLarge")
    assert doc["detail"] == f"the request line and headers exceed {MAX_HEAD_BYTES} bytes"
    assert answer.elapsed_s < 5
    _healthz_within(server, 1.0)


def test_huge_headers_are_not_read_whole(server: Server) -> None:
    """Four 50 MB headers at once: each 431, and the server's memory grows by far less than one."""
    request = _request(headers=[("Authorization", "Bearer " + "a" * (50 << 20))])
    before = _rss_kb(server.proc.pid)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _exchange(server, request, within=5), range(4)))
    after = _rss_kb(server.proc.pid)
    for answer in answers:
        _refused(answer, 431, "RequestHeaderFieldsTooLarge")
    assert after - before < 20 * 1024, f"RSS grew by {(after - before) // 1024} MB"
    _healthz_within(server, 1.0)


def test_100000_small_headers_are_431(server: Server) -> None:
    request = _request(headers=[(f"X-H{i}", "v") for i in range(100_000)])
    doc = _refused(_exchange(server, request), 431, "RequestHeaderFieldsTooLarge")
    # fields are counted when the head is complete: 1.1 MB of them reach the byte limit first
    assert doc["detail"] == f"the request line and headers exceed {MAX_HEAD_BYTES} bytes"


def test_the_field_count_limit_is_exact(server: Server) -> None:
    fields = [("Connection", "close")] + [(f"X-H{i}", "v") for i in range(MAX_HEADER_FIELDS - 2)]  # + Host
    assert _exchange(server, _request(headers=fields)).status == 200
    doc = _refused(
        _exchange(server, _request(headers=[*fields, ("X-One-More", "v")])), 431, "RequestHeaderFieldsTooLarge"
    )
    assert doc["detail"] == f"more than {MAX_HEADER_FIELDS} header fields"


def test_the_head_size_limit_is_exact(server: Server) -> None:
    ok = _exchange(server, _padded(MAX_HEAD_BYTES))
    assert (ok.status, orjson.loads(ok.body)) == (200, {"status": "ok"})
    _refused(_exchange(server, _padded(MAX_HEAD_BYTES + 1)), 431, "RequestHeaderFieldsTooLarge")


def test_a_normal_request_with_60kb_of_headers_works(server: Server, tenant: Tenant) -> None:
    pad = {"X-Pad": "a" * (60 * 1024)}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.get("/v1/shipments", headers={**pad, "Authorization": f"Bearer {tenant.api_key}"})
        assert r.status_code == 200, r.text
        assert r.json()["items"] == []
        r = http.get("/v1/shipments", headers=pad)
        assert r.status_code == 401
        assert r.json()["error"] == "Unauthorized"


def test_a_small_head_with_a_large_body_in_one_write_works(server: Server, tenant: Tenant) -> None:
    """The first read holds more than 64 KB, nearly all of it body: only the head is counted."""
    body = b'{"tracking_number": "BIG-BODY-1"' + b" " * (200 * 1024) + b"}"
    head = _request(
        "/v1/shipments",
        [
            ("Authorization", f"Bearer {tenant.api_key}"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ],
        "POST",
    )
    answer = _exchange(server, head + body)
    assert answer.status == 201, answer
    assert orjson.loads(answer.body)["tracking_number"] == "BIG-BODY-1"


def test_pipelined_requests_are_all_answered(server: Server) -> None:
    answer = _exchange(server, _request() * 2 + _request(headers=[("Connection", "close")]))
    assert answer.closed
    assert answer.body.count(b"HTTP/1.1 200 OK") == 2  # the first answer's head was split off as the status
    assert answer.body.count(b'{"status":"ok"}') == 3


# Slow requests


def _trickle(server: Server, first: bytes, drip: bytes, within: float) -> Answer:
    """Send `first`, then `drip` one byte a second, until the server closes or `within` s pass."""
    started = time.monotonic()
    data, closed = b"", False
    with _open(server) as sock:
        sock.sendall(first)
        for byte in drip:
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed: what it answered is still to be read
            got, closed = _receive(sock, time.monotonic() + 1.0)
            data += got
            if closed or time.monotonic() - started > within:
                break
        return _answer(data, closed, started)


def test_five_slow_clients_are_closed_with_408_while_healthz_answers(quick: Server) -> None:
    head = _request(headers=[("X-Slow", "a" * 200)])[:-4]  # never completed
    with ThreadPoolExecutor(5) as pool:
        slow = [pool.submit(_trickle, quick, b"", head, 3 * TIMEOUT_S) for _ in range(5)]
        while not all(f.done() for f in slow):
            _healthz_within(quick, 1.0)
            time.sleep(0.2)
        answers = [f.result() for f in slow]
    for answer in answers:
        doc = _refused(answer, 408, "RequestTimeout")
        assert doc["detail"] == f"the request was not complete within {TIMEOUT_S:g} s"
        assert TIMEOUT_S - 0.5 < answer.elapsed_s < TIMEOUT_S + 2.5, answer.elapsed_s


def test_a_slow_body_is_cut_off(quick: Server, tenant: Tenant) -> None:
    """The head is complete, so the application has the request: closing is the answer."""
    head = _request(
        "/v1/shipments",
        [
            ("Authorization", f"Bearer {tenant.api_key}"),
            ("Content-Type", "application/json"),
            ("Content-Length", "500"),
        ],
        "POST",
    )
    answer = _trickle(quick, head, b'{"tracking_number": "' + b"S" * 400, 3 * TIMEOUT_S)
    assert (answer.status, answer.closed) == (None, True)
    assert TIMEOUT_S - 0.5 < answer.elapsed_s < TIMEOUT_S + 2.5, answer.elapsed_s
    r = tenant.http.get("/v1/shipments")
    assert r.status_code == 200
    assert r.json()["items"] == []  # nothing half-sent was stored


def test_a_silent_connection_is_closed_without_an_answer(quick: Server) -> None:
    started = time.monotonic()
    with _open(quick) as sock:
        answer = _read_answer(sock, started, 3 * TIMEOUT_S)
    assert (answer.status, answer.closed) == (None, True)
    assert TIMEOUT_S - 0.5 < answer.elapsed_s < TIMEOUT_S + 2.5, answer.elapsed_s


def test_the_deadline_is_per_request_not_per_connection(quick: Server) -> None:
    """Four requests 1.5 s apart on one kept-alive connection: longer than the request timeout,
    shorter than uvicorn's keep-alive timeout (5 s) between two."""
    started = time.monotonic()
    statuses = []
    with _open(quick) as sock:
        for _ in range(4):
            sock.sendall(_request())
            data = b""
            while not data.endswith(b'{"status":"ok"}'):
                chunk = sock.recv(65536)
                assert chunk, "the server closed a kept-alive connection between requests"
                data += chunk
            statuses.append(int(data.split(b" ", 2)[1]))
            time.sleep(1.5)
    assert statuses == [200, 200, 200, 200]
    assert time.monotonic() - started > 1.5 * TIMEOUT_S


async def test_a_websocket_outlives_the_request_timeout(quick: Server, tenant: Tenant) -> None:
    url = quick.url.replace("http://", "ws://") + f"/v1/stream?token={tenant.api_key}"
    async with connect(url) as conn:
        for _ in range(2):
            await conn.send('{"op": "ping"}')
            assert orjson.loads(await asyncio.wait_for(conn.recv(), 5)) == {"type": "pong"}
            await asyncio.sleep(TIMEOUT_S + 1)
        await conn.send('{"op": "ping"}')
        assert orjson.loads(await asyncio.wait_for(conn.recv(), 5)) == {"type": "pong"}
