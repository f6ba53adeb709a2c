"""Plays a simulated world of shipments against a running trackd, through its real ingest paths only.

The world follows the wall clock. It has a fixed number of slots, each with one shipment in flight;
when a shipment completes, its slot books the next one a few hours later. A new world places each
slot's first shipment at a random point of its journey, so it starts in a steady state. A `World`
(seed, tag, slots, `sent_until`) is all the feeder keeps; its caller saves it, and a feeder started
again on the same world continues it: what the simulation says happened while nothing was fed
(everything, the first time) is imported at once: `POST /v1/events` batches per shipment (the
trackd event JSON in the order things became known, thinned to one fix and one reading a day
before the last hours, ending with the tracker's current fix), then the last hours' carrier
milestones as signed webhooks. So trackd judges ETAs and silence on a history consistent with its
clock. From then on each event is sent when its time comes, through its own path: devices and
shipments over the REST API, carrier feeds as signed webhooks, trackers over MQTT (QoS 1). Moving
trackers also report every minute and standing ones every half hour, from the planned track.
Nothing is written to the database directly.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from ingest.mqtt_codec import MqttError
from ingest.mqtt_conn import Publisher, endpoint
from lab.carrier_payloads import Delivery, encode
from lab.simulator import HISTORY_CADENCE, PlannedEvent, Scenario, iso, lane_of, native_event, simulate
from lab.simulator_track import battery_at
from trackd.codes import Classifier, EventKind, Milestone, Mode

ERROR_LINES_PER_MINUTE = 20
PING_MOVING = timedelta(seconds=60)
PING_STANDING = timedelta(minutes=30)
PING_RECHECK = timedelta(minutes=5)  # in the air: trackers sleep in flight
PING_SEQ = 10_000_000  # a ping's seq (its event id) is this plus its second of the journey
NEXT_BOOKING_H = (0.5, 12.0)  # hours between one shipment's completion and its slot's next booking
PLACE_WITHIN = timedelta(days=24)  # about a journey's mean length
PLACE_WITHIN_SEA = timedelta(days=40)  # about the longest of a journey with a sea leg
SKIP_COMPLETED_BEFORE = timedelta(days=2)  # after a long pause, shipments that ended long ago are left out
# The world's forwarder quotes with a buffer: about one shipment in twenty arrives after its promise
# (4.6% of 800 simulated journeys; 1-7% per lane, 11% on the longest sea-and-rail lane).
PROMISE_SLACK = (0.3, 0.1)
IMPORTS_IN_FLIGHT = 8
RECENT = timedelta(hours=6)
IMPORT_EVERY = timedelta(hours=24)
IMPORT_CHUNK = 10
STEP_BUDGET_S = 0.2  # the most one step works before it lets the stop signal in
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def thinned(events: list[PlannedEvent], now: datetime) -> list[PlannedEvent]:
    """What of a shipment's past an import sends: every milestone, the latest revision of each
    estimate (the carrier's earlier ones are superseded), the fixes and readings of the last
    RECENT, and before that one fix and one reading each IMPORT_EVERY."""
    out: list[PlannedEvent] = []
    last: dict[EventKind, datetime] = {}
    latest = {_estimated(ev): ev.seq for ev in events if ev.classifier is Classifier.ESTIMATED}
    for ev in events:
        if ev.classifier is Classifier.ESTIMATED and latest[_estimated(ev)] != ev.seq:
            continue
        if ev.kind is not EventKind.MILESTONE and ev.occurred_at < now - RECENT:
            kept = last.get(ev.kind)
            if kept is not None and ev.occurred_at - kept < IMPORT_EVERY:
                continue
            last[ev.kind] = ev.occurred_at
        out.append(ev)
    return out


def _estimated(ev: PlannedEvent) -> tuple[int | None, Milestone | None, str | None]:
    """What an estimate is of: the milestone of its leg at its place."""
    return ev.leg, ev.milestone, ev.place.name if ev.place is not None else None


@dataclass(slots=True)
class Slot:
    index: int  # the simulator's index of the shipment in flight
    start: datetime  # its booking


@dataclass(slots=True)
class World:
    """What makes the simulated world the same across runs (JSON with `to_json` / `from_json`)."""

    seed: int
    tag: str
    size: int
    slots: list[Slot] = field(default_factory=list)
    next_index: int = 0
    sent_until: datetime | None = None  # every planned event sent at or before it was handed over

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "tag": self.tag,
            "size": self.size,
            "slots": [[s.index, iso(s.start)] for s in self.slots],
            "next_index": self.next_index,
            "sent_until": iso(self.sent_until) if self.sent_until else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> World:
        """The world saved by `to_json`; KeyError, TypeError or ValueError when it is not one."""
        sent = data["sent_until"]
        slots = [Slot(int(i), _time(at)) for i, at in data["slots"]]
        world = cls(int(data["seed"]), str(data["tag"]), int(data["size"]), slots, int(data["next_index"]))
        world.sent_until = _time(sent) if sent is not None else None
        if not world.tag or world.size < 1 or len(slots) not in (0, world.size):
            raise ValueError("not a saved world")
        return world


def _time(text: Any) -> datetime:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(UTC)


@dataclass(slots=True)
class _Stats:
    sent: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_lines: int = 0
    created: int = 0
    completed: int = 0


class Feeder:
    """The scheduler: a heap of timed actions (events, pings, bookings) against the wall clock."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        mqtt_pub: Publisher,
        world: World,
        *,
        tenant: str,
        secret: str,
        topic_prefix: str,
        concurrency: int,
        log: Callable[[str], None],
        clock: Clock = utcnow,
        following: Callable[[Scenario], None] | None = None,
    ) -> None:
        self.http, self.mqtt, self.world, self.tenant, self.secret = http, mqtt_pub, world, tenant, secret
        self.topic_prefix, self.log, self.clock, self.following = topic_prefix, log, clock, following
        self.stats = _Stats()
        self.heap: list[tuple[datetime, int, Callable[[], Awaitable[None]]]] = []
        self.planned = 0  # planned events (not pings) in the heap
        self.caught_up = False  # the import of the past is done: `sent_until` may move on
        self.order = itertools.count()
        self.slots = asyncio.Semaphore(concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self.jitter = random.Random()  # spreads the trackers' reports over the minute

    # -- the world's shipments ----------------------------------------------------------------
    def scenario(self, slot: Slot) -> Scenario:
        w = self.world
        return simulate(
            slot.index, slot.start, seed=w.seed, tag=w.tag, cadence=HISTORY_CADENCE, promise_slack=PROMISE_SLACK
        )

    def _successor(self, s: Scenario) -> Slot:
        rng = random.Random(f"next:{self.world.seed}:{self.world.tag}:{s.index}")
        index, self.world.next_index = self.world.next_index, self.world.next_index + 1
        return Slot(index, s.completed_at + timedelta(hours=rng.uniform(*NEXT_BOOKING_H)))

    def place(self) -> None:
        """A new world: each slot's first shipment booked up to PLACE_WITHIN ago (PLACE_WITHIN_SEA for
        a lane with a sea leg), so that the world starts with shipments at every point of their
        journeys (some just delivered, containers waiting at the terminal)."""
        now = self.clock()
        w = self.world
        while len(w.slots) < w.size:
            index = w.next_index
            done = random.Random(f"place:{w.seed}:{w.tag}:{index}").random()
            sea = any(leg.mode is Mode.SEA for leg in lane_of(index, seed=w.seed, tag=w.tag).legs)
            w.slots.append(Slot(index, now - (PLACE_WITHIN_SEA if sea else PLACE_WITHIN) * done))
            self.world.next_index += 1

    async def catch_up(self, stop: asyncio.Event) -> bool:
        """Import what happened since `sent_until` and schedule the rest; False when stopped first."""
        now = self.clock()
        since = self.world.sent_until
        imports: set[asyncio.Task[None]] = set()
        gate = asyncio.Semaphore(IMPORTS_IN_FLIGHT)
        done: list[tuple[Scenario, list[PlannedEvent]]] = []  # completed: imported after those in flight

        async def start(s: Scenario, backlog: list[PlannedEvent], slot: int | None) -> None:
            await gate.acquire()
            task = asyncio.create_task(self._import(s, backlog, now, gate, slot))
            imports.add(task)
            task.add_done_callback(imports.discard)

        try:
            for j, slot in enumerate(self.world.slots):
                first = True
                while not stop.is_set():
                    if slot.start > now:
                        self._at(slot.start, self._booker(j))
                        break
                    s = self.scenario(slot)
                    await asyncio.sleep(0)  # simulating is CPU work: let the stop signal in
                    ended = s.completed_at <= now
                    if first or not ended or s.completed_at >= now - SKIP_COMPLETED_BEFORE:
                        backlog = [ev for ev in s.events if ev.send_at <= now and (since is None or ev.send_at > since)]
                        if ended:
                            done.append((s, backlog))
                        else:
                            await start(s, backlog, j)
                    if not ended:
                        break
                    self.stats.completed += 1
                    slot = self.world.slots[j] = self._successor(s)
                    first = False
            for s, backlog in done:
                if stop.is_set():
                    break
                await start(s, backlog, None)
            while imports and not stop.is_set():
                await asyncio.wait(set(imports), timeout=0.2)
        finally:
            for task in imports:
                task.cancel()
        if stop.is_set():
            return False
        self.world.sent_until, self.caught_up = now, True
        return True

    async def _import(
        self, s: Scenario, backlog: list[PlannedEvent], now: datetime, gate: asyncio.Semaphore, slot: int | None
    ) -> None:
        """Register `s`, send what it did until `now` in one batch, then follow it (in flight in `slot`)."""
        try:
            await self._register(s)
            # The last hours' carrier milestones go their own way (signed webhooks) after the import.
            recent = [ev for ev in backlog if ev.kind is EventKind.MILESTONE and ev.send_at > now - RECENT]
            skip = {ev.seq for ev in recent}
            batch = [native_event(s, ev) for ev in thinned(backlog, now) if ev.seq not in skip]
            fix = self.ping_event(s, now) if slot is not None else None
            if fix is not None:
                batch.append(native_event(s, fix))
            for i in range(0, len(batch), IMPORT_CHUNK):  # small requests: a stop waits for one at most
                await self._request("import", "/v1/events", batch[i : i + IMPORT_CHUNK])
            self.stats.sent["import"] += len(batch)
            for ev in recent:
                await self.dispatch(s, ev)
            for ev in backlog:
                if ev.last_free_day is not None and ev.seq not in skip:
                    await self.enter_last_free_day(s, ev.last_free_day)
            if slot is not None:
                self.follow(s, slot, after=now)
        finally:
            gate.release()

    async def _register(self, s: Scenario) -> None:
        """Create the tracker and the shipment (idempotent); the tracker is attached from now on:
        the imported history names its shipment in every event."""
        await self._request(
            "devices",
            "/v1/devices",
            {"id": s.device_id, "key": s.device_key, "name": f"{s.lane} tracker {s.index}"},
            ok_conflict=True,
        )
        created = await self._request(
            "shipments", "/v1/shipments", {**s.body, "devices": [s.device_id]}, ok_conflict=True
        )
        if isinstance(created, dict) and "id" in created:
            self.stats.created += 1

    def follow(self, s: Scenario, slot: int, *, after: datetime) -> None:
        """Schedule the planned events of `s` sent after `after`, its pings, then its successor;
        tell `following` (a shipment in flight, or just booked)."""
        if self.following is not None:
            self.following(s)
        for ev in s.events:
            if ev.send_at > after:
                self._at(ev.send_at, self._sender(s, ev))
                self.planned += 1
        self._at(max(after, s.start) + PING_MOVING * self.jitter.random(), self._pinger(s))

        async def finish() -> None:
            self.stats.completed += 1
            nxt = self.world.slots[slot] = self._successor(s)
            self._at(nxt.start, self._booker(slot))

        self._at(s.completed_at, finish)

    def _booker(self, slot: int) -> Callable[[], Awaitable[None]]:
        async def book() -> None:
            s = self.scenario(self.world.slots[slot])
            await self._register(s)
            self.follow(s, slot, after=s.start - timedelta(seconds=1))

        return book

    def _sender(self, s: Scenario, ev: PlannedEvent) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            self.planned -= 1
            await self.dispatch(s, ev)

        return send

    def _pinger(self, s: Scenario) -> Callable[[], Awaitable[None]]:
        async def ping() -> None:
            now = self.clock()
            if now >= s.track.segments[-1].t1:
                return
            ev = self.ping_event(s, now)
            if ev is None:
                self._at(now + PING_RECHECK, ping)
                return
            await self.dispatch(s, ev)
            every = PING_MOVING if ev.speed_kmh else PING_STANDING
            self._at(now + every * self.jitter.uniform(0.9, 1.1), ping)

        return ping

    @staticmethod
    def ping_event(s: Scenario, at: datetime) -> PlannedEvent | None:
        """The tracker's report at `at`, from its planned track; None in the air or off the track."""
        fix = s.track.at(at)
        if fix is None:
            return None
        at = at.replace(microsecond=0)
        return PlannedEvent(
            at,
            at,
            EventKind.POSITION,
            "mqtt",
            s.device_source,
            seq=PING_SEQ + int((at - s.start).total_seconds()),
            lat=fix.lat,
            lon=fix.lon,
            speed_kmh=fix.speed_kmh if fix.moving else 0.0,
            heading=fix.heading,
            battery_pct=battery_at(s.start, at) if s.device_source == "owntracks" else None,
        )

    def _at(self, at: datetime, action: Callable[[], Awaitable[None]]) -> None:
        heapq.heappush(self.heap, (at, next(self.order), action))

    # -- sending --------------------------------------------------------------------------------
    def _error(self, what: str, detail: str) -> None:
        self.stats.errors[what] += 1
        if self.stats.error_lines < ERROR_LINES_PER_MINUTE:
            self.stats.error_lines += 1
            self.log(f"feeder: {what}: {detail}")

    async def _request(self, what: str, path: str, body: Any, ok_conflict: bool = False) -> Any:
        try:
            resp = await self.http.post(path, json=body)
        except httpx.HTTPError as exc:
            self._error(what, f"POST {path} failed: {exc!r}")
            return None
        if resp.status_code == 409 and ok_conflict:
            return None
        if resp.status_code >= 400:
            self._error(what, f"POST {path} -> {resp.status_code}: {resp.text[:500]}")
            return None
        return resp.json() if resp.content else None

    async def _post(self, d: Delivery) -> None:
        try:
            resp = await self.http.post(d.target, content=d.body, headers=d.headers)
            if resp.status_code >= 400:
                self._error(d.source, f"POST {d.target} -> {resp.status_code}: {resp.text[:500]}")
            else:
                self.stats.sent[d.source] += 1
        except httpx.HTTPError as exc:
            self._error(d.source, f"POST {d.target} failed: {exc!r}")
        finally:
            self.slots.release()

    async def enter_last_free_day(self, s: Scenario, last_free_day: datetime) -> None:
        """The forwarder enters the terminal's last free day: `PATCH /v1/shipments/{id}` with `release`."""
        try:
            found = await self.http.get("/v1/shipments", params={"q": s.tracking_number, "limit": 10})
            found.raise_for_status()
            ids = [x["id"] for x in found.json()["items"] if x["tracking_number"] == s.tracking_number]
            if not ids:
                self._error("release", f"no shipment {s.tracking_number} to give its last free day")
                return
            resp = await self.http.patch(
                f"/v1/shipments/{ids[0]}", json={"release": {"last_free_day": iso(last_free_day)}}
            )
        except httpx.HTTPError as exc:
            self._error("release", f"last free day of {s.tracking_number} failed: {exc!r}")
            return
        if resp.status_code >= 400:
            self._error("release", f"PATCH /v1/shipments/{ids[0]} -> {resp.status_code}: {resp.text[:500]}")
        else:
            self.stats.sent["release"] += 1

    async def dispatch(self, s: Scenario, ev: PlannedEvent) -> None:
        if ev.last_free_day is not None:
            task = asyncio.create_task(self.enter_last_free_day(s, ev.last_free_day))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        try:
            d = encode(s, ev, tenant=self.tenant, secret=self.secret, topic_prefix=self.topic_prefix)
        except (ValueError, KeyError) as exc:  # a planned event no feed can carry: a simulator bug
            self._error("encode", f"{s.shipment_id} event {ev.seq}: {exc!r}")
            return
        if d.transport == "mqtt":
            try:  # QoS 1; published while disconnected, it waits for the connection and counts as sent
                self.mqtt.publish(d.target, d.body, qos=1)
            except (ValueError, MqttError) as exc:
                self._error(f"mqtt:{d.source}", f"publish to {d.target} failed: {exc}")
            else:
                self.stats.sent[f"mqtt:{d.source}"] += 1
            return
        await self.slots.acquire()
        task = asyncio.create_task(self._post(d))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def step(self) -> float:
        """Do what is due, for at most STEP_BUDGET_S; returns the seconds until something else is."""
        now = self.clock()
        budget = time.monotonic() + STEP_BUDGET_S
        while self.heap and self.heap[0][0] <= now:
            if time.monotonic() > budget:
                return 0.0
            _, _, action = heapq.heappop(self.heap)
            await action()
        if self.caught_up:
            self.world.sent_until = now  # everything planned up to now is handed over
        if not self.heap:
            return 1.0
        return min(max((self.heap[0][0] - now).total_seconds(), 0.0), 1.0)

    def report(self) -> None:
        st = self.stats
        sent = " ".join(f"{k}={v}" for k, v in sorted(st.sent.items())) or "none"
        errors = " ".join(f"{k}={v}" for k, v in sorted(st.errors.items())) or "none"
        self.log(
            f"feeder: sim {self.clock():%Y-%m-%d %H:%M} created={st.created} completed={st.completed} "
            f"planned={self.planned} sent[{sent}] errors[{errors}]"
        )
        st.sent.clear()
        st.errors.clear()
        st.error_lines = 0

    async def drain(self, grace_s: float) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=grace_s)
        for task in self.tasks:
            task.cancel()


async def run(
    base_url: str,
    tenant: str,
    api_key: str,
    ingest_secret: str,
    mqtt_url: str,
    *,
    world: World,
    stop: asyncio.Event | None = None,
    log: Callable[[str], None] | None = None,
    saved: Callable[[World], None] | None = None,
    save_every: float = 10.0,
    topic_prefix: str = "",
    concurrency: int = 32,
    report_every: float = 60.0,
    following: Callable[[Scenario], None] | None = None,
) -> None:
    """Feed `world` to trackd at `base_url` until `stop` is set; `saved(world)` is called after the
    catch-up, every `save_every` seconds and at the end, for the caller to keep it; `following(s)`
    whenever the feeder starts to follow a shipment in flight (on its thread).

    Errors are logged (their count per minute, the first lines with the answer's body); they never
    end the run.
    """
    say = log or logging.getLogger("trackd.feeder").info
    stop = stop or asyncio.Event()
    # trackd's own MQTT connection (3.1.1, clean session), which connects again by itself
    publisher = Publisher(endpoint(mqtt_url), f"trackd-feeder-{world.tag}", inflight=200, reconnect_s=(1.0, 30.0))
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        async with httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=15.0) as http:
            feeder = Feeder(
                http,
                publisher,
                world,
                tenant=tenant,
                secret=ingest_secret,
                topic_prefix=topic_prefix,
                concurrency=concurrency,
                log=say,
                following=following,
            )
            began = time.monotonic()
            feeder.place()
            if saved is not None:
                saved(world)  # before the import: a restart in the middle of it continues the same world
            catching: asyncio.Task[bool] | None = asyncio.create_task(feeder.catch_up(stop))
            last_report = last_save = time.monotonic()
            while not stop.is_set():
                delay = await feeder.step()
                if catching is not None and catching.done():
                    if catching.result() and saved is not None:
                        saved(world)
                    say(
                        f"feeder: {world.size} shipments in flight, caught up in {time.monotonic() - began:.1f} s "
                        f"({feeder.stats.sent['import']} events imported); following the clock"
                    )
                    catching = None
                if time.monotonic() - last_report >= report_every:
                    feeder.report()
                    last_report = time.monotonic()
                if saved is not None and feeder.caught_up and time.monotonic() - last_save >= save_every:
                    saved(world)
                    last_save = time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                    except TimeoutError:
                        pass
            if catching is not None:
                await catching
            await feeder.drain(grace_s=0.5)
            if saved is not None and feeder.caught_up:
                saved(world)
            feeder.report()
    finally:
        await publisher.close(grace_s=0.5)


def new_world(size: int, seed: int = 7) -> World:
    """A world of `size` slots, tagged by its creation time so that it never shares identifiers."""
    return World(seed, _base36(int(time.time()) % 36**6), size)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out
