"""MongoDB's error replies as the peer gives them: codes, code names, messages, writeErrors."""

import pymongo.errors
from bson.errors import BSONError

CODE_NAMES = {
    1: "InternalError", 2: "BadValue", 9: "FailedToParse", 26: "NamespaceNotFound",
    43: "CursorNotFound", 48: "NamespaceExists", 59: "CommandNotFound", 73: "InvalidNamespace",
    238: "NotImplemented", 352: "UnsupportedOpQueryCommand", 10334: "BSONObjectTooLarge",
    11000: "DuplicateKey",
}


class CommandError(Exception):
    """A failure the peer reports itself, with MongoDB's code for it."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def not_implemented(body, command, *fields):
    """Refuses fields that mongomock would silently ignore: better an error than a wrong answer."""
    for field in fields:
        if body.get(field):
            raise NotImplementedError(f"mongomock does not implement '{field}' for {command}")


def classify(exc):
    """MongoDB's code and message for an exception raised while running a command."""
    if isinstance(exc, CommandError):
        return exc.code, str(exc)
    if isinstance(exc, NotImplementedError):
        return 238, f"not implemented by mongomock: {exc}"
    if isinstance(exc, pymongo.errors.OperationFailure):
        return exc.code or 2, str(exc)
    if isinstance(exc, pymongo.errors.InvalidName):
        return 73, str(exc)
    if isinstance(exc, (pymongo.errors.PyMongoError, BSONError, ValueError, TypeError)):
        return 2, f"{type(exc).__name__}: {exc}"
    return 1, f"peer error: {type(exc).__name__}: {exc}"


def error_doc(code, message):
    doc = {"ok": 0.0, "errmsg": message, "code": code}
    if code in CODE_NAMES:
        doc["codeName"] = CODE_NAMES[code]
    return doc


def write_error(index, exc):
    """An entry of writeErrors: {index, code, codeName, errmsg}."""
    code, message = classify(exc)
    entry = {"index": index, "code": code}
    if code in CODE_NAMES:
        entry["codeName"] = CODE_NAMES[code]
    entry["errmsg"] = message
    return entry


def show_value(value):
    """A key value as MongoDB writes it in messages: strings quoted, ObjectId('...')."""
    return f'"{value}"' if isinstance(value, str) else repr(value)


def duplicate_key_error(coll, ns, doc_id):
    """MongoDB's E11000 message; mongomock says only 'Duplicate Key Error', not which index."""
    if doc_id is not None and coll.find_one({"_id": doc_id}, {"_id": 1}) is not None:
        where = f"index: _id_ dup key: {{ _id: {show_value(doc_id)} }}"
    else:
        where = "index: (a unique index; mongomock does not say which)"
    return CommandError(11000, f"E11000 duplicate key error collection: {ns} {where}")
