"""The embedded broker: one process, a ring buffer plays the stream. Run a single worker with it."""

from __future__ import annotations

import bisect
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from operator import attrgetter

from service.events.broker import (
    Archive,
    Envelope,
    Event,
    LogBroker,
    SubscriberLagged,
    dedupe_key,
    encode_data,
    format_event_id,
    make_event,
    predecessor,
)

_key = attrgetter("key")


class MemoryBroker(LogBroker):
    """Events in a bounded in-process log, delivered to subscribers as they are appended."""

    def __init__(
        self, *, maxlen: int = 100_000, dedupe_size: int = 100_000, archive: Archive | None = None
    ) -> None:
        self._log: deque[Event] = deque(maxlen=maxlen)
        # The newest id the ring has dropped: a replay from below it would have a hole.
        self._trimmed_through: tuple[int, int] = (0, 0)
        # Ids below this are an earlier process's (ids are times): this ring never held them.
        self._origin = predecessor((time.time_ns() // 1_000_000, 0))
        self._last_key: tuple[int, int] = (0, 0)
        # Dedupe key -> the event id it got, so a relay that appends twice gets the same id back.
        self._appended: OrderedDict[str, str] = OrderedDict()
        self._dedupe_size = dedupe_size
        super().__init__(archive)

    async def start(self) -> None:
        """Nothing to start: appends deliver directly."""

    async def close(self) -> None:
        """Nothing to release."""

    async def append(self, envelopes: Sequence[Envelope], *, after: tuple[int, int] = (0, 0)) -> list[str]:
        """Append in order, with ids above `after`, and deliver to this process's subscribers; an outbox id
        seen before keeps the id it got then and is not appended again."""
        self._last_key = max(self._last_key, after)
        # Encode everything first, so a bad envelope appends nothing of its batch.
        encoded = [encode_data(envelope) for envelope in envelopes]
        ids: list[str] = []
        for envelope, data_json in zip(envelopes, encoded, strict=True):
            key = dedupe_key(envelope, data_json)
            seen = self._appended.get(key)
            if seen is not None:
                ids.append(seen)
                continue
            event = make_event(format_event_id(self._next_key()), envelope.type, envelope.topic, data_json)
            self._remember(key, event.id)
            if len(self._log) == self._log.maxlen:
                self._trimmed_through = self._log[0].key
            self._log.append(event)
            self._fanout.deliver((event,))
            ids.append(event.id)
        return ids

    async def trim(self, before_ms: int) -> None:
        while self._log and self._log[0].key[0] < before_ms:
            self._trimmed_through = self._log.popleft().key

    async def _read_log(self, after_key: tuple[int, int], limit: int) -> list[Event]:
        if self._trimmed_through > after_key or (after_key != (0, 0) and after_key < self._origin):
            raise SubscriberLagged(f"the log no longer holds the events after {format_event_id(after_key)}")
        start = bisect.bisect_right(self._log, after_key, key=_key)
        return list(itertools.islice(self._log, start, start + limit))

    async def _first_key(self) -> tuple[int, int] | None:
        return self._log[0].key if self._log else None

    def _next_key(self) -> tuple[int, int]:
        """A Redis-like id: milliseconds, then a sequence that keeps ids strictly increasing."""
        ms = time.time_ns() // 1_000_000
        last_ms, last_seq = self._last_key
        self._last_key = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return self._last_key

    def _remember(self, key: str, event_id: str) -> None:
        self._appended[key] = event_id
        if len(self._appended) > self._dedupe_size:
            self._appended.popitem(last=False)
