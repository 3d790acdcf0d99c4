"""Collection validators, enforced as mongod enforces them (mongomock keeps none).

A validator is a query (mongomock's matcher decides it, `$expr` included) and may hold
a `$jsonSchema`, of which these keywords are checked: `bsonType`, `type`, `required`,
`properties`, `additionalProperties` (true/false), `enum`, `minimum`, `maximum`,
`minLength`, `maxLength`, `items` (one schema), `minItems`, `maxItems`. Other keywords
are ignored (the document passes them). `validationLevel` "off" and `validationAction`
"warn" enforce nothing; "moderate" leaves updates of documents that were already
invalid alone, as mongod does.
"""

import datetime

import bson
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.regex import Regex
from mongomock.filtering import filter_applies


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, (bool, Int64))


def _is_long(value):
    return isinstance(value, Int64)


BSON_TYPES = {
    "double": lambda v: isinstance(v, float),
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "binData": lambda v: isinstance(v, (bytes, bson.binary.Binary)),
    "objectId": lambda v: isinstance(v, ObjectId),
    "bool": lambda v: isinstance(v, bool),
    "date": lambda v: isinstance(v, datetime.datetime),
    "null": lambda v: v is None,
    "regex": lambda v: isinstance(v, Regex),
    # mongomock stores a 32-bit integer as a Python int, a 64-bit one as Int64 only
    # when the client sent one; a large Python int is a long on the wire.
    "int": lambda v: _is_int(v) and -(2**31) <= v < 2**31,
    "long": lambda v: _is_long(v) or (_is_int(v) and not -(2**31) <= v < 2**31),
    "decimal": lambda v: isinstance(v, Decimal128),
    "timestamp": lambda v: isinstance(v, bson.timestamp.Timestamp),
}
BSON_TYPES["number"] = lambda v: any(BSON_TYPES[t](v) for t in ("double", "int", "long", "decimal"))
# JSON Schema's own `type` names.
JSON_TYPES = {
    "object": BSON_TYPES["object"],
    "array": BSON_TYPES["array"],
    "string": BSON_TYPES["string"],
    "boolean": BSON_TYPES["bool"],
    "null": BSON_TYPES["null"],
    "number": BSON_TYPES["number"],
}


def _of_type(value, names, table):
    names = [names] if isinstance(names, str) else names
    return any(table.get(name, lambda _v: True)(value) for name in names)


def schema_holds(schema, value):
    """Whether `value` meets the `$jsonSchema` keywords the module doc lists."""
    if "bsonType" in schema and not _of_type(value, schema["bsonType"], BSON_TYPES):
        return False
    if "type" in schema and not _of_type(value, schema["type"], JSON_TYPES):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    numeric = BSON_TYPES["number"](value)
    if numeric and "minimum" in schema and value < schema["minimum"]:
        return False
    if numeric and "maximum" in schema and value > schema["maximum"]:
        return False
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            return False
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            return False
        items = schema.get("items")
        if isinstance(items, dict) and not all(schema_holds(items, item) for item in value):
            return False
    if isinstance(value, dict):
        if any(field not in value for field in schema.get("required", [])):
            return False
        properties = schema.get("properties", {})
        for field, sub in properties.items():
            if field in value and not schema_holds(sub, value[field]):
                return False
        if schema.get("additionalProperties") is False and any(f not in properties for f in value):
            return False
    return True


def holds(validator, document):
    """Whether `document` passes `validator` (a query, possibly with `$jsonSchema`)."""
    query = dict(validator)
    schema = query.pop("$jsonSchema", None)
    if schema is not None and not schema_holds(schema, document):
        return False
    return not query or filter_applies(query, document)


def enforced(options):
    """The validator a collection's options make mongod enforce, or None."""
    validator = (options or {}).get("validator")
    if not validator:
        return None
    if options.get("validationLevel") == "off" or options.get("validationAction") == "warn":
        return None
    return validator


def refuses(options, before, after):
    """Whether the collection refuses a write that makes `after` of `before` (None for an
    insert)."""
    validator = enforced(options)
    if validator is None:
        return False
    if before is not None and options.get("validationLevel") == "moderate" and not holds(validator, before):
        return False
    return not holds(validator, after)
