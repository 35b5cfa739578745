"""An `_id` lookup in front of mongomock's scans.

mongomock scans every document of a collection for every query and update statement, which
makes a long test quadratic. Where a filter pins `_id` down, the documents are looked up by key
first; mongomock's own matcher still decides which of them match, so answers are unchanged (but
for the order of an unsorted `$in` query, which MongoDB leaves unspecified). Importing this module
installs it.
"""

import mongomock
import mongomock.collection
import mongomock.filtering


def pinned_ids(filter):
    """The `_id` values a filter pins down (`{_id: v, ...}` or `{_id: {$in: [...]}, ...}`), else None."""
    if not isinstance(filter, dict) or "_id" not in filter:
        return None
    value = filter["_id"]
    if isinstance(value, dict):
        if set(value) != {"$in"} or not isinstance(value["$in"], list):
            return None
        values = value["$in"]
    else:
        values = [value]
    # Documents, arrays and patterns compare in ways a dictionary lookup does not: scan for them.
    if any(isinstance(v, (dict, list)) or hasattr(v, "pattern") for v in values):
        return None
    return values


_scan_documents = mongomock.collection.Collection._iter_documents


def iter_documents(self, filter):
    """mongomock scans every document of a collection for every query and update, which makes a
    long test quadratic. Where a filter pins `_id` down, look those documents up first; mongomock's
    own matcher still decides which of them match, so answers are unchanged (but for the order of
    an unsorted `$in` query, which MongoDB leaves unspecified)."""
    ids = pinned_ids(filter)
    if ids is None or self._store.is_empty:
        return _scan_documents(self, filter)
    found, seen = [], set()
    for value in ids:
        if value in seen:
            continue
        seen.add(value)
        if value in self._store:
            found.append(self._store[value])
    return (doc for doc in found if mongomock.filtering.filter_applies(filter, doc))


mongomock.collection.Collection._iter_documents = iter_documents
