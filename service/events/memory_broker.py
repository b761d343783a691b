"""The embedded broker: one process, a ring buffer plays the stream. Run a single worker with it."""

from __future__ import annotations

import bisect
import itertools
import time
from collections import deque
from collections.abc import Sequence
from operator import attrgetter

from service.events.broker import (
    Archive,
    Envelope,
    Event,
    LogBroker,
    SubscriberLagged,
    encode_data,
    following,
    format_event_id,
    make_event,
    predecessor,
)

_key = attrgetter("key")


class MemoryBroker(LogBroker):
    """Events in a bounded in-process log, delivered to subscribers as they are appended."""

    def __init__(self, *, maxlen: int = 100_000, archive: Archive | None = None) -> None:
        self._log: deque[Event] = deque(maxlen=maxlen)
        # The newest id the ring has dropped: a replay from below it would have a hole.
        self._trimmed_through: tuple[int, int] = (0, 0)
        # Ids below this are an earlier process's (ids are times): this ring never held them.
        self._origin = predecessor((time.time_ns() // 1_000_000, 0))
        self._last_key: tuple[int, int] = (0, 0)
        super().__init__(archive)

    async def start(self) -> None:
        """Nothing to start: appends deliver directly."""

    async def close(self) -> None:
        """Nothing to release."""

    async def append(self, envelopes: Sequence[Envelope]) -> list[str]:
        """Append each envelope under its key and deliver it to this process's subscribers (see
        `Broker.append` for an id the ring has gone past)."""
        # Encode everything first, so a bad envelope appends nothing of its batch.
        encoded = [encode_data(envelope.type, envelope.data) for envelope in envelopes]
        ids: list[str] = []
        for envelope, data_json in zip(envelopes, encoded, strict=True):
            event = make_event(format_event_id(envelope.key), envelope.type, envelope.topic, data_json)
            if envelope.key <= self._last_key:
                if self._holds(event):
                    ids.append(event.id)
                    continue
                key = following(self._last_key, time.time_ns() // 1_000_000)
                event = make_event(format_event_id(key), envelope.type, envelope.topic, data_json)
            self._last_key = event.key
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

    def _holds(self, event: Event) -> bool:
        """Whether the ring holds this very event (same id, type and data) already."""
        at = bisect.bisect_left(self._log, event.key, key=_key)
        return at < len(self._log) and self._log[at].frame == event.frame
