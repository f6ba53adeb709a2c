"""Servers run with the automatic cyclic collector off; `collect_garbage` must still free cycles."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from serve import roles as runtime


class Node:
    other: Node | None = None


async def test_collect_garbage_frees_reference_cycles_with_the_automatic_collector_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "GC_EVERY_S", 0.0)
    was_enabled = gc.isenabled()
    gc.disable()
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.collect_garbage(stop))
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: reference counting alone never frees it
        freed = asyncio.Event()
        weakref.finalize(a, freed.set)
        del a, b
        await asyncio.sleep(0)
        assert not freed.is_set()
        await asyncio.wait_for(freed.wait(), 5)
    finally:
        stop.set()
        await task
        if was_enabled:
            gc.enable()
