"""Write statements and collection options, run with mongomock the way MongoDB runs them."""

import pymongo.errors

from replies import CommandError, duplicate_key_error, not_implemented, write_error

# Options of `create`/`collMod` that are only stored and given back. Any other option changes
# what a collection does (capped, views, time series, ...) and mongomock has none of that.
STORED_OPTIONS = ("validator", "validationLevel", "validationAction", "storageEngine",
                  "indexOptionDefaults", "comment")
# Fields of a command that say how to run it rather than what to do; never options.
GENERIC_FIELDS = {"$db", "lsid", "txnNumber", "$clusterTime", "$readPreference", "apiVersion",
                  "apiStrict", "apiDeprecationErrors", "writeConcern", "readConcern", "maxTimeMS",
                  "comment", "autocommit", "startTransaction"}


def run_statements(body, field, run):
    """Runs the statements of a write command one by one: (index, result) of those that
    succeeded, and writeErrors for the others. Ordered (the default) stops at the first error."""
    done, errors = [], []
    for index, stmt in enumerate(body.get(field, [])):
        try:
            done.append((index, run(stmt)))
        except Exception as exc:
            errors.append(write_error(index, exc))
            if body.get("ordered", True):
                break
    return done, errors


def with_write_errors(reply, errors):
    if errors:
        reply["writeErrors"] = errors
    reply["ok"] = 1.0  # as MongoDB: write errors do not fail the command
    return reply


def is_replacement(update):
    """As MongoDB decides: a document whose first field is not an operator replaces the match;
    an operator document or a pipeline (a list) updates it."""
    return isinstance(update, dict) and not next(iter(update), "").startswith("$")


def uses_positional(update):
    """Whether an operator update has a path with a `$` part (like `builds.$.v`)."""
    return isinstance(update, dict) and any(
        "$" in field.split(".") for fields in update.values() if isinstance(fields, dict)
        for field in fields)


def insert_document(coll, ns, doc):
    try:
        coll.insert_one(doc)
    except pymongo.errors.DuplicateKeyError:
        raise duplicate_key_error(coll, ns, doc.get("_id")) from None


def update_statement(coll, ns, stmt):
    """Runs one statement of an `update` command with mongomock; returns its raw result."""
    query, update = stmt.get("q", {}), stmt.get("u")
    upsert, multi = bool(stmt.get("upsert")), bool(stmt.get("multi"))
    try:
        if is_replacement(update):
            if multi:
                raise CommandError(9, "multi update is not supported for replacement-style update")
            not_implemented(stmt, "a replacement", "collation", "arrayFilters")
            result = coll.replace_one(query, update, upsert=upsert, hint=stmt.get("hint"))
        else:
            run = coll.update_many if multi else coll.update_one
            result = run(query, update, upsert=upsert, array_filters=stmt.get("arrayFilters"),
                         collation=stmt.get("collation"), hint=stmt.get("hint"))
    except pymongo.errors.DuplicateKeyError:
        raise duplicate_key_error(coll, ns, None) from None
    return result.raw_result  # {n (matched or upserted), nModified, upserted (an _id or None)}


def create_index(coll, spec):
    options = {k: spec[k] for k in ("unique", "sparse", "expireAfterSeconds",
                                    "partialFilterExpression") if k in spec}
    coll.create_index(list(spec["key"].items()), name=spec.get("name"), **options)


def index_doc(name, info):
    """An index as listIndexes gives it: {v, key, name, ...}."""
    doc = {"v": 2, "key": dict(info["key"]), "name": name}
    doc.update((k, v) for k, v in info.items() if k not in ("v", "key", "name"))
    return doc


def collection_options(body, command):
    options = {k: v for k, v in body.items() if k != command and k not in GENERIC_FIELDS}
    unsupported = [k for k in options if k not in STORED_OPTIONS]
    if unsupported:
        raise NotImplementedError(f"{command} option(s) {unsupported}: mongomock has no such "
                                  "collections (only validator options are kept, not enforced)")
    return options
