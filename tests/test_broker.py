"""The broker contract, run against MemoryBroker always and RedisBroker when TEST_REDIS_URL is set.

The Redis cases are left out of collection (not skipped) when TEST_REDIS_URL is unset: CI runs this module
once with it and once without, and a skip would hide a Redis case that never ran.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from service.events.broker import (
    REPLAY_PAGE,
    Broker,
    BrokerUnavailable,
    Envelope,
    Event,
    Mailbox,
    SubscriberLagged,
    encode_data,
    event_id_key,
    following,
    format_event_id,
    make_event,
)
from service.events.memory_broker import MemoryBroker
from service.events.redis_broker import RedisBroker

REDIS_URL = os.environ.get("TEST_REDIS_URL") or None
KINDS = ["memory", *(["redis"] if REDIS_URL else [])]
HEARTBEAT = 0.05
WAIT = 10.0


class Brokers:
    """Builds started brokers for one test and closes them (and, for Redis, deletes its keys) after."""

    def __init__(self) -> None:
        self.prefix = f"sbtest:broker:{uuid.uuid4().hex}"
        self._brokers: list[Broker] = []
        self._clients: list[Redis] = []

    def client(self, url: str | None = None) -> Redis:
        client = Redis.from_url(url or REDIS_URL or "", socket_timeout=5, socket_connect_timeout=1)
        self._clients.append(client)
        return client

    async def memory(self, **options: Any) -> Broker:
        return await self._started(MemoryBroker(**options))

    async def redis(self, url: str | None = None, **options: Any) -> RedisBroker:
        """A broker of its own "process": its own client, listener and listener name."""
        options = {"approximate": False, "block_ms": 200, **options}
        name = f"{self.prefix}:listener:{len(self._brokers)}"
        broker = RedisBroker(self.client(url), stream_key=self.prefix, listener_name=name, **options)
        await self._started(broker)
        return broker

    async def _started(self, broker: Any) -> Any:
        await broker.start()
        self._brokers.append(broker)
        return broker

    async def close(self) -> None:
        for broker in self._brokers:
            await broker.close()
        if REDIS_URL:
            cleaner = self.client()
            # Only this test's keys: other suites share the server (and db numbers are assigned per suite).
            async for key in cleaner.scan_iter(match=f"{self.prefix}*"):
                await cleaner.delete(key)
        for client in self._clients:
            await client.aclose()


@pytest.fixture
async def brokers() -> AsyncIterator[Brokers]:
    made = Brokers()
    yield made
    await made.close()


@pytest.fixture(params=KINDS)
def make_broker(request: pytest.FixtureRequest, brokers: Brokers) -> Callable[..., Any]:
    return brokers.memory if request.param == "memory" else brokers.redis


@pytest.fixture
async def broker(make_broker: Callable[..., Any]) -> Broker:
    made: Broker = await make_broker()
    return made


@asynccontextmanager
async def watching(
    broker: Broker, topics: frozenset[str] | None, last_event_id: str | None = None, *, maxsize: int = 256
) -> AsyncIterator[AsyncIterator[Event | None]]:
    """A subscription's event stream; the subscription is registered on entry and gone on exit."""
    async with (
        broker.subscribe(topics, maxsize=maxsize) as subscription,
        aclosing(subscription.events(last_event_id, HEARTBEAT)) as stream,
    ):
        yield stream


_newest = [(0, 0)]


def next_key() -> tuple[int, int]:
    """An id above every one given before, as the relay gives them."""
    _newest[0] = following(_newest[0], time.time_ns() // 1_000_000)
    return _newest[0]


def envelope(n: int, topic: str | None = "a1") -> Envelope:
    """Outbox row `n`, numbered with a new id."""
    return Envelope(n, "agent.status_changed", {"n": n}, topic, next_key())


def numbers(events: Sequence[Event]) -> list[int]:
    return [event.data["n"] for event in events]


async def take(stream: AsyncIterator[Event | None], count: int) -> list[Event]:
    """The next `count` events of a stream, passing over heartbeats."""
    got: list[Event] = []
    async with asyncio.timeout(WAIT):
        while len(got) < count:
            item = await anext(stream)
            if item is not None:
                got.append(item)
    return got


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.01)


# The contract, for both brokers.


async def test_events_are_appended_under_the_ids_they_were_given(broker: Broker) -> None:
    first = [envelope(n) for n in range(5)]
    second = [envelope(n) for n in range(5, 8)]
    ids = await broker.append(first)
    ids += await broker.append(second)

    assert ids == [format_event_id(item.key) for item in first + second]
    assert [event.id for event in await broker.replay("0")] == ids


async def test_subscribers_get_their_topics_and_everything_subscribers_get_all(broker: Broker) -> None:
    topics = ["a1", "a2", None, "a3", "a1", "a4"]
    async with (
        watching(broker, frozenset({"a1"})) as a1_stream,
        watching(broker, frozenset({"a2", "a3"})) as a23_stream,
        watching(broker, None) as all_stream,
    ):
        await broker.append([envelope(n, topic) for n, topic in enumerate(topics)])
        assert numbers(await take(a1_stream, 2)) == [0, 4]
        assert numbers(await take(a23_stream, 2)) == [1, 3]
        assert numbers(await take(all_stream, 6)) == [0, 1, 2, 3, 4, 5]

        # Nothing else was queued for the topic subscribers: the next event each sees is a fresh one.
        await broker.append([envelope(10, "a1"), envelope(11, "a3")])
        assert numbers(await take(a1_stream, 1)) == [10]
        assert numbers(await take(a23_stream, 1)) == [11]


async def test_events_arrive_in_append_order(broker: Broker) -> None:
    async with watching(broker, None) as stream:
        for start in range(0, 60, 7):
            await broker.append([envelope(n, f"a{n % 3}") for n in range(start, min(start + 7, 60))])
        got = await take(stream, 60)

    assert numbers(got) == list(range(60))
    assert [event.key for event in got] == sorted(event.key for event in got)


async def test_every_subscriber_shares_one_encoded_event(broker: Broker) -> None:
    async with watching(broker, frozenset({"a1"})) as first, watching(broker, None) as second:
        [event_id] = await broker.append(
            [Envelope(1, "agent.status_changed", {"to": "busy", "é": 1}, "a1", next_key())]
        )
        [seen_first], [seen_second] = await take(first, 1), await take(second, 1)

    assert seen_first is seen_second
    assert seen_first.id == event_id
    assert seen_first.type == "agent.status_changed"
    assert seen_first.topic == "a1"
    assert seen_first.data == {"to": "busy", "é": 1}
    expected = (
        f"id: {event_id}\nevent: agent.status_changed\n"
        f'data: {{"id":"{event_id}","type":"agent.status_changed","to":"busy","é":1}}\n\n'
    )
    assert seen_first.frame == expected.encode()


async def test_replay_returns_exactly_the_later_events(broker: Broker) -> None:
    ids = await broker.append([envelope(n, f"a{n % 2}") for n in range(10)])
    assert None not in ids

    assert numbers(await broker.replay(str(ids[3]))) == [4, 5, 6, 7, 8, 9]
    assert numbers(await broker.replay(str(ids[3]), limit=2)) == [4, 5]
    assert await broker.replay(str(ids[-1])) == []
    assert numbers(await broker.replay("0")) == list(range(10))
    assert [event.id for event in await broker.replay("0-0")] == ids


async def test_last_event_id_replays_then_goes_live_without_gap_or_duplicate(broker: Broker) -> None:
    async def append_more() -> None:
        for n in range(50, 100):
            await broker.append([envelope(n), envelope(1000 + n, "other")])
            await asyncio.sleep(0)

    subscription = broker.subscribe(frozenset({"a1"}))
    # Appended after registering: these sit in the live queue and in the log, so replay and live overlap.
    ids = await broker.append([envelope(n) for n in range(50)])
    async with subscription, aclosing(subscription.events(ids[9], HEARTBEAT)) as stream:
        appending = asyncio.create_task(append_more())
        got = await take(stream, 90)
        await appending
        # Had anything been yielded twice, the next event would not be the fresh one.
        await broker.append([envelope(100)])
        got += await take(stream, 1)

    assert numbers(got) == list(range(10, 101))


async def test_catching_up_reads_a_long_gap_page_by_page(broker: Broker) -> None:
    count = REPLAY_PAGE * 2 + 500
    for start in range(0, count, 500):
        await broker.append([envelope(n) for n in range(start, start + 500)])

    async with watching(broker, frozenset({"a1"}), "0") as stream:
        got = await take(stream, count)

    assert numbers(got) == list(range(count))


async def test_an_append_repeated_with_the_same_ids_appends_and_delivers_nothing_twice(
    broker: Broker,
) -> None:
    """The relay repeats an append whose answer it lost (some of it may be in the log) with the same ids."""
    one, two, three = envelope(1), envelope(2), envelope(3)
    async with watching(broker, None) as stream:
        first = await broker.append([one])
        again = await broker.append([one, two])
        same_batch = await broker.append([three, three])
        got = await take(stream, 3)
        await broker.append([envelope(4)])
        got += await take(stream, 1)

    assert again[0] == first[0] == format_event_id(one.key)
    assert same_batch[0] == same_batch[1] == format_event_id(three.key)
    assert numbers(got) == [1, 2, 3, 4]
    assert numbers(await broker.replay("0")) == [1, 2, 3, 4]


@pytest.mark.parametrize("behind", ["same id, other event", "an id never held"])
async def test_an_id_the_log_went_past_without_holding_it_gets_a_new_one(broker: Broker, behind: str) -> None:
    """A database restored from a backup gives its ids out again: the new event must still go out, once."""
    older = envelope(1)
    async with watching(broker, None) as stream:
        [held] = await broker.append([envelope(2)])
        if behind == "same id, other event":
            late = Envelope(2, "agent.updated", {"n": 5}, "a1", event_id_key(held))
        else:
            late = Envelope(5, "agent.updated", {"n": 5}, "a1", older.key)
        [given] = await broker.append([late])
        got = await take(stream, 2)

    assert event_id_key(given) > event_id_key(held)
    assert [(event.id, event.data) for event in got] == [(held, {"n": 2}), (given, {"n": 5})]
    assert numbers(await broker.replay("0")) == [2, 5]


async def test_leaving_a_subscription_unregisters_it(broker: Broker) -> None:
    async with broker.subscribe(frozenset({"a1"})), broker.subscribe(None):
        assert broker.subscriber_count == 2
    assert broker.subscriber_count == 0
    # Delivering to nobody is fine.
    await broker.append([envelope(1)])


async def test_cancelling_a_subscriber_unregisters_it(broker: Broker) -> None:
    listening = asyncio.Event()

    async def watch() -> None:
        async with broker.subscribe(frozenset({"a1"})) as subscription:
            listening.set()
            async for _ in subscription.events(None, HEARTBEAT):
                pass

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(listening.wait(), WAIT)
    assert broker.subscriber_count == 1

    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watcher
    assert broker.subscriber_count == 0


async def test_an_idle_subscription_yields_heartbeats(broker: Broker) -> None:
    async with watching(broker, frozenset({"a1"})) as stream:
        assert await asyncio.wait_for(anext(stream), WAIT) is None
        assert await asyncio.wait_for(anext(stream), WAIT) is None
        await broker.append([envelope(1)])
        assert numbers(await take(stream, 1)) == [1]


async def test_a_slow_consumer_recovers_the_overflow_from_the_log(broker: Broker) -> None:
    async with watching(broker, frozenset({"a1"}), maxsize=2) as stream:
        await broker.append([envelope(n, "a1" if n % 2 else "a2") for n in range(20)])
        await wait_until(lambda: broker.overflow_count > 0)
        got = await take(stream, 10)
        # Live delivery resumes after the recovery.
        await broker.append([envelope(100)])
        got += await take(stream, 1)

    assert numbers(got) == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 100]


async def test_a_mailbox_is_bounded_first_in_first_out_and_wakes_its_reader() -> None:
    box = Mailbox(2)
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    assert not reader.done()  # nothing yet: it waits
    first = make_event("1-0", "agent.updated", None, "{}")
    second = make_event("2-0", "agent.updated", None, "{}")
    assert box.offer(first)
    assert await asyncio.wait_for(reader, WAIT) is first
    assert box.offer(second)
    assert box.offer(None)
    assert not box.offer(first)  # full: refused, nothing added
    assert [await box.get(), await box.get()] == [second, None]
    assert box.empty()


async def test_a_slow_consumer_lags_when_the_log_no_longer_holds_the_gap(
    make_broker: Callable[..., Any],
) -> None:
    broker: Broker = await make_broker(maxlen=5)
    async with watching(broker, None, maxsize=2) as stream:
        await broker.append([envelope(n) for n in range(3)])
        await wait_until(lambda: broker.overflow_count > 0)
        # Trims events 0-14 from the log: 2 and later, which the full queue could not take, are gone.
        await broker.append([envelope(n) for n in range(3, 20)])
        assert numbers(await take(stream, 2)) == [0, 1]
        with pytest.raises(SubscriberLagged):
            await take(stream, 1)


async def test_replaying_from_a_trimmed_id_lags(make_broker: Callable[..., Any]) -> None:
    broker: Broker = await make_broker(maxlen=5)
    ids = await broker.append([envelope(n) for n in range(12)])

    with pytest.raises(SubscriberLagged):
        await broker.replay(str(ids[2]))
    async with broker.subscribe(frozenset({"a1"})) as subscription:
        with pytest.raises(SubscriberLagged):
            await take(subscription.events(str(ids[2]), HEARTBEAT), 1)
    # From the id just before the oldest kept event, nothing is missing.
    assert numbers(await broker.replay(str(ids[6]))) == [7, 8, 9, 10, 11]


@pytest.mark.parametrize(
    "junk", ["", "abc", "1-", "-1", "1-2-3", " 1-2", "1-2\n", "1.5", "\u0661-\u0662", "1" * 21]
)
async def test_invalid_event_ids_are_rejected(broker: Broker, junk: str) -> None:
    with pytest.raises(ValueError, match="event id"):
        event_id_key(junk)
    with pytest.raises(ValueError, match="event id"):
        await broker.replay(junk)
    async with broker.subscribe(None) as subscription:
        with pytest.raises(ValueError, match="event id"):
            await anext(subscription.events(junk, HEARTBEAT))


def test_event_ids_compare_as_numbers() -> None:
    assert event_id_key("5") == (5, 0)
    assert event_id_key("1700000000000-12") == (1700000000000, 12)
    assert event_id_key("10-0") > event_id_key("9-99")
    with pytest.raises(ValueError, match="out of range"):
        event_id_key(str(2**64))


async def test_an_event_type_that_breaks_sse_framing_appends_nothing(broker: Broker) -> None:
    bad = Envelope(2, "x\ndata: injected", {}, "a1", next_key())
    with pytest.raises(ValueError, match="event type"):
        await broker.append([envelope(1), bad])
    assert await broker.replay("0") == []


class ListArchive:
    """Plays the outbox table for the broker: every appended event, kept in order (the real one, read
    from the database, is tested in tests/services/test_retention.py and tests/blueprints/test_events.py)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def append(self, broker: Broker, envelopes: Sequence[Envelope]) -> list[str]:
        ids = await broker.append(envelopes)
        for item, event_id in zip(envelopes, ids, strict=True):
            self.events.append(make_event(event_id, item.type, item.topic, encode_data(item.type, item.data)))
        return ids

    async def __call__(
        self, after: tuple[int, int], before: tuple[int, int] | None, limit: int
    ) -> list[Event]:
        kept = [e for e in self.events if e.key > after and (before is None or e.key < before)]
        return kept[:limit]


async def test_what_the_log_trimmed_is_read_from_the_archive(make_broker: Callable[..., Any]) -> None:
    archive = ListArchive()
    broker: Broker = await make_broker(maxlen=5, archive=archive)
    ids = await archive.append(broker, [envelope(n) for n in range(12)])

    # The archive up to the log's first event, then the log: one page.
    assert numbers(await broker.replay(ids[2])) == list(range(3, 12))
    async with watching(broker, frozenset({"a1"}), ids[2]) as stream:
        assert numbers(await take(stream, 9)) == list(range(3, 12))
        await archive.append(broker, [envelope(12)])
        assert numbers(await take(stream, 1)) == [12]


async def test_time_retention_trims_the_log(make_broker: Callable[..., Any]) -> None:
    broker: Broker = await make_broker()
    ids = await broker.append([envelope(n) for n in range(3)])
    await asyncio.sleep(0.005)
    ids += await broker.append([envelope(n) for n in range(3, 5)])

    await broker.trim(event_id_key(ids[3])[0])

    with pytest.raises(SubscriberLagged):
        await broker.replay(ids[0])
    assert numbers(await broker.replay(ids[2])) == [3, 4]


async def test_an_id_from_before_this_process_lags_unless_the_archive_holds_it() -> None:
    archive = ListArchive()
    earlier = MemoryBroker()
    old = await archive.append(earlier, [envelope(n) for n in range(3)])
    await asyncio.sleep(0.005)
    # A restarted process: an empty ring, which never held the ids above.
    alone, restarted = MemoryBroker(), MemoryBroker(archive=archive)
    await archive.append(restarted, [envelope(3), envelope(4)])

    with pytest.raises(SubscriberLagged):
        await alone.replay(old[0])
    async with watching(restarted, None, old[0]) as stream:
        assert numbers(await take(stream, 4)) == [1, 2, 3, 4]


# Redis only: several processes, outages and reconnects.

if REDIS_URL:

    async def test_two_processes_each_receive_every_event(brokers: Brokers) -> None:
        first, second = await brokers.redis(), await brokers.redis()
        async with (
            watching(first, None) as first_stream,
            watching(second, frozenset({"a1"})) as second_stream,
        ):
            ids = await first.append([envelope(0), envelope(1)])
            ids += await second.append([envelope(2), envelope(3)])
            ids += await first.append([envelope(4)])
            seen_first, seen_second = await take(first_stream, 5), await take(second_stream, 5)

        assert [event.id for event in seen_first] == ids
        assert [event.id for event in seen_second] == ids

    async def test_a_listener_starts_at_the_end_of_the_stream(brokers: Brokers) -> None:
        writer = await brokers.redis()
        await writer.append([envelope(0), envelope(1)])
        reader = await brokers.redis()

        async with watching(reader, None) as stream:
            await writer.append([envelope(2)])
            assert numbers(await take(stream, 1)) == [2]

    async def test_an_unreachable_redis_raises_broker_unavailable(brokers: Brokers) -> None:
        broker = await brokers.redis("redis://127.0.0.1:1/13")  # start() survives it

        with pytest.raises(BrokerUnavailable):
            await broker.append([envelope(1)])
        with pytest.raises(BrokerUnavailable):
            await broker.replay("0")
        async with broker.subscribe(None) as subscription:
            with pytest.raises(BrokerUnavailable):
                await anext(subscription.events("0", HEARTBEAT))

    async def test_the_listener_resumes_after_its_connection_is_killed(brokers: Brokers) -> None:
        # A long retry delay, so the next appends land while the listener is away.
        reader = await brokers.redis(retry_delay=0.5)
        writer = await brokers.redis()
        admin = brokers.client()
        async with watching(reader, None) as stream:
            await writer.append([envelope(0)])
            assert numbers(await take(stream, 1)) == [0]

            killed = await _listener_id(admin, f"{brokers.prefix}:listener:0")
            assert await admin.client_kill_filter(_id=killed) == 1
            for n in range(1, 10, 3):
                await writer.append([envelope(n), envelope(n + 1), envelope(n + 2)])
            got = await take(stream, 9)
            await writer.append([envelope(10)])
            got += await take(stream, 1)

        assert numbers(got) == list(range(1, 11))
        assert await _listener_id(admin, f"{brokers.prefix}:listener:0") != killed

    async def test_a_listener_away_longer_than_the_log_lags_its_subscribers(brokers: Brokers) -> None:
        reader = await brokers.redis(retry_delay=0.5, maxlen=5)
        writer = await brokers.redis(maxlen=5)
        admin = brokers.client()
        async with watching(reader, frozenset({"a1"})) as stream:
            await writer.append([envelope(0)])
            assert numbers(await take(stream, 1)) == [0]

            killed = await _listener_id(admin, f"{brokers.prefix}:listener:0")
            assert await admin.client_kill_filter(_id=killed) == 1
            # While the listener is away, the log is trimmed past where it stopped.
            await writer.append([envelope(n) for n in range(1, 20)])
            with pytest.raises(SubscriberLagged):
                await take(stream, 1)

        # A subscriber that starts afresh is served again.
        async with watching(reader, frozenset({"a1"})) as stream:
            await writer.append([envelope(20)])
            assert numbers(await take(stream, 1)) == [20]

    @pytest.mark.parametrize("archived", [True, False])
    async def test_a_stream_lost_with_redis_is_detected(brokers: Brokers, archived: bool) -> None:
        """Redis restarted empty: ids from the lost stream cannot be resumed from the new one alone."""
        archive = ListArchive()
        options: dict[str, Any] = {"archive": archive} if archived else {}
        # A long retry delay, so that what follows happens while the reader's listener is away.
        reader = await brokers.redis(retry_delay=0.5, **options)
        writer = await brokers.redis(**options)
        admin = brokers.client()
        async with watching(reader, None) as live:
            old = await archive.append(writer, [envelope(n) for n in range(3)])
            assert numbers(await take(live, 3)) == [0, 1, 2]
            assert await admin.client_kill_filter(
                _id=await _listener_id(admin, f"{brokers.prefix}:listener:0")
            )
            # Appended, then lost with the stream before the listener read it: only the archive has it.
            old += await archive.append(writer, [envelope(3)])
            await admin.delete(brokers.prefix)
            await archive.append(writer, [envelope(4), envelope(5)])
            if archived:
                assert numbers(await take(live, 3)) == [3, 4, 5]
            else:
                with pytest.raises(SubscriberLagged):
                    await take(live, 1)

        if archived:
            assert numbers(await writer.replay(old[0])) == [1, 2, 3, 4, 5]
            async with watching(writer, None, old[0]) as resumed:
                assert numbers(await take(resumed, 5)) == [1, 2, 3, 4, 5]
        else:
            with pytest.raises(SubscriberLagged):
                await writer.replay(old[0])

    async def test_an_empty_lost_stream_is_not_taken_for_no_news(brokers: Brokers) -> None:
        writer = await brokers.redis()
        old = await writer.append([envelope(0), envelope(1)])
        await brokers.client().delete(brokers.prefix)  # Redis restarted empty; nothing appended since

        with pytest.raises(SubscriberLagged):
            await writer.replay(old[0])
        assert await writer.replay("0") == []

    async def test_an_append_repeated_after_redis_lost_its_stream_keeps_its_ids(brokers: Brokers) -> None:
        """The relay's append reached Redis and its listeners, the answer was lost, and Redis restarted
        empty: repeated under the same ids, no listener delivers those events twice."""
        reader, writer = await brokers.redis(), await brokers.redis()
        sent = [envelope(0), envelope(1)]
        async with watching(reader, None) as live:
            await writer.append(sent)  # what the relay never heard back from
            got = await take(live, 2)
            await brokers.client().delete(brokers.prefix)
            late = envelope(2)
            again = await writer.append([*sent, late])
            got += await take(live, 1)

        assert again == [format_event_id(item.key) for item in [*sent, late]]
        assert [event.id for event in got] == again
        assert numbers(await writer.replay("0")) == [0, 1, 2]

    async def _listener_id(admin: Redis, name: str) -> str:
        """The Redis client id of the listener connection called `name`, once it is connected."""
        async with asyncio.timeout(WAIT):
            while True:
                for client in await admin.client_list():
                    if client.get("name") == name:
                        return str(client["id"])
                await asyncio.sleep(0.01)
