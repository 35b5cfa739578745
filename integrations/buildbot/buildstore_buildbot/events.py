"""Translation of Buildbot data API dicts into buildstore v1 events.

Everything here is pure: plain dicts in, plain dicts out, no Twisted and no I/O, so the mapping
can be tested on its own. The reporter gathers the dicts (from mq messages and data API reads) and
hands the resulting events to the client.

Event ids are derived from Buildbot's database ids, which never repeat on one Buildbot database,
so a resend after a reconnect is recognised by the daemon as a duplicate. Builder events have no
such id; they carry a token chosen when the reporter starts (see ``BuilderEventIds``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from buildstore_buildbot.encoding import encode_event
from buildstore_buildbot.encoding import well_formed

# Buildbot's result codes are the protocol's codes (SUCCESS=0 ... CANCELLED=6).
EXCEPTION = 4
RESULTS = range(7)

# Buildbot prefixes each line of a stdio log with its stream.
STDIO_CHANNELS = {"o": "stdout", "e": "stderr", "h": "header"}

# Well below the daemon's default line limit (1 MiB): a chunk's text takes at most this many
# bytes once escaped as JSON, too.
MAX_LOG_CHUNK = 256 * 1024

# The daemon refuses a line over its limit (1 MiB by default), and a refused build_started costs
# the whole build. So a property value, or a change's comments, larger than this once encoded
# goes as a marker that says so; a change lists at most this many files; and a build_started
# still too long after that sends its large values as markers too.
MAX_VALUE_BYTES = 64 * 1024
MAX_CHANGE_FILES = 1000
MAX_START_BYTES = 512 * 1024
# The property that says what a build_started cut to fit left out.
LEFT_OUT = "buildstore_left_out"

_FULL_HASH = re.compile(r"^(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{64})$")
_NAME_EMAIL = re.compile(r"^\s*(?P<name>.*?)\s*<(?P<email>[^<>]*)>\s*$")


def epoch(value: Any) -> float | int | None:
    """Seconds since the epoch for a Buildbot timestamp (datetime or number), else None."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            # Buildbot's naive datetimes are UTC.
            value = value.replace(tzinfo=datetime.timezone.utc)
        return round(value.timestamp(), 3)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


def result_code(results: Any) -> int:
    """Buildbot's results as a protocol result; anything unknown counts as an exception."""
    if isinstance(results, int) and not isinstance(results, bool) and results in RESULTS:
        return results
    return EXCEPTION


def _blank_to_none(value: Any) -> Any:
    # Buildbot uses '' for "not given" in source stamps and changes; the documents use null.
    return None if value == "" else value


def _event(kind: str, master_id: Any, event_id: str | None, time: Any = None, **fields) -> dict:
    event = {"type": kind, "master_id": master_id}
    if event_id is not None:
        event["event_id"] = event_id
    t = epoch(time)
    if t is not None:
        event["time"] = t
    event.update(fields)
    return event


def sourced_properties(props: dict | None) -> dict:
    """Buildbot's ``{name: (value, source)}`` as the protocol's ``{name: {value, source}}``."""
    out = {}
    for name, pair in (props or {}).items():
        value, source = split_property(pair)
        out[property_name(name)] = {"value": storable(value), "source": source}
    return out


def storable_name(key):
    """A property name or object key as the daemon takes it: each NUL as U+FFFD, and a leading
    ``$`` (BSON reads ``{"$date": 1}`` as a date) as U+FF04, the fullwidth dollar sign."""
    if not isinstance(key, str):
        return key
    key = key.replace("\x00", "\ufffd")
    return "\uff04" + key[1:] if key.startswith("$") else key


def property_name(name):
    """A property's name as the daemon takes it: as ``storable_name`` gives it, and an empty one
    (which the daemon refuses) as U+FFFD."""
    name = storable_name(name)
    return "\ufffd" if name == "" else name


# How deep the daemon lets a property value nest arrays and objects.
MAX_VALUE_DEPTH = 64

# The whole numbers a document can hold (BSON's 64-bit integer).
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1


def fits_64_bits(n: int) -> bool:
    """Whether a document can hold the whole number ``n`` exactly."""
    return _INT_MIN <= n <= _INT_MAX


def stable_text(value: Any) -> str:
    """``value`` as text that is the same for equal values, whatever the order of dict keys: for
    telling values apart. Keys JSON cannot hold or sort (1 and "a") fall back to ``repr``."""
    try:
        return json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def storable(value: Any) -> Any:
    """A property value as the daemon can store it: a whole number outside 64 bits as its text,
    keys (a property's name too) as ``storable_name`` gives them, what nests deeper than
    ``MAX_VALUE_DEPTH`` arrays or objects as a marker, and a value over ``MAX_VALUE_BYTES`` as a
    marker (see ``bounded``).

    The daemon refuses such numbers (no document can hold them exactly), keys and lines, and a
    refused ``build_started`` would cost its whole build; Python's integers have no bound.
    Anything else is returned as it is, and most values are a string or a small number, checked
    at once.
    """
    return bounded(_storable(value))


def _storable(value: Any, depth: int = 0) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if fits_64_bits(value) else str(value)
    if isinstance(value, (dict, list, tuple)) and depth == MAX_VALUE_DEPTH:
        return f"(left out by the Buildbot plugin: nested more than {MAX_VALUE_DEPTH} deep)"
    if isinstance(value, dict):
        return {storable_name(k): _storable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_storable(v, depth + 1) for v in value]
    return value


def bounded(value: Any, limit: int = MAX_VALUE_BYTES, why: str = "too large for one event") -> Any:
    """``value``, or a marker naming its size if it takes more than ``limit`` bytes as JSON (or
    cannot be written as JSON at all)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str) and len(value) * 6 <= limit:  # even escaped, it fits
        return value
    try:
        size = len(encode_event(value))
    except Exception as e:  # a key JSON can't hold, a __str__ that raises
        return f"(left out by the Buildbot plugin: cannot be written as JSON: {e!r})"
    if size <= limit:
        return value
    return f"(left out by the Buildbot plugin: {size} bytes of JSON, {why})"


def split_property(pair: Any) -> tuple[Any, str | None]:
    # mq messages may carry lists where the data API gives tuples.
    if isinstance(pair, (tuple, list)) and len(pair) == 2:
        value, source = pair
        return value, source if isinstance(source, str) else None
    return pair, None


# -- builders ---------------------------------------------------------------------------------


class BuilderEventIds:
    """Event ids for builder events, unique across restarts of the master.

    A builder's state can change back and forth, so an id made only of Buildbot ids would make
    a later ``idle`` look like a replay of an earlier one. ``boot`` is chosen once per reporter
    start; the counter numbers the events within it.
    """

    def __init__(self, boot: str):
        self.boot = boot
        self.count = 0

    def next(self, builderid: int, what: str) -> str:
        self.count += 1
        return f"builder-{builderid}-{what}-{self.boot}-{self.count}"


def builder_added(master_id, event_id, name, tags=None, slaves=None, time=None) -> dict:
    return _event(
        "builder_added",
        master_id,
        event_id,
        time,
        builder=name,
        category=None,
        tags=list(tags or []),
        slaves=list(slaves or []),
    )


def builder_state(master_id, event_id, name, state, time=None) -> dict:
    return _event("builder_state", master_id, event_id, time, builder=name, state=state)


def builder_removed(master_id, event_id, name, time=None) -> dict:
    return _event("builder_removed", master_id, event_id, time, builder=name)


def builder_status(running_builds: int, workers: Iterable[dict], masterid: int) -> str:
    """The builder's state as far as Buildbot shows it: building, idle or offline.

    A builder is idle when one of its workers is connected to this master and not paused.
    """
    if running_builds > 0:
        return "building"
    for worker in workers:
        connected = any(c.get("masterid") == masterid for c in worker.get("connected_to") or [])
        if connected and not worker.get("paused"):
            return "idle"
    return "offline"


# -- builds -----------------------------------------------------------------------------------


def pick_sourcestamp(sourcestamps: list[dict] | None) -> dict | None:
    """The source stamp a build is filed under: the default codebase's, else the codebase first
    by name.

    The protocol has one changeset per build; multi-codebase builds report the others through
    their changes and ``got_revision``. The choice goes by name, not by the buildset's order, so
    that every build of a builder is filed under the same codebase.
    """
    if not sourcestamps:
        return None
    return min(sourcestamps, key=lambda ss: ss.get("codebase") or "")


def change_entry(change: dict) -> dict:
    files = list(change.get("files") or [])
    if len(files) > MAX_CHANGE_FILES:
        left = len(files) - MAX_CHANGE_FILES
        files = files[:MAX_CHANGE_FILES] + [f"(and {left} more files, left out by the plugin)"]
    return {
        "revision": _blank_to_none(change.get("revision")),
        "author": _blank_to_none(change.get("author")),
        "comments": bounded(change.get("comments")),
        "files": [bounded(f, 4096) for f in files],
        "when": epoch(change.get("when_timestamp")),
        "branch": _blank_to_none(change.get("branch")),
        "repository": _blank_to_none(change.get("repository")),
    }


def build_started(
    master_id,
    build: dict,
    builder_name: str,
    worker_name: str | None = None,
    sourcestamps: list[dict] | None = None,
    reason: str | None = None,
    properties: dict | None = None,
    changes: list[dict] | None = None,
) -> dict:
    ss = pick_sourcestamp(sourcestamps) or {}
    event = _event(
        "build_started",
        master_id,
        f"build-{build['buildid']}-started",
        build.get("started_at"),
        builder=builder_name,
        build_id=build["buildid"],
        number=build["number"],
        slaves=[worker_name] if worker_name else [],
        changeset=_blank_to_none(ss.get("revision")),
        branch=_blank_to_none(ss.get("branch")),
        repository=_blank_to_none(ss.get("repository")),
        codebase=ss.get("codebase"),
        reason=reason,
        properties=sourced_properties(properties),
        changes=[change_entry(c) for c in changes or []],
    )
    # Values each within bounds can still be too many for one line: cut further, a stage at a
    # time, until it fits.
    why = "left out to keep the build's first event within the daemon's line limit"
    originals = list(changes or [])

    def small_values():
        for prop in event["properties"].values():
            prop["value"] = bounded(prop["value"], 1024, why)
        event["reason"] = bounded(event["reason"], 1024, why)

    def changes_without_files():
        for change, original in zip(event["changes"], originals):
            if change["files"]:
                count = len(original.get("files") or [])
                change["files"] = [f"({count} files, left out by the plugin)"]

    def changes_without_comments():
        for change in event["changes"]:
            change["comments"] = bounded(change["comments"], 256, why)

    def first_changes():
        kept = event["changes"][:100]
        left = len(event["changes"]) - len(kept)
        more = change_entry({"comments": f"({left} more changes, left out by the plugin)"})
        event["changes"] = kept + [more] if left else kept

    def no_values():
        props = event["properties"]
        for prop in props.values():
            prop["value"] = None
        props[LEFT_OUT] = {
            "value": f"(the values of {len(props)} properties, {why})",
            "source": None,
        }

    def no_properties():
        count = len(event["properties"]) - 1
        event["properties"] = {LEFT_OUT: {"value": f"({count} properties, {why})", "source": None}}

    stages = (
        small_values,
        changes_without_files,
        changes_without_comments,
        first_changes,
        no_values,
        no_properties,
    )
    for shrink in stages:
        if len(encode_event(event)) <= MAX_START_BYTES:
            break
        shrink()
    return event


def build_finished(master_id, build: dict) -> dict:
    return _event(
        "build_finished",
        master_id,
        f"build-{build['buildid']}-finished",
        build.get("complete_at"),
        build_id=build["buildid"],
        result=result_code(build.get("results")),
    )


def property_event(master_id, buildid: int, name: str, value: Any, source: Any, repeat: int = 0):
    """A property set during the build.

    The id hashes the name, value and source, so the same update sent twice is one event.
    ``repeat`` counts how often this exact value came back after another one (A, B, A), which
    must not be mistaken for a replay.
    """
    source = source if isinstance(source, str) else None
    blob = stable_text([name, value, source])
    digest = hashlib.sha1(well_formed(blob).encode()).hexdigest()[:16]
    suffix = f"-{repeat}" if repeat else ""
    return _event(
        "property",
        master_id,
        f"build-{buildid}-property-{digest}{suffix}",
        build_id=buildid,
        name=property_name(name),
        value=storable(value),
        source=source,
    )


# -- steps and logs ---------------------------------------------------------------------------


def step_started(master_id, step: dict) -> dict:
    return _event(
        "step_started",
        master_id,
        f"step-{step['stepid']}-started",
        step.get("started_at") or step.get("complete_at"),
        build_id=step["buildid"],
        step=step["number"],
        name=step["name"],
    )


def step_finished(master_id, step: dict) -> dict:
    return _event(
        "step_finished",
        master_id,
        f"step-{step['stepid']}-finished",
        step.get("complete_at"),
        build_id=step["buildid"],
        step=step["number"],
        result=result_code(step.get("results")),
        text=step.get("state_string") or None,
    )


def split_stdio(content: str) -> dict[str, str]:
    """The text of each channel in a piece of a stdio log, lines in their order.

    Each line of a Buildbot stdio log starts with one letter naming its stream. A line with an
    unknown letter is kept whole on stdout rather than lost.
    """
    parts: dict[str, list[str]] = {}
    # Buildbot ends stdio lines with "\n" only. `splitlines` would also split at "\r" (progress
    # bars), form feeds, U+2028 and the like inside a line, and take the character after one for
    # a stream letter. Every piece but the last ended with "\n"; the last may be empty.
    lines = content.split("\n")
    for line in [line + "\n" for line in lines[:-1]] + lines[-1:]:
        if not line:
            continue
        channel = STDIO_CHANNELS.get(line[0])
        if channel is None:
            parts.setdefault("stdout", []).append(line)
        else:
            parts.setdefault(channel, []).append(line[1:])
    return {channel: "".join(lines) for channel, lines in parts.items()}


def chunk_text(text: str, limit: int = MAX_LOG_CHUNK) -> list[str]:
    """``text`` cut into pieces of at most ``limit`` UTF-8 bytes, at line ends where possible,
    that take at most ``limit`` bytes escaped as JSON too.

    Escaping makes a control character six bytes long (``\\u0000``), so binary output dumped to a
    log could make a line the daemon refuses, and a refused chunk costs the rest of its channel.
    A piece that escapes too long is cut again into pieces of a sixth of the limit.
    """
    pieces = []
    for piece in _byte_pieces(text, limit):
        if len(piece) * 6 > limit and len(encode_event(piece)) - 2 > limit:
            pieces.extend(_byte_pieces(piece, max(limit // 6, 1)))
        else:
            pieces.append(piece)
    return pieces


def _byte_pieces(text: str, limit: int) -> list[str]:
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which UTF-8 cannot spell: as U+FFFD
        data = well_formed(text).encode("utf-8")
    pieces = []
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        if end < len(data):
            newline = data.rfind(b"\n", start, end)
            if newline >= start:
                end = newline + 1
            else:
                # No line end in reach: cut before a continuation byte, never inside a character.
                while end > start and (data[end] & 0xC0) == 0x80:
                    end -= 1
                if end == start:  # a limit smaller than one character: take the character
                    end += 1
                    while end < len(data) and (data[end] & 0xC0) == 0x80:
                        end += 1
        pieces.append(data[start:end].decode("utf-8"))
        start = end
    return pieces


def log_events(
    master_id,
    buildid: int,
    step_number: int,
    logid: int,
    channel: str,
    text: str,
    offset: int,
    limit: int = MAX_LOG_CHUNK,
) -> tuple[list[dict], int]:
    """``log`` events for ``text`` appended at byte ``offset`` of a channel; and the new offset.

    The byte range in the id, and the offset in the event, make each chunk idempotent: the daemon
    skips a chunk it already applied, and keeps only the new part of one that overlaps what it
    holds. The range's end is in the id because a log read again from its start (a build
    reported again after a crash) is cut into other chunks: one from offset 0 that runs further
    than the first chunk sent must not pass for it.
    """
    events = []
    for piece in chunk_text(text, limit):
        end = offset + len(piece.encode("utf-8"))
        events.append(
            _event(
                "log",
                master_id,
                f"log-{logid}-{channel}-@{offset}-{end}",
                build_id=buildid,
                step=step_number,
                channel=channel,
                text=piece,
                offset=offset,
            )
        )
        offset = end
    return events, offset


# -- changes ----------------------------------------------------------------------------------


def _name_and_email(who: str | None) -> tuple[str, str]:
    if not who:
        return "", ""
    m = _NAME_EMAIL.match(who)
    if m:
        return m.group("name") or m.group("email"), m.group("email")
    return who.strip(), ""


def commit_event(master_id, change: dict) -> dict | None:
    """A ``commit`` event for a change with a full hash and a repository, else None.

    Buildbot keeps one timestamp per change; it serves as author and committer date.
    """
    revision = change.get("revision") or ""
    repository = change.get("repository") or ""
    when = epoch(change.get("when_timestamp"))
    if not _FULL_HASH.match(revision) or not repository or when is None:
        return None
    author_name, author_email = _name_and_email(change.get("author"))
    committer_name, committer_email = _name_and_email(
        change.get("committer") or change.get("author")
    )
    comments = change.get("comments") or ""
    return _event(
        "commit",
        master_id,
        f"change-{change['changeid']}-commit",
        hash=revision,
        repository_uri=repository,
        subject=comments.splitlines()[0] if comments else "",
        author_name=author_name,
        author_email=author_email,
        author_date=when,
        commiter_name=committer_name,
        commiter_email=committer_email,
        commiter_date=when,
    )
