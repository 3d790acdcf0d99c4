"""A MongoDB-wire test server: mockupdb takes connections, mongomock gives the semantics.

No real mongod installs on the machines the tests run on (see the README, "MongoDB test
server"). This is the most faithful stand-in the package registries allow: mongomock
implements MongoDB's query, update (incl. pipeline updates) and aggregation semantics,
and this front hands it each command the Rust driver sends. What mongomock lacks, the
front adds: change streams over an oplog that every write appends to (changes.py), and
validators enforced on every write (validation.py). It answers `hello` as the primary of
a one-member replica set, since change streams are what a replica set gives; it has no
transactions (`startTransaction` is refused, and `hello` offers no sessions), and the tests that need them skip
themselves, naming the reason. `scripts/mongo-fidelity` prints what holds.

Usage: python server.py PORT
"""

import itertools
import sys
import threading
import traceback
from collections import OrderedDict
from datetime import datetime, timezone
from uuid import uuid4

import bson
import mockupdb
import mongomock
from mongomock import helpers
from mongomock.aggregate import process_pipeline
from mongomock.filtering import filter_applies
from pymongo import errors as pymongo_errors

import lookups
import validation
from changes import Oplog, Stream
from errors import DOCUMENT_VALIDATION_FAILURE, CommandError

BATCH = 101
REPLICA_SET = "standin"
client = mongomock.MongoClient()
lock = threading.RLock()
cursors = {}
# Change stream cursors, by the same ids as `cursors`.
streams = {}
cursor_ids = itertools.count(1)
oplog = Oplog(threading.Condition(lock))
# Collection options mongomock cannot hold (validators), by (db, collection).
options = {}
# Each collection's UUID (listCollections' `info.uuid`), kept through renames.
uuids = {}
# host:port, set by main.
address = None


def hello(_db, _cmd):
    return {
        "ismaster": True,
        "isWritablePrimary": True,
        "secondary": False,
        "setName": REPLICA_SET,
        "setVersion": 1,
        "hosts": [address],
        "primary": address,
        "me": address,
        "helloOk": True,
        "maxBsonObjectSize": 16 * 1024 * 1024,
        "maxMessageSizeBytes": 48000000,
        "maxWriteBatchSize": 100000,
        "localTime": datetime.now(timezone.utc),
        "minWireVersion": 0,
        "maxWireVersion": 17,
        "readOnly": False,
    }


def build_info(_db, _cmd):
    return {"version": "6.0.0-mongomock", "versionArray": [6, 0, 0, 0], "gitVersion": "mongomock"}


def cursor_reply(db, name, documents, batch_size):
    documents = list(documents)
    size = BATCH if batch_size is None else batch_size
    first, rest = documents[:size], documents[size:]
    cursor_id = 0
    if rest:
        cursor_id = next(cursor_ids)
        cursors[cursor_id] = (db, name, rest)
    return {"cursor": {"id": bson.int64.Int64(cursor_id), "ns": f"{db}.{name}", "firstBatch": first}}


def find(db, cmd):
    name = cmd["find"]
    collection = client[db][name]
    cursor = collection.find(cmd.get("filter") or {}, projection=cmd.get("projection"))
    if cmd.get("sort"):
        cursor = cursor.sort(list(cmd["sort"].items()))
    if cmd.get("skip"):
        cursor = cursor.skip(cmd["skip"])
    if cmd.get("limit"):
        cursor = cursor.limit(abs(cmd["limit"]))
    reply = cursor_reply(db, name, cursor, cmd.get("batchSize"))
    if cmd.get("singleBatch"):
        reply["cursor"]["id"] = bson.int64.Int64(0)
    return reply


def get_more(db, cmd):
    cursor_id = int(cmd["getMore"])
    if cursor_id in streams:
        return stream_get_more(cursor_id, cmd)
    if cursor_id not in cursors:
        raise CommandError(43, f"cursor id {cursor_id} not found", "CursorNotFound")
    cdb, name, rest = cursors.pop(cursor_id)
    size = cmd.get("batchSize") or BATCH
    batch, rest = rest[:size], rest[size:]
    if rest:
        cursors[cursor_id] = (cdb, name, rest)
    else:
        cursor_id = 0
    return {"cursor": {"id": bson.int64.Int64(cursor_id), "ns": f"{cdb}.{name}", "nextBatch": batch}}


def kill_cursors(_db, cmd):
    for cursor_id in cmd.get("cursors", []):
        cursors.pop(int(cursor_id), None)
        streams.pop(int(cursor_id), None)
    return {"cursorsKilled": cmd.get("cursors", [])}


def aggregate(db, cmd):
    name = cmd["aggregate"]
    pipeline = cmd.get("pipeline", [])
    if pipeline and "$changeStream" in pipeline[0]:
        return watch(db, cmd)
    if pipeline and "$out" in pipeline[-1]:
        raise CommandError(115, "$out is not supported by the test server", "CommandNotSupported")
    # Leading $match/$sort/$skip/$limit run as a find (the same semantics, without
    # mongomock's copy of the whole collection per aggregation); the rest as a pipeline.
    query, sort, skip, limit, rest = {}, None, 0, 0, list(pipeline)
    while rest and next(iter(rest[0])) in ("$match", "$sort", "$skip", "$limit"):
        stage, value = next(iter(rest[0].items()))
        if stage == "$match" and (sort or skip or limit or query):
            break
        rest.pop(0)
        if stage == "$match":
            query = value
        elif stage == "$sort":
            sort = list(value.items())
        elif stage == "$skip":
            skip = value
        else:
            limit = value if not limit else min(limit, value)
    cursor = client[db][name].find(query)
    if sort:
        cursor = cursor.sort(sort)
    if skip:
        cursor = cursor.skip(skip)
    if limit:
        cursor = cursor.limit(limit)
    rest = [unset_as_project(stage) for stage in rest]
    documents = process_pipeline(list(cursor), client[db], rest, None) if rest else cursor
    return cursor_reply(db, name, documents, (cmd.get("cursor") or {}).get("batchSize"))


def lookup(ns, key):
    return client[ns["db"]][ns["coll"]].find_one({"_id": key})


def watch(db, cmd):
    """An aggregate whose first stage is `$changeStream`: a tailable cursor over the
    oplog (changes.py), on a collection, a database (`aggregate: 1`) or, from `admin`
    with `allChangesForCluster`, every database."""
    stage, *rest = cmd["pipeline"]
    settings = stage["$changeStream"] or {}
    if db == "admin" and settings.get("allChangesForCluster"):
        where = (None, None)
    else:
        where = (db, None if cmd["aggregate"] == 1 else cmd["aggregate"])
    stream = Stream(oplog, lookup, *where, settings, rest)
    size = (cmd.get("cursor") or {}).get("batchSize")
    batch = stream.collect(BATCH if size is None else size)
    cursor_id = 0 if stream.closed else next(cursor_ids)
    if cursor_id:
        streams[cursor_id] = stream
    return {"cursor": {"id": bson.int64.Int64(cursor_id), "ns": stream.namespace(), "firstBatch": batch, "postBatchResumeToken": stream.resume_token}}


def stream_get_more(cursor_id, cmd):
    stream = streams[cursor_id]
    wait = cmd.get("maxTimeMS", 1000) / 1000
    batch = stream.next_batch(cmd.get("batchSize") or BATCH, wait)
    if stream.closed:
        streams.pop(cursor_id, None)
    reply_id = 0 if stream.closed else cursor_id
    return {"cursor": {"id": bson.int64.Int64(reply_id), "ns": stream.namespace(), "nextBatch": batch, "postBatchResumeToken": stream.resume_token}}


def unset_as_project(stage):
    """`{$unset: f}` is `{$project: {f: 0}}` (mongomock has no `$unset` stage)."""
    if "$unset" not in stage:
        return stage
    fields = stage["$unset"]
    fields = [fields] if isinstance(fields, str) else fields
    return {"$project": {field: 0 for field in fields}}


def count(db, cmd):
    return {"n": client[db][cmd["count"]].count_documents(cmd.get("query") or {})}


def write_error(index, err):
    code = getattr(err, "code", None) or 2
    return {"index": index, "code": code, "errmsg": str(err)}


def validation_error(db, name):
    return CommandError(DOCUMENT_VALIDATION_FAILURE, f"Document failed validation (collection {db}.{name})", "DocumentValidationFailure")


def insert(db, cmd):
    name = cmd["insert"]
    collection = client[db][name]
    n, errors = 0, []
    for index, document in enumerate(cmd.get("documents", [])):
        try:
            if validation.refuses(options.get((db, name)), None, document):
                raise validation_error(db, name)
            collection.insert_one(document)
            oplog.write(db, name, None, document)
            n += 1
        except (pymongo_errors.PyMongoError, CommandError) as err:
            errors.append(write_error(index, err))
            if cmd.get("ordered", True):
                break
    reply = {"n": n}
    if errors:
        reply["writeErrors"] = errors
    return reply


def is_replacement(update):
    return isinstance(update, dict) and not any(k.startswith("$") for k in update)


def by_id(collection, document):
    return collection.find_one({"_id": document["_id"]})


def record_writes(db, name, writes, replaced):
    """Checks each (before, after) of one write against the collection's validator; all
    of them refused when one is (the documents put back), else each made an event."""
    collection = client[db][name]
    if any(after is not None and validation.refuses(options.get((db, name)), before, after) for before, after in writes):
        for before, after in writes:
            if before is None:
                collection.delete_one({"_id": after["_id"]})
            else:
                collection.replace_one({"_id": before["_id"]}, before)
        raise validation_error(db, name)
    for before, after in writes:
        oplog.write(db, name, before, after, replaced=replaced)


def update_one_spec(db, name, spec):
    """Applies one statement of an update command; returns its result."""
    collection = client[db][name]
    query, change = spec.get("q") or {}, spec["u"]
    if isinstance(query.get("_id"), dict):
        # mongomock's shortcut for a top-level `_id` condition fails on `$in`
        query = {"$and": [query]}
    upsert, multi = spec.get("upsert", False), spec.get("multi", False)
    replaced = is_replacement(change)
    matched = collection.find(query)
    before = list(matched if multi and not replaced else matched.limit(1))
    if replaced:
        result = collection.replace_one(query, change, upsert=upsert)
    elif multi:
        result = collection.update_many(query, change, upsert=upsert, array_filters=spec.get("arrayFilters"))
    else:
        result = collection.update_one(query, change, upsert=upsert, array_filters=spec.get("arrayFilters"))
    writes = [(document, by_id(collection, document)) for document in before]
    if result.upserted_id is not None:
        writes.append((None, collection.find_one({"_id": result.upserted_id})))
    record_writes(db, name, writes, replaced)
    return result


def update(db, cmd):
    name = cmd["update"]
    n, modified, upserted, errors = 0, 0, [], []
    for index, spec in enumerate(cmd.get("updates", [])):
        try:
            result = update_one_spec(db, name, spec)
        except (pymongo_errors.PyMongoError, CommandError) as err:
            errors.append(write_error(index, err))
            if cmd.get("ordered", True):
                break
            continue
        if result.upserted_id is not None:
            n += 1
            upserted.append({"index": index, "_id": result.upserted_id})
        else:
            n += result.matched_count
            modified += result.modified_count
    reply = {"n": n, "nModified": modified}
    if upserted:
        reply["upserted"] = upserted
    if errors:
        reply["writeErrors"] = errors
    return reply


def delete(db, cmd):
    name = cmd["delete"]
    collection = client[db][name]
    n = 0
    for spec in cmd.get("deletes", []):
        matched = collection.find(spec.get("q") or {}, projection={"_id": 1})
        for document in list(matched.limit(1) if spec.get("limit", 0) == 1 else matched):
            n += collection.delete_one({"_id": document["_id"]}).deleted_count
            oplog.write(db, name, document, None)
    return {"n": n}


def find_and_modify(db, cmd):
    name = cmd["findAndModify"]
    collection = client[db][name]
    query = cmd.get("query") or {}
    sort = list(cmd["sort"].items()) if cmd.get("sort") else None
    before = collection.find_one(query, sort=sort)
    replaced = False
    try:
        if cmd.get("remove"):
            after = None
            if before is not None:
                collection.delete_one({"_id": before["_id"]})
        else:
            replaced = is_replacement(cmd["update"])
            modify = collection.find_one_and_replace if replaced else collection.find_one_and_update
            after = modify(query, cmd["update"], sort=sort, upsert=cmd.get("upsert", False), return_document=True)
    except pymongo_errors.DuplicateKeyError as err:
        raise CommandError(11000, str(err), "DuplicateKey") from err
    if before is not None or after is not None:
        record_writes(db, name, [(before, after)], replaced)
    value = after if cmd.get("new", False) else before
    return {"value": value, "lastErrorObject": {"n": 0 if before is None and after is None else 1}}


def collection_names(db):
    return client[db].list_collection_names()


def create(db, cmd):
    name = cmd["create"]
    if name in collection_names(db):
        raise CommandError(48, f"Collection {db}.{name} already exists.", "NamespaceExists")
    client[db].create_collection(name)
    kept = {k: v for k, v in cmd.items() if k not in ("create", "$db", "lsid", "$readPreference")}
    options[(db, name)] = kept
    oplog.append(db, name, "create", operationDescription=kept)
    return {}


def coll_mod(db, cmd):
    name = cmd["collMod"]
    if name not in collection_names(db):
        raise CommandError(26, f"ns does not exist: {db}.{name}", "NamespaceNotFound")
    kept = options.setdefault((db, name), {})
    for key in ("validator", "validationLevel", "validationAction"):
        if key in cmd:
            kept[key] = cmd[key]
    oplog.append(db, name, "modify", operationDescription={k: v for k, v in kept.items()})
    return {}


def list_collections(db, cmd):
    wanted = cmd.get("filter") or {}
    entries = []
    for name in sorted(collection_names(db)):
        uuid = uuids.setdefault((db, name), bson.Binary(uuid4().bytes, 4))
        entries.append({"name": name, "type": "collection",
                        "options": options.get((db, name), {}), "info": {"readOnly": False, "uuid": uuid}})
    entries = [entry for entry in entries if filter_applies(wanted, entry)]
    if cmd.get("nameOnly"):
        entries = [{"name": e["name"], "type": "collection"} for e in entries]
    return cursor_reply(db, "$cmd.listCollections", entries, None)


def drop(db, cmd):
    name = cmd["drop"]
    if name not in collection_names(db):
        raise CommandError(26, "ns not found", "NamespaceNotFound")
    client[db].drop_collection(name)
    options.pop((db, name), None)
    uuids.pop((db, name), None)
    oplog.append(db, name, "drop")
    return {"ns": f"{db}.{name}"}


def drop_database(db, _cmd):
    names = collection_names(db)
    client.drop_database(db)
    for kept in (options, uuids):
        for key in [k for k in kept if k[0] == db]:
            kept.pop(key)
    for name in names:
        oplog.append(db, name, "drop")
    oplog.append(db, None, "dropDatabase")
    return {"dropped": db}


def list_databases(_db, cmd):
    names = client.list_database_names()
    if cmd.get("nameOnly"):
        return {"databases": [{"name": n} for n in names]}
    return {"databases": [{"name": n, "sizeOnDisk": 0, "empty": False} for n in names], "totalSize": 0}


def create_indexes(db, cmd):
    collection = client[db][cmd["createIndexes"]]
    if cmd["createIndexes"] not in collection_names(db):
        client[db].create_collection(cmd["createIndexes"])
    before = len(list(collection.list_indexes()))
    for spec in cmd.get("indexes", []):
        kwargs = {k: v for k, v in spec.items() if k in ("name", "unique", "sparse", "expireAfterSeconds", "partialFilterExpression")}
        existing = {i["name"]: i for i in collection.list_indexes()}
        if spec["name"] in existing and dict(existing[spec["name"]]["key"]) != dict(spec["key"]):
            raise CommandError(86, f"An index with name {spec['name']} already exists with a different key", "IndexKeySpecsConflict")
        try:
            collection.create_index(list(spec["key"].items()), **kwargs)
        except pymongo_errors.DuplicateKeyError as err:
            raise CommandError(11000, f"E11000 duplicate key error collection: {db}.{cmd['createIndexes']} index: {spec['name']}", "DuplicateKey") from err
        oplog.append(db, cmd["createIndexes"], "createIndexes", operationDescription={"indexes": [spec]})
    return {"numIndexesBefore": before, "numIndexesAfter": len(list(collection.list_indexes())), "createdCollectionAutomatically": False}


def list_indexes(db, cmd):
    name = cmd["listIndexes"]
    if name not in collection_names(db):
        raise CommandError(26, f"ns does not exist: {db}.{name}", "NamespaceNotFound")
    indexes = [dict(i, key=OrderedDict(i["key"])) for i in client[db][name].list_indexes()]
    return cursor_reply(db, name, indexes, None)


def drop_indexes(db, cmd):
    collection = client[db][cmd["dropIndexes"]]
    index = cmd["index"]
    if index == "*":
        collection.drop_indexes()
        oplog.append(db, cmd["dropIndexes"], "dropIndexes", operationDescription={"indexes": "*"})
        return {}
    if not isinstance(index, str):
        index = helpers.gen_index_name(list(index.items()))
    if index not in {i["name"] for i in collection.list_indexes()}:
        raise CommandError(27, f"index not found with name [{index}]", "IndexNotFound")
    collection.drop_index(index)
    oplog.append(db, cmd["dropIndexes"], "dropIndexes", operationDescription={"indexes": [index]})
    return {}


def rename_collection(_db, cmd):
    source_db, source = cmd["renameCollection"].split(".", 1)
    target_db, target = cmd["to"].split(".", 1)
    if source_db != target_db:
        raise CommandError(20, "renames across databases are not supported by the test server", "IllegalOperation")
    if source not in collection_names(source_db):
        raise CommandError(26, "source namespace does not exist", "NamespaceNotFound")
    if target in collection_names(source_db):
        if not cmd.get("dropTarget"):
            raise CommandError(48, "target namespace exists", "NamespaceExists")
        client[source_db].drop_collection(target)
        options.pop((source_db, target), None)
        uuids.pop((source_db, target), None)
    client[source_db][source].rename(target)
    for kept in (options, uuids):
        if (source_db, source) in kept:
            kept[(source_db, target)] = kept.pop((source_db, source))
    oplog.append(source_db, source, "rename", to={"db": target_db, "coll": target})
    return {}


def nothing(_db, _cmd):
    return {}


COMMANDS = {
    "hello": hello, "ismaster": hello, "isMaster": hello, "buildinfo": build_info,
    "buildInfo": build_info, "ping": nothing, "endSessions": nothing, "find": find,
    "getMore": get_more, "killCursors": kill_cursors, "aggregate": aggregate,
    "count": count, "insert": insert, "update": update, "delete": delete,
    "findAndModify": find_and_modify, "findandmodify": find_and_modify, "create": create,
    "collMod": coll_mod, "listCollections": list_collections, "drop": drop,
    "dropDatabase": drop_database, "listDatabases": list_databases,
    "createIndexes": create_indexes, "listIndexes": list_indexes,
    "dropIndexes": drop_indexes, "deleteIndexes": drop_indexes,
    "renameCollection": rename_collection,
}


def handle(request):
    name = request.command_name
    if request.doc.get("startTransaction"):
        return request.command_err(20, "the test server has no transactions", codeName="IllegalOperation")
    command = COMMANDS.get(name)
    if command is None:
        return request.command_err(59, f"no such command: '{name}' (the test server implements {len(COMMANDS)} commands)", codeName="CommandNotFound")
    try:
        if command in (hello, build_info, nothing):
            reply = command(request.namespace, request.doc)  # never behind a long command
        else:
            with lock:
                reply = command(request.namespace, request.doc)
    except CommandError as err:
        return request.command_err(err.code, err.message, codeName=err.name or "Error")
    except NotImplementedError as err:
        return request.command_err(115, f"not supported by the test server: {err}", codeName="CommandNotSupported")
    except pymongo_errors.OperationFailure as err:
        return request.command_err(err.code or 2, str(err), codeName="BadValue")
    except Exception as err:  # a bug here must reach the client, not hang it
        traceback.print_exc()
        return request.command_err(1, f"test server error: {err!r}", codeName="InternalError")
    return request.ok(reply)


def main():
    lookups.install()
    port = int(sys.argv[1])
    server = mockupdb.MockupDB(port=port, request_timeout=int(1e6))
    server._address = ("127.0.0.1", port)
    global address
    address = f"127.0.0.1:{port}"
    server.autoresponds(handle)
    server.run()
    print(f"mongo stand-in listening on 127.0.0.1:{port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
