"""The embedded broker: one process, a ring buffer plays the stream. Run a single worker with it."""

from __future__ import annotations

import bisect
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from operator import attrgetter

from service.events.broker import (
    REPLAY_PAGE,
    Envelope,
    Event,
    FanOut,
    SubscriberLagged,
    Subscription,
    encode_data,
    event_id_key,
    format_event_id,
    make_event,
)

_key = attrgetter("key")


class MemoryBroker:
    """Events in a bounded in-process log, delivered to subscribers as they are appended."""

    def __init__(self, *, maxlen: int = 100_000, dedupe_size: int = 100_000) -> None:
        self._log: deque[Event] = deque(maxlen=maxlen)
        # The newest id the ring has dropped: a replay from below it would have a hole.
        self._trimmed_through: tuple[int, int] = (0, 0)
        self._last_key: tuple[int, int] = (0, 0)
        self._appended: OrderedDict[int, None] = OrderedDict()
        self._dedupe_size = dedupe_size
        self._fanout = FanOut()

    @property
    def subscriber_count(self) -> int:
        return self._fanout.count

    @property
    def overflow_count(self) -> int:
        return self._fanout.overflows

    async def start(self) -> None:
        """Nothing to start: appends deliver directly."""

    async def close(self) -> None:
        """Nothing to release."""

    async def append(self, envelopes: Sequence[Envelope]) -> list[str | None]:
        """Append in order and deliver to this process's subscribers; None for an outbox id seen before."""
        # Encode everything first, so a bad envelope appends nothing of its batch.
        encoded = [encode_data(envelope) for envelope in envelopes]
        ids: list[str | None] = []
        for envelope, data_json in zip(envelopes, encoded, strict=True):
            if envelope.outbox_id in self._appended:
                ids.append(None)
                continue
            self._remember(envelope.outbox_id)
            event = make_event(format_event_id(self._next_key()), envelope.type, envelope.topic, data_json)
            if len(self._log) == self._log.maxlen:
                self._trimmed_through = self._log[0].key
            self._log.append(event)
            self._fanout.deliver((event,))
            ids.append(event.id)
        return ids

    def subscribe(self, topics: frozenset[str] | None, *, maxsize: int = 256) -> Subscription:
        return Subscription(self._fanout, self.replay, topics, maxsize)

    async def replay(self, after: str, limit: int = REPLAY_PAGE) -> list[Event]:
        """Up to `limit` events after `after`, oldest first.

        Raises:
            ValueError: `after` is not an event id.
            SubscriberLagged: the ring has dropped events after `after`.
        """
        after_key = event_id_key(after)
        if self._trimmed_through > after_key:
            raise SubscriberLagged(f"the log no longer holds the events after {after}")
        start = bisect.bisect_right(self._log, after_key, key=_key)
        return list(itertools.islice(self._log, start, start + limit))

    def _next_key(self) -> tuple[int, int]:
        """A Redis-like id: milliseconds, then a sequence that keeps ids strictly increasing."""
        ms = time.time_ns() // 1_000_000
        last_ms, last_seq = self._last_key
        self._last_key = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return self._last_key

    def _remember(self, outbox_id: int) -> None:
        self._appended[outbox_id] = None
        if len(self._appended) > self._dedupe_size:
            self._appended.popitem(last=False)
