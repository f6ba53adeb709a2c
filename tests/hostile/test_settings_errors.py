"""A malformed or impossible setting, or command line, stops every command with one line naming
it and exit code 2: never a traceback, never the value itself (it may hold a password)."""

from __future__ import annotations

import socket

from tests.conftest import RunEnv
from tests.integration.test_cli import one_line_exit_2, run


def test_malformed_database_url_is_one_line_for_every_command(testenv: RunEnv) -> None:
    commands = (
        ("serve",),
        ("migrate",),
        ("tenant", "create", "acme"),
        ("tenant", "rotate", "acme", "--api-key"),
        ("demo", "--duration", "1"),
        ("eta-eval",),
        ("bench", "ingest"),
    )
    for url in ("postgresql://[::1", "notaurl", "postgresql://u@h:notaport/db", "postgresql://u:hunter2@h:99999/d"):
        for command in commands:
            r = run({**testenv.env, "TRACKD_DATABASE_URL": url}, *command)
            one_line_exit_2(r, "TRACKD_DATABASE_URL")
            assert "hunter2" not in r.stderr  # the password is never echoed
            assert r.stdout == ""


def test_other_bad_settings_are_one_line(testenv: RunEnv) -> None:
    for name, value in (
        ("TRACKD_REDIS_URL", "redis://127.0.0.1:notaport/0"),
        ("TRACKD_REDIS_URL", "redis://127.0.0.1:6379/zero"),
        ("TRACKD_MQTT_URL", "mqtt://127.0.0.1:99999"),
        ("TRACKD_MQTT_URL", "mqtt://[::1"),
        ("TRACKD_MQTT_TOPIC_PREFIX", "fleet/#/"),
        ("TRACKD_WEBHOOK_RETRY_SCHEDULE", "5,nan"),
        ("TRACKD_WEBHOOK_DISABLE_AFTER_H", "inf"),
        ("TRACKD_RETENTION_DAYS", "0"),
        ("TRACKD_STREAM_TICK_MS", "99999999999"),
        ("TRACKD_EMISSION_FACTORS", "/nonexistent/factors.json"),
        ("TRACKD_TILE_URL", "javascript:alert(1)"),
        ("TRACKD_HTTP_HOST", "not a host"),
    ):
        one_line_exit_2(run({**testenv.env, name: value}, "serve"), name)


def test_an_address_the_api_cannot_listen_on_is_one_line(testenv: RunEnv) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run({**testenv.env, "TRACKD_HTTP_PORT": str(port)}, "serve", "--roles", "api")
    one_line_exit_2(r, "TRACKD_HTTP_PORT")
    assert f"127.0.0.1:{port}" in r.stderr
    unresolvable = run({**testenv.env, "TRACKD_HTTP_HOST": "no-such-host.invalid"}, "serve", "--roles", "api")
    one_line_exit_2(unresolvable, "TRACKD_HTTP_HOST")


def test_bad_command_lines_are_one_line(testenv: RunEnv) -> None:
    for args, word in (
        (("tenant",), "tenant_command"),
        (("bogus",), "bogus"),
        (("demo", "--speed", "0"), "--speed"),
        (("demo", "--shipments", "-1"), "--shipments"),
        (("eta-eval", "--simulate", "0"), "--simulate"),
        (("serve", "--roles", "api,cook"), "cook"),
    ):
        one_line_exit_2(run(testenv.env, *args), word)
