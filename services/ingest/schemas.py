"""The tracker contract: what browsers post, and what ingest answers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

ShortText = Annotated[str, Meta(min_length=1, max_length=200)]
Url = Annotated[str, Meta(min_length=1, max_length=2048)]
PropertyKey = Annotated[str, Meta(min_length=1, max_length=200)]
PropertyValue = Annotated[str, Meta(max_length=1000)] | int | float | bool | None
AwareTimestamp = Annotated[datetime, Meta(tz=True, description="RFC 3339 with a UTC offset")]


# gc=False on the structs decoded by the thousand: a chunk may hold 50,000 rrweb events, and
# each struct tracked by the cyclic garbage collector made its collections run over them while
# they were built (a 50,000-event chunk decoded in 78 ms of CPU, 13 ms untracked:
# `python -m tools.loadtest.decode_costs`). Safe because none of them can be part of a reference
# cycle: their fields are scalars, a struct of scalars, or (TrackedEvent.properties) a dict of
# scalars.


class TrackedEvent(msgspec.Struct, rename="camel", gc=False):
    event: Annotated[ShortText, Meta(description="'pageview' for a page view; any other name is a custom event")]
    distinct_id: Annotated[ShortText, Meta(description="The visitor, kept by the tracker in localStorage")]
    session_id: Annotated[ShortText, Meta(description="The tracker starts a new one after 30 minutes idle")]
    timestamp: AwareTimestamp
    url: Url
    referrer: Annotated[str, Meta(max_length=2048)] | None = None
    title: Annotated[str, Meta(max_length=1000)] | None = None
    properties: Annotated[dict[PropertyKey, PropertyValue], Meta(max_length=50)] = {}
    uuid: Annotated[
        uuid.UUID | None, Meta(description="Client-made id: a retried batch with the same uuids is stored once")
    ] = None


class EventBatch(msgspec.Struct, rename="camel"):
    project_key: Annotated[str, Meta(min_length=1, max_length=200, description="The project's public key (pk_...)")]
    events: Annotated[list[TrackedEvent], Meta(min_length=1)]
    sent_at: (
        Annotated[datetime, Meta(tz=True, description="The client's clock when it sent the batch; corrects clock skew")]
        | None
    ) = None


class RrwebEventData(msgspec.Struct, frozen=True, gc=False):
    """The few fields of an rrweb event's data that ingest summarises; the rest is kept as sent."""

    source: int | None = None
    type: int | None = None
    href: str | None = None


class RrwebEvent(msgspec.Struct, gc=False):
    type: Annotated[int, Meta(ge=0, le=6, description="rrweb EventType: 2 full snapshot, 3 incremental, 4 meta")]
    timestamp: Annotated[int, Meta(ge=0, le=253_402_300_799_000, description="Epoch milliseconds")]
    data: RrwebEventData = RrwebEventData()


class ReplayChunkBody(msgspec.Struct, rename="camel"):
    project_key: Annotated[str, Meta(min_length=1, max_length=200, description="The project's public key (pk_...)")]
    # The replay API names a session in a URL path (/v1/sessions/{id}), where a "/" cannot be
    # told from a separator once the server has decoded the path: such a session could be
    # stored but never read.
    session_id: Annotated[
        str, Meta(min_length=1, max_length=200, pattern="^[^/]*$", description="Any text without '/'")
    ]
    distinct_id: ShortText
    seq: Annotated[int, Meta(ge=0, le=2_147_483_647, description="Chunk number within the session, from 0")]
    events: Annotated[list[RrwebEvent], Meta(min_length=1)]


class Accepted(msgspec.Struct):
    accepted: Annotated[int, Meta(description="Events (or rrweb events) now committed in Postgres")]
