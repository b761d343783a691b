"""The event broker's interface, its records, and the per-process fan-out both brokers share.

A broker keeps one durable, ordered, bounded log of events (a Redis stream, or a ring buffer in the embedded
default) and delivers each event to the live subscribers of every process. Per process, events reach
subscribers through one in-memory index (topic -> subscriptions, plus the "everything" set) and a bounded
queue per subscription; a subscriber that falls behind recovers the gap from the log.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

_MAX_PART = 2**64 - 1
_EVENT_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
# Events per log read while catching up: bounds memory per subscriber, not the gap it can recover.
REPLAY_PAGE = 1000


class BrokerUnavailable(Exception):
    """The log cannot be reached (Redis down or unreachable); nothing was appended or read."""


class SubscriberLagged(Exception):
    """The log no longer holds the events after the last one this subscriber received.

    The events were trimmed from the bounded log before the subscriber read them, so they cannot be
    replayed: the client must reload the current state and subscribe again.
    """


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the outbox relay hands over: one committed outbox row and the id committed with it."""

    outbox_id: int
    type: str
    data: dict[str, Any]
    # What subscribers filter on (an agent id); None reaches only the "everything" subscribers.
    topic: str | None
    # The event id as (ms, seq), given by the relay and committed before the append (see `Broker.append`).
    key: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Event:
    """One event as subscribers see it, shared by all of them (never mutate `data`)."""

    id: str
    type: str
    topic: str | None
    data: dict[str, Any]
    frame: bytes
    # The id as (ms, seq), parsed once per event per process: ids compare as numbers, not as text.
    key: tuple[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", event_id_key(self.id))


def event_id_key(event_id: str) -> tuple[int, int]:
    """Parse an event id ("ms-seq", or a bare "ms" meaning seq 0) into a comparable (ms, seq).

    Raises:
        ValueError: not an event id (use it to validate a client's Last-Event-ID).
    """
    match = _EVENT_ID.fullmatch(event_id)
    if match is None:
        raise ValueError(f"not an event id: {event_id[:64]!r}")
    ms, seq = int(match[1]), int(match[2] or 0)
    if ms > _MAX_PART or seq > _MAX_PART:
        raise ValueError(f"event id out of range: {event_id[:64]!r}")
    return ms, seq


def format_event_id(key: tuple[int, int]) -> str:
    return f"{key[0]}-{key[1]}"


def predecessor(key: tuple[int, int]) -> tuple[int, int]:
    """The greatest id below `key`, so that "after predecessor(k)" includes k itself."""
    ms, seq = key
    if seq > 0:
        return ms, seq - 1
    if ms > 0:
        return ms - 1, _MAX_PART
    return 0, 0


def following(last: tuple[int, int], now_ms: int) -> tuple[int, int]:
    """The next id after `last` at clock time `now_ms`: the time while it moves on, else the sequence
    (so ids keep increasing within a millisecond and when a clock is behind the last id given)."""
    return (now_ms, 0) if now_ms > last[0] else (last[0], last[1] + 1)


def encode_data(type_: str, data: dict[str, Any]) -> str:
    """An event's data as compact JSON text: the one encoding every process decodes.

    Raises:
        ValueError: the type could break the SSE framing, or the data is not JSON.
        TypeError: the data holds values JSON cannot represent.
    """
    if not type_ or "\n" in type_ or "\r" in type_:
        raise ValueError(f"invalid event type: {type_!r}")
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def make_event(event_id: str, type_: str, topic: str | None, data_json: str) -> Event:
    """Build the shared Event, encoding its SSE frame once.

    The frame's data is the whole event, `{"id", "type", ...data}`, so a client that reads only `data:`
    (or logs it) still has the id and type: the id is only known now, so it is spliced in as text.
    """
    head = f'{{"id":{json.dumps(event_id)},"type":{json.dumps(type_)}'
    body = head + ("}" if data_json == "{}" else "," + data_json[1:])
    frame = f"id: {event_id}\nevent: {type_}\ndata: {body}\n\n".encode()
    return Event(id=event_id, type=type_, topic=topic, data=json.loads(data_json), frame=frame)


class Broker(Protocol):
    """The one interface of the memory and Redis brokers."""

    @property
    def subscriber_count(self) -> int:
        """Live subscriptions registered in this process."""

    @property
    def overflow_count(self) -> int:
        """Times a subscriber's queue was full in this process (each is recovered from the log or lagged)."""

    async def start(self) -> None:
        """Begin delivering live events to this process's subscribers."""

    async def close(self) -> None:
        """Stop delivering; idempotent."""

    async def append(self, envelopes: Sequence[Envelope]) -> list[str]:
        """Append to the log, each envelope under its own `key` (increasing), and deliver to the live
        subscribers of every process. Returns the event id each envelope has in the log.

        The ids are the caller's, committed before the append, so an append whose answer was lost can be
        repeated with the same ids, whatever the log kept: an envelope the log already holds under its id
        is not appended again; one whose id the log has gone past without holding it (a database restored
        from a backup, a clock far behind) is appended under a new id above the log's newest, returned.

        Raises:
            BrokerUnavailable: the log cannot be reached; some envelopes may have been appended. Retry
                the same envelopes (same ids) later.
        """

    def subscribe(self, topics: frozenset[str] | None, *, maxsize: int = 256) -> Subscription:
        """Register a bounded queue for `topics` (None: every event) at once; leave it with `async with`."""

    async def replay(self, after: str, limit: int = REPLAY_PAGE) -> list[Event]:
        """Up to `limit` events with an id above `after`, oldest first; with an archive, what the log lost
        is read from it. `after` "0" means from the start of what the log holds.

        Raises:
            ValueError: `after` is not an event id.
            SubscriberLagged: neither the log nor the archive holds the events right after `after`.
            BrokerUnavailable: the log (or the archive) cannot be reached.
        """

    async def trim(self, before_ms: int) -> None:
        """Drop the log's events older than `before_ms` (time-based retention; the length cap is kept
        on every append)."""


ReplayFn = Callable[[str, int], Awaitable[list[Event]]]
# Events after `after` and, when `before` is given, below it, oldest first, from the durable outbox table:
# what the broker's log no longer holds. Raises SubscriberLagged past its own retention, BrokerUnavailable
# when the database cannot be read.
Archive = Callable[[tuple[int, int], tuple[int, int] | None, int], Awaitable[list[Event]]]


class FanOut:
    """This process's subscribers indexed by topic: delivering costs O(matching subscribers)."""

    def __init__(self) -> None:
        self._by_topic: dict[str, set[Subscription]] = {}
        self._everything: set[Subscription] = set()
        self.count = 0
        self.overflows = 0

    def add(self, subscription: Subscription) -> None:
        if subscription.topics is None:
            self._everything.add(subscription)
        else:
            for topic in subscription.topics:
                self._by_topic.setdefault(topic, set()).add(subscription)
        self.count += 1

    def remove(self, subscription: Subscription) -> None:
        if subscription.topics is None:
            self._everything.discard(subscription)
        else:
            for topic in subscription.topics:
                members = self._by_topic.get(topic)
                if members is not None:
                    members.discard(subscription)
                    if not members:
                        del self._by_topic[topic]
        self.count -= 1

    def deliver(self, events: Iterable[Event]) -> None:
        """Hand each event, in order, to the subscriptions that want it (no await: no interleaving)."""
        for event in events:
            if event.topic is not None:
                members = self._by_topic.get(event.topic)
                if members:
                    self._offer(members, event)
            if self._everything:
                self._offer(self._everything, event)

    def _offer(self, members: set[Subscription], event: Event) -> None:
        for subscription in members:
            if subscription._lagging:
                continue
            if not subscription._queue.offer(event):
                # Stop queueing for this subscriber: the queue keeps an unbroken prefix and the rest is
                # read back from the log once the subscriber has drained it.
                subscription._lag(predecessor(event.key))
                self.overflows += 1

    def lose_after(self, key: tuple[int, int]) -> None:
        """Events after `key` never reached this process: every subscriber reads them from the log."""
        for subscription in self._everything.union(*self._by_topic.values()):
            subscription._lag(key)


class Mailbox:
    """A subscription's bounded queue, for its one reader.

    Not asyncio.Queue: that holds four deques and an Event per instance, 3.3 KiB of the 41 KiB a worker
    held per idle stream (tracemalloc, docs/benchmarks.md), and its put and get serve many readers and
    writers, which a subscription never has. This holds one deque, and a future only while its reader
    waits.
    """

    __slots__ = ("_items", "_maxsize", "_waiter")

    def __init__(self, maxsize: int) -> None:
        self._items: collections.deque[Event | None] = collections.deque()
        self._maxsize = maxsize
        self._waiter: asyncio.Future[None] | None = None

    def empty(self) -> bool:
        return not self._items

    def offer(self, item: Event | None) -> bool:
        """Add `item` and wake the reader; False (and nothing added) when full."""
        if len(self._items) >= self._maxsize:
            return False
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    async def get(self) -> Event | None:
        """The oldest item, waiting for one if there is none."""
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class Subscription:
    """One live subscriber's bounded queue; an async context manager that unregisters on exit."""

    # A worker holds one per open stream, thousands at a time: no per-instance dict.
    __slots__ = (
        "_active_at",
        "_beat_queued",
        "_closed",
        "_fanout",
        "_heartbeat",
        "_interrupted",
        "_lagging",
        "_last",
        "_queue",
        "_replay",
        "_resume_after",
        "_timer",
        "topics",
    )

    def __init__(self, fanout: FanOut, replay: ReplayFn, topics: frozenset[str] | None, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.topics = topics
        self._fanout = fanout
        self._replay = replay
        # Events from the fan-out; None is a heartbeat put there by this subscription's own timer.
        self._queue = Mailbox(maxsize)
        # Set when events stopped reaching the queue: everything after `_resume_after` is read from the log.
        self._lagging = False
        self._resume_after: tuple[int, int] = (0, 0)
        self._last: tuple[int, int] | None = None
        self._heartbeat = 0.0
        self._active_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._beat_queued = False
        self._closed = False
        self._interrupted = False
        fanout.add(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Unregister from the fan-out; idempotent."""
        self._stop_heartbeat()
        if not self._closed:
            self._closed = True
            self._fanout.remove(self)

    @property
    def interrupted(self) -> bool:
        """Whether `interrupt` ended it (rather than the subscriber leaving)."""
        return self._interrupted

    def interrupt(self) -> None:
        """End `events()` at its next step and unregister (the server is shutting down, or the
        subscriber's session ended): the iterator returns instead of waiting for the next event."""
        self._interrupted = True
        self.close()
        self._queue.offer(None)  # wakes a waiting get; a full queue wakes it anyway

    async def events(self, last_event_id: str | None, heartbeat: float) -> AsyncIterator[Event | None]:
        """Events in id order: those after `last_event_id` from the log first, then live ones.

        Yields None after `heartbeat` seconds without an event. Iterate once per subscription.

        Raises:
            ValueError: `last_event_id` is not an event id (raised before anything is yielded).
            SubscriberLagged: the log no longer holds the events after the last one received.
            BrokerUnavailable: the log could not be read to replay or recover a gap.
        """
        last = None if last_event_id is None else event_id_key(last_event_id)
        self._start_heartbeat(heartbeat)
        try:
            if last is not None:
                self._last = last
                async for event in self._catch_up(format_event_id(last)):
                    yield event
            while True:
                if self._lagging and self._queue.empty():
                    async for event in self._recover():
                        yield event
                    continue
                item = await self._queue.get()
                if self._interrupted:
                    return
                # Replay and live overlap by design: skip what was already yielded.
                if item is None or self._last is None or item.key > self._last:
                    yield self._yielding(item)
        finally:
            self._stop_heartbeat()

    def _yielding(self, item: Event | None) -> Event | None:
        """Record that `item` goes out now: it moves the cursor and resets the heartbeat's idle time."""
        if item is None:
            self._beat_queued = False
        else:
            self._last = item.key
        self._active_at = asyncio.get_running_loop().time()
        return item

    def _lag(self, resume_after: tuple[int, int]) -> None:
        if not self._lagging:
            self._lagging = True
            self._resume_after = resume_after

    async def _recover(self) -> AsyncIterator[Event]:
        """Read back from the log what the full queue could not take."""
        # Everything up to `_resume_after` was queued and yielded, so start there (not at an older last
        # event of a quiet topic, which the log may have trimmed meanwhile).
        after = self._resume_after
        if self._last is not None and self._last > after:
            after = self._last
        # Queue again from now on; anything delivered before this point is in the log already.
        self._lagging = False
        async for event in self._catch_up(format_event_id(after)):
            yield event

    async def _catch_up(self, after: str) -> AsyncIterator[Event]:
        while True:
            page = await self._replay(after, REPLAY_PAGE)
            for event in page:
                wanted = self.topics is None or event.topic in self.topics
                if wanted and (self._last is None or event.key > self._last):
                    self._yielding(event)
                    yield event
            if len(page) < REPLAY_PAGE:
                return
            after = page[-1].id

    # One timer per subscription, re-armed once per idle period: a timeout around every queue wait
    # would schedule and cancel a timer per event per subscriber, which dominates a broadcast to many.
    def _start_heartbeat(self, heartbeat: float) -> None:
        self._stop_heartbeat()
        loop = asyncio.get_running_loop()
        self._heartbeat = heartbeat
        self._active_at = loop.time()
        self._timer = loop.call_at(self._active_at + heartbeat, self._beat)

    def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        due = self._active_at + self._heartbeat
        if loop.time() >= due:
            # One heartbeat waiting is enough; a full queue means a busy subscriber, not an idle one.
            if not self._beat_queued and self._queue.offer(None):
                self._beat_queued = True
            self._active_at = due = loop.time()
            due += self._heartbeat
        self._timer = loop.call_at(due, self._beat)

    def _stop_heartbeat(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class LogBroker:
    """What both brokers share: this process's fan-out, subscriptions, and replay from the log with the
    archive behind it. A broker supplies `_read_log` and `_first_key` for its own log."""

    def __init__(self, archive: Archive | None) -> None:
        self._archive = archive
        self._fanout = FanOut()

    @property
    def subscriber_count(self) -> int:
        return self._fanout.count

    @property
    def overflow_count(self) -> int:
        return self._fanout.overflows

    def subscribe(self, topics: frozenset[str] | None, *, maxsize: int = 256) -> Subscription:
        return Subscription(self._fanout, self.replay, topics, maxsize)

    async def replay(self, after: str, limit: int = REPLAY_PAGE) -> list[Event]:
        """A page of events after `after`: from the log, or, where the log lost them (trimmed, Redis
        restarted empty, the process restarted), from the archive up to the log's first entry and then
        from the log again.

        The archive serves only ids below the log's first entry, so an event appended to the log but whose
        outbox row is not yet marked published is always read from the log: nothing falls between the two.

        Raises:
            ValueError: `after` is not an event id.
            SubscriberLagged: neither the log nor the archive holds the events after `after`.
            BrokerUnavailable: the log (or the archive) cannot be reached.
        """
        after_key = event_id_key(after)
        try:
            return await self._read_log(after_key, limit)
        except SubscriberLagged:
            if self._archive is None:
                raise
        for _ in range(3):
            first = await self._first_key()
            page = await self._archive(after_key, first, limit)
            if first is None or len(page) == limit:
                return page
            try:
                # The archive has given everything below the log's first entry: the log goes on from
                # there (and fills the page, since a short page means "nothing more" to the caller).
                return page + await self._read_log(predecessor(first), limit - len(page))
            except SubscriberLagged:
                continue  # trimmed again meanwhile: the archive covers the new gap
        raise SubscriberLagged(f"the log moved on while replaying after {after}")

    async def _read_log(self, after_key: tuple[int, int], limit: int) -> list[Event]:
        """Up to `limit` events of the log after `after_key`; SubscriberLagged where it lost some."""
        raise NotImplementedError

    async def _first_key(self) -> tuple[int, int] | None:
        """The id of the log's oldest entry; None when it holds none."""
        raise NotImplementedError
