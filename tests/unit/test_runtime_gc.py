"""Servers run with the automatic cyclic collector off; `collect_garbage` must still free cycles,
young ones at its frequent passes and those that die after being frozen at the hourly one."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from serve import roles as runtime


class Node:
    other: Node | None = None


def cycle() -> tuple[Node, asyncio.Event]:
    """A cycle (reference counting alone never frees it), and an event set once it is freed."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    freed = asyncio.Event()
    weakref.finalize(a, freed.set)
    return a, freed


@pytest.fixture
def collector_off() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


async def run_collector_until(freed: asyncio.Event) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.collect_garbage(stop))
    try:
        await asyncio.wait_for(freed.wait(), 5)
    finally:
        stop.set()
        await task


@pytest.mark.usefixtures("collector_off")
@pytest.mark.parametrize("which", ["young", "full"])
async def test_collect_garbage_frees_reference_cycles_with_the_automatic_collector_off(
    monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    monkeypatch.setattr(runtime, "GC_YOUNG_EVERY_S", 0.01)
    monkeypatch.setattr(runtime, "GC_EVERY_S", 1e9 if which == "young" else 0.0)
    node, freed = cycle()
    del node
    await asyncio.sleep(0)
    assert not freed.is_set()
    await run_collector_until(freed)


@pytest.mark.usefixtures("collector_off")
async def test_a_cycle_that_dies_after_it_was_frozen_is_freed_by_the_whole_heap_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node, freed = cycle()
    assert runtime.collect_once(young=False, thaw=False)[0] == "full"  # it is alive: frozen
    assert gc.get_freeze_count() > 0
    del node
    runtime.collect_once(young=True, thaw=False)
    runtime.collect_once(young=False, thaw=False)
    assert not freed.is_set()  # the frequent passes do not walk what is frozen
    monkeypatch.setattr(runtime, "GC_YOUNG_EVERY_S", 0.01)
    monkeypatch.setattr(runtime, "GC_THAW_EVERY_S", 0.0)
    await run_collector_until(freed)
