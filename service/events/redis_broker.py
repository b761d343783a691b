"""The production broker: one Redis stream is the log, and each process follows it with one listener.

Live delivery reads the stream itself (XREAD BLOCK from the last id seen) rather than a PUBLISH channel.
Pub/sub is at-most-once: a listener that reconnects misses whatever was published meanwhile, and every
subscriber would then have to notice the hole and replay. A listener that follows the ordered log resumes
from its last id after an outage or reconnect, so it delivers every event once, in the log's order, with no
gap and no duplicate; appends need no second command. It costs one dedicated connection per process, as a
pub/sub subscription would, and never one per subscriber.

Entries hold `outbox`, `type`, `data` (JSON text), `topic` (absent for None) and `prev`, the id of the entry
appended before it: the trimmed log cannot say which ids it dropped, but a first replayed entry whose
`prev` lies above the requested id proves that events in between are gone (SubscriberLagged). The first
entry of a new stream (Redis restarted without its data, or the key was lost) has `prev` "*": nothing is
known before it, so a reader coming from an older id cannot tell what it missed and lags, too. Either way
the archive (the outbox table) serves what the stream lost.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from service import log, redis_client
from service.events.broker import (
    Archive,
    BrokerUnavailable,
    Envelope,
    Event,
    LogBroker,
    SubscriberLagged,
    encode_data,
    event_id_key,
    format_event_id,
    make_event,
    predecessor,
)

logger = log.get(__name__)

# Errors that mean "Redis cannot take this now": the caller retries later, nothing is lost.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
    redis_errors.OutOfMemoryError,
    redis_errors.ReadOnlyError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
)
# Envelopes per script call: one script blocks Redis while it runs, so keep each call short.
_APPEND_CHUNK = 100
_READ_COUNT = 1000
# The listener's socket waits this long beyond BLOCK before it declares the connection dead.
_READ_MARGIN = 3.0
_MAX_KEY = (2**64 - 1, 2**64 - 1)

# The `prev` of a stream's first entry: whatever came before it is unknown (see the module docstring).
_ORIGIN = "*"

# KEYS[1] is the stream. ARGV: MAXLEN, "~" or "=", then seven values per envelope: the ms and seq of its
# id, outbox id, type, has topic ("1"/"0"), topic, data JSON.
# Each envelope goes in under its own id while that is above the stream's newest. At or below it, the entry
# the stream holds under that id is this very envelope (an append whose answer was lost, repeated), or the
# stream went past an id it never held: then the envelope gets a new id from Redis, above the newest.
_APPEND_LUA = """
local prev = '*'
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  prev = last[1][1]
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  -- Emptied by trimming, not lost: it still knows the last id it gave.
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for j = 1, #info, 2 do
    if info[j] == 'last-generated-id' then prev = info[j + 1] end
  end
end
local function above(ms, seq, id)
  local id_ms, id_seq = string.match(id, '^(%d+)-(%d+)$')
  id_ms, id_seq = tonumber(id_ms), tonumber(id_seq)
  return ms > id_ms or (ms == id_ms and seq > id_seq)
end
local function holds(id, a)
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if #found == 0 then return false end
  local fields = {}
  local flat = found[1][2]
  for j = 1, #flat, 2 do fields[flat[j]] = flat[j + 1] end
  return fields['outbox'] == ARGV[a + 2] and fields['type'] == ARGV[a + 3] and fields['data'] == ARGV[a + 6]
end
local ids = {}
for i = 1, (#ARGV - 2) / 7 do
  local a = 3 + (i - 1) * 7
  local id = ARGV[a] .. '-' .. ARGV[a + 1]
  local fresh = prev == '*' or above(tonumber(ARGV[a]), tonumber(ARGV[a + 1]), prev)
  if fresh or not holds(id, a) then
    if not fresh then id = '*' end
    local fields = {'outbox', ARGV[a + 2], 'type', ARGV[a + 3], 'data', ARGV[a + 6], 'prev', prev}
    if ARGV[a + 4] == '1' then
      fields[#fields + 1] = 'topic'
      fields[#fields + 1] = ARGV[a + 5]
    end
    id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], ARGV[1], id, unpack(fields))
    prev = id
  end
  ids[i] = id
end
return ids
"""


def _decode(entry_id: bytes | str, fields: Mapping[Any, Any]) -> tuple[Event, tuple[int, int]]:
    """The Event and the key of the entry before it (bytes or str fields, as the client decodes).

    A stream's first entry continues only from exactly the id before its own.
    """
    values = {redis_client.text(name): redis_client.text(value) for name, value in fields.items()}
    topic = values.get("topic")
    event = make_event(redis_client.text(entry_id), values["type"], topic, values["data"])
    prev = values.get("prev", "0-0")
    return event, predecessor(event.key) if prev == _ORIGIN else event_id_key(prev)


class RedisBroker(LogBroker):
    """Events in one Redis stream shared by every process; one listener task per process."""

    def __init__(
        self,
        client: Redis,
        *,
        stream_key: str = "sb:events",
        maxlen: int = 100_000,
        approximate: bool = True,
        block_ms: int = 2000,
        retry_delay: float = 0.1,
        max_retry_delay: float = 5.0,
        listener_name: str | None = None,
        archive: Archive | None = None,
    ) -> None:
        self._redis = client
        self._key = stream_key
        self._maxlen = maxlen
        # "~" trims whole stream nodes (cheap, keeps a little more than maxlen); "=" trims exactly.
        self._trim = "~" if approximate else "="
        self._block_ms = block_ms
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._listener_name = listener_name or f"switchboard-events-{os.getpid()}"
        self._append_script = client.register_script(_APPEND_LUA)
        super().__init__(archive)
        self._connection: AbstractConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._cursor: str | None = None
        self._down = False
        self._stopping = False

    async def start(self) -> None:
        """Start this process's listener at the stream's current end (older events are not broadcast).

        Redis being down does not fail the start: the listener starts from the end it finds on connecting.
        """
        if self._task is not None:
            return
        self._stopping = False
        try:
            self._cursor = await self._tail_id()
        except _UNREACHABLE as exc:
            self._note_down(exc)
        self._task = asyncio.create_task(self._listen(), name=f"event-listener:{self._key}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            # The flag too: on Python 3.11 redis-py's wait_for can swallow a cancellation, and the loop
            # would then go on reading; with the flag it ends after the current read at the latest.
            self._stopping = True
            task.cancel()
            await asyncio.wait({task})
        if self._connection is not None:
            await self._connection.disconnect(nowait=True)

    async def append(self, envelopes: Sequence[Envelope]) -> list[str]:
        """Append each envelope under its key (see `Broker.append`), in scripts of a bounded size.

        Raises:
            BrokerUnavailable: Redis cannot be reached. Earlier chunks of a large batch may be in the log
                already; appending the batch again finds them there.
        """
        encoded = [encode_data(envelope.type, envelope.data) for envelope in envelopes]
        ids: list[str] = []
        for start in range(0, len(envelopes), _APPEND_CHUNK):
            end = start + _APPEND_CHUNK
            ids.extend(await self._append_chunk(envelopes[start:end], encoded[start:end]))
        return ids

    async def trim(self, before_ms: int) -> None:
        """XTRIM MINID: entries older than `before_ms` go (approximately, as the length cap does)."""
        try:
            await self._redis.xtrim(self._key, minid=f"{before_ms}-0", approximate=self._trim == "~")
        except _UNREACHABLE as exc:
            raise BrokerUnavailable(f"cannot trim the event stream: {exc}") from exc

    async def _read_log(self, after_key: tuple[int, int], limit: int) -> list[Event]:
        if after_key == _MAX_KEY:
            return []
        try:
            entries = await self._redis.xrange(
                self._key, min=f"({format_event_id(after_key)}", max="+", count=limit
            )
        except _UNREACHABLE as exc:
            raise BrokerUnavailable(f"cannot read the event stream: {exc}") from exc
        events: list[Event] = []
        for entry_id, fields in entries or ():
            if entry_id is None or fields is None:
                continue
            event, prev = _decode(entry_id, fields)
            # "0" asks for whatever the log holds from its start: only trimming can lag it.
            if not events and prev > after_key and (after_key != (0, 0) or prev != predecessor(event.key)):
                raise SubscriberLagged(
                    f"the log no longer holds the events after {format_event_id(after_key)}"
                )
            events.append(event)
        if not events and after_key != (0, 0) and await self._first_key() is None:
            # An empty stream (lost with Redis and not yet written again, or trimmed empty) cannot say
            # whether anything came after `after`.
            raise SubscriberLagged(f"the log holds nothing to continue {format_event_id(after_key)} from")
        return events

    async def _first_key(self) -> tuple[int, int] | None:
        try:
            first = await self._redis.xrange(self._key, min="-", max="+", count=1)
        except _UNREACHABLE as exc:
            raise BrokerUnavailable(f"cannot read the event stream: {exc}") from exc
        entry_id = first[0][0] if first else None
        return None if entry_id is None else event_id_key(redis_client.text(entry_id))

    async def _append_chunk(self, envelopes: Sequence[Envelope], encoded: Sequence[str]) -> list[str]:
        args: list[str | int] = [self._maxlen, self._trim]
        for envelope, data_json in zip(envelopes, encoded, strict=True):
            has_topic = envelope.topic is not None
            args += [*envelope.key, envelope.outbox_id, envelope.type, int(has_topic), envelope.topic or ""]
            args.append(data_json)
        try:
            reply = await self._append_script(keys=[self._key], args=args)
        except _UNREACHABLE as exc:
            raise BrokerUnavailable(f"cannot append to the event stream: {exc}") from exc
        return [redis_client.text(item) for item in reply]

    async def _tail_id(self) -> str:
        last = await self._redis.xrevrange(self._key, count=1)
        entry_id = last[0][0] if last else None
        return "0-0" if entry_id is None else redis_client.text(entry_id)

    async def _listen(self) -> None:
        """Follow the stream from the cursor forever, riding out outages with a growing delay."""
        delay = self._retry_delay
        while not self._stopping:
            try:
                if self._cursor is None:
                    self._cursor = await self._tail_id()
                entries = await self._read()
            except _UNREACHABLE as exc:
                self._note_down(exc)
            except Exception:
                logger.exception("event_listener_failed", stream=self._key)
            else:
                self._note_up()
                self._deliver(entries)
                delay = self._retry_delay
                continue
            if self._connection is not None:
                await self._connection.disconnect(nowait=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_retry_delay)

    async def _read(self) -> list[Any]:
        """Entries after the cursor, waiting up to BLOCK for the first, on the listener's own connection."""
        assert self._cursor is not None
        connection = self._listener_connection()
        await connection.send_command(
            "XREAD", "COUNT", _READ_COUNT, "BLOCK", self._block_ms, "STREAMS", self._key, self._cursor
        )
        reply = await connection.read_response(disable_decoding=True)
        if not reply:
            return []
        # RESP2 answers [[key, entries]], RESP3 {key: entries}.
        per_stream = reply.values() if isinstance(reply, dict) else [item[1] for item in reply]
        return [entry for entries in per_stream for entry in entries]

    def _listener_connection(self) -> AbstractConnection:
        """A connection of its own, configured like the shared client's: BLOCK holds it between events."""
        if self._connection is None:
            pool = self._redis.connection_pool
            options = dict(pool.connection_kwargs)
            options["socket_timeout"] = self._block_ms / 1000 + _READ_MARGIN
            options["client_name"] = self._listener_name
            self._connection = pool.connection_class(**options)
        return self._connection

    def _deliver(self, entries: list[Any]) -> None:
        events: list[Event] = []
        for index, (entry_id, flat) in enumerate(entries):
            # The cursor moves past every entry, even one we cannot decode, so a bad entry cannot wedge us.
            previous, self._cursor = self._cursor, redis_client.text(entry_id)
            try:
                event, prev = _decode(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))
            except (KeyError, ValueError, TypeError):
                logger.exception("event_undecodable", stream=self._key, event_id=self._cursor)
                continue
            # A cursor of "0-0" found the stream empty: nothing came before that it could have missed.
            if index == 0 and previous not in (None, "0-0") and prev > event_id_key(previous):
                self._note_gap(previous)
            events.append(event)
        self._fanout.deliver(events)

    def _note_gap(self, cursor: str) -> None:
        """The stream was trimmed past this listener's cursor (it was away that long)."""
        logger.warning("event_listener_gap", stream=self._key, after=cursor)
        self._fanout.lose_after(event_id_key(cursor))

    def _note_down(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            logger.warning("event_listener_unavailable", stream=self._key, error=str(exc))

    def _note_up(self) -> None:
        if self._down:
            self._down = False
            logger.info("event_listener_recovered", stream=self._key, cursor=self._cursor)
