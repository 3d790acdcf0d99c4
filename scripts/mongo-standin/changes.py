"""Change streams: an oplog of change events that every write of the stand-in appends
to, and tailable cursors over it, shaped as the MongoDB manual's "Change Events" (6.0).

What holds (scripts/mongo-fidelity checks each against any server):
- One event per document a write changed, in the order the writes were made; a write
  that changes nothing makes none. Each has `_id` (its resume token), `operationType`,
  `clusterTime`, `wallTime`, `ns` and, for document events, `documentKey`.
- `insert` and `replace` carry `fullDocument`; `update` carries `updateDescription`:
  `updatedFields` with dotted paths for changed fields of embedded documents and for
  changed or appended array elements, `removedFields`, and `truncatedArrays` for arrays
  that got shorter (as mongod's delta updates report them). `fullDocument:
  "updateLookup"` adds the document as it is when the event is read.
- `delete`, `drop`, `rename` (with `to`), `dropDatabase`. A collection's stream is
  invalidated by its drop or rename, a database's by `dropDatabase`; a stream reads
  nothing after its `invalidate`.
- `resumeAfter`, `startAfter` (also after an invalidate), `startAtOperationTime`; every
  batch carries `postBatchResumeToken`; a getMore waits up to its `maxTimeMS` for an
  event. A token older than what the oplog retains (SWITCHYARD_STANDIN_OPLOG_EVENTS
  events, 500,000 by default) fails with 286 ChangeStreamHistoryLost.
- `create`, `createIndexes`, `dropIndexes` and `modify` only with `showExpandedEvents`.

What does not: tokens are shaped like mongod's (`_data` is `82`, the type of a
timestamp, then 8 bytes that order tokens as their events are ordered) but carry the event
number in those bytes, not the cluster time, and nothing after them but `01` for an
invalidate; no `fullDocumentBeforeChange`; of the stages after `$changeStream`, only
`$match`; no transactions, so no `lsid`/`txnNumber` in events.
"""

import os
import time
from datetime import datetime, timezone

import bson
from bson.timestamp import Timestamp
from mongomock.filtering import filter_applies

from errors import (CHANGE_STREAM_HISTORY_LOST, COMMAND_NOT_SUPPORTED,
                    INVALID_RESUME_TOKEN, CommandError)

RETAINED = int(os.environ.get("SWITCHYARD_STANDIN_OPLOG_EVENTS", "500000"))
EXPANDED = {"create", "createIndexes", "dropIndexes", "modify"}


def token(number, invalidate=False):
    return {"_data": f"82{number:016X}" + ("01" if invalidate else "")}


def parse_token(value):
    """The event number a token stands after, and whether it is an invalidate's."""
    data = value.get("_data") if isinstance(value, dict) else None
    if not isinstance(data, str) or len(data) not in (18, 20) or not data.startswith("82"):
        raise CommandError(INVALID_RESUME_TOKEN, f"invalid resume token: {value!r}", "InvalidResumeToken")
    try:
        return int(data[2:18], 16), data[18:] == "01"
    except ValueError:
        raise CommandError(INVALID_RESUME_TOKEN, f"invalid resume token: {value!r}", "InvalidResumeToken") from None


def same(a, b):
    """Equal as BSON (1 and 1.0 are not)."""
    return bson.encode({"v": a}) == bson.encode({"v": b})


def in_order(old, new):
    """Whether `$set`s and `$unset`s of fields make `new` of `old`: the fields both have
    stand in the same order, before the fields only `new` has (a `$set` appends)."""
    kept = [field for field in old if field in new]
    return list(new)[:len(kept)] == kept


def describe_update(before, after):
    """The `updateDescription` of a document going from `before` to `after` (fields in
    the same order, see `in_order`)."""
    updated, removed, truncated = {}, [], []

    def documents(prefix, old, new):
        for field, value in new.items():
            path = prefix + field
            if field not in old:
                updated[path] = value
            elif not same(old[field], value):
                previous = old[field]
                if isinstance(previous, dict) and isinstance(value, dict) and in_order(previous, value):
                    documents(path + ".", previous, value)
                elif isinstance(previous, list) and isinstance(value, list):
                    arrays(path, previous, value)
                else:
                    updated[path] = value
        removed.extend(prefix + field for field in old if field not in new)

    def arrays(path, old, new):
        if len(new) < len(old):
            truncated.append({"field": path, "newSize": len(new)})
        for index, value in enumerate(new):
            if index >= len(old) or not same(old[index], value):
                updated[f"{path}.{index}"] = value

    documents("", before, after)
    return {"updatedFields": updated, "removedFields": removed, "truncatedArrays": truncated}


class Oplog:
    """Every change event, numbered from 1 in the order the writes were made."""

    def __init__(self, condition):
        self.events = []
        self.first = 1  # the number of events[0]
        self.last = 0  # the number of the newest event
        # Held (with the server's lock) by every command: appending notifies streams
        # waiting in a getMore.
        self.appended = condition

    def append(self, db, coll, operation, **fields):
        self.last += 1
        now = time.time()
        event = {
            "_id": token(self.last),
            "operationType": operation,
            "clusterTime": Timestamp(int(now), self.last % 2**32),
            "wallTime": datetime.fromtimestamp(now, timezone.utc),
            "ns": {"db": db} if coll is None else {"db": db, "coll": coll},
        }
        event.update(fields)
        self.events.append(event)
        if len(self.events) > RETAINED * 5 // 4:
            excess = len(self.events) - RETAINED
            del self.events[:excess]
            self.first += excess
        self.appended.notify_all()

    def document(self, db, coll, operation, key, **fields):
        self.append(db, coll, operation, documentKey={"_id": key}, **fields)

    def write(self, db, coll, before, after, replaced=False):
        """The event of one document's write (nothing when nothing changed)."""
        if before is None and after is not None:
            self.document(db, coll, "insert", after["_id"], fullDocument=after)
        elif after is None and before is not None:
            self.document(db, coll, "delete", before["_id"])
        elif before is not None and not same(before, after):
            # An update that reorders fields is logged whole, as a replacement.
            if replaced or not in_order(before, after):
                self.document(db, coll, "replace", after["_id"], fullDocument=after)
            else:
                self.document(db, coll, "update", after["_id"], updateDescription=describe_update(before, after))

    def history_lost(self, after):
        return after < self.first - 1

    def at_time(self, timestamp):
        """The number of the last event before `timestamp`."""
        after = self.first - 1
        for event in self.events:
            if event["clusterTime"] >= timestamp:
                return after
            after += 1
        return after


def history_lost():
    return CommandError(
        CHANGE_STREAM_HISTORY_LOST,
        "Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
        "ChangeStreamHistoryLost",
    )


class Stream:
    """One change stream cursor: where it stands in the oplog, and what it keeps."""

    def __init__(self, oplog, lookup, db, coll, options, stages):
        self.oplog, self.lookup = oplog, lookup
        self.db, self.coll = db, coll  # db None: the cluster; coll None: the database
        self.full_document = options.get("fullDocument", "default")
        if options.get("fullDocumentBeforeChange") in ("whenAvailable", "required"):
            raise CommandError(COMMAND_NOT_SUPPORTED, "fullDocumentBeforeChange is not supported by the test server", "CommandNotSupported")
        self.expanded = bool(options.get("showExpandedEvents"))
        self.matches = []
        for stage in stages:
            if set(stage) != {"$match"}:
                raise CommandError(COMMAND_NOT_SUPPORTED, f"the test server's change streams take $match stages only, not {next(iter(stage))}", "CommandNotSupported")
            self.matches.append(stage["$match"])
        self.closed = False
        if "resumeAfter" in options:
            self.after, invalidate = parse_token(options["resumeAfter"])
            if invalidate:
                raise CommandError(INVALID_RESUME_TOKEN, "cannot resume a stream after its invalidate event: use startAfter", "InvalidResumeToken")
        elif "startAfter" in options:
            self.after, _ = parse_token(options["startAfter"])
        elif "startAtOperationTime" in options:
            started = options["startAtOperationTime"]
            if self.oplog.first > 1 and self.oplog.events and started < self.oplog.events[0]["clusterTime"]:
                raise history_lost()
            self.after = self.oplog.at_time(started)
        else:
            self.after = self.oplog.last
        if self.oplog.history_lost(self.after):
            raise history_lost()
        self.resume_token = token(self.after)

    def namespace(self):
        if self.db is None:
            return "admin.$cmd.aggregate"
        return f"{self.db}.{self.coll}" if self.coll else f"{self.db}.$cmd.aggregate"

    def watches(self, event):
        if event["operationType"] in EXPANDED and not self.expanded:
            return False
        ns = event["ns"]
        if self.db is None:
            return True
        if ns["db"] != self.db:
            return False
        return self.coll is None or ns.get("coll") == self.coll

    def invalidated_by(self, event):
        if self.db is None:
            return False
        if self.coll is None:
            return event["operationType"] == "dropDatabase"
        return event["operationType"] in ("drop", "rename")

    def shaped(self, event):
        if event["operationType"] == "update" and self.full_document in ("updateLookup", "whenAvailable", "required"):
            event = dict(event, fullDocument=self.lookup(event["ns"], event["documentKey"]["_id"]))
        return event

    def kept(self, event):
        return all(filter_applies(match, event) for match in self.matches)

    def collect(self, size):
        """Up to `size` events after the stream's position, moving it past them."""
        if self.oplog.history_lost(self.after):
            raise history_lost()
        batch = []
        while not self.closed and len(batch) < size and self.after < self.oplog.last:
            self.after += 1
            event = self.oplog.events[self.after - self.oplog.first]
            self.resume_token = token(self.after)
            if not self.watches(event):
                continue
            event = self.shaped(event)
            if self.kept(event):
                batch.append(event)
            if self.invalidated_by(event):
                invalidate = {
                    "_id": token(self.after, invalidate=True),
                    "operationType": "invalidate",
                    "clusterTime": event["clusterTime"],
                    "wallTime": event["wallTime"],
                }
                if self.kept(invalidate):
                    batch.append(invalidate)
                self.resume_token = invalidate["_id"]
                self.closed = True
        return batch

    def next_batch(self, size, wait_seconds):
        """What `collect` finds, waiting up to `wait_seconds` for a first event."""
        deadline = time.monotonic() + wait_seconds
        while True:
            batch = self.collect(size)
            left = deadline - time.monotonic()
            if batch or self.closed or left <= 0:
                return batch
            self.oplog.appended.wait(left)
