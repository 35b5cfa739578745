"""Events kept on disk while the daemon can't take them: what the queue can't hold, or a stop left.

The client's queue lives in memory and is bounded, so a long outage would otherwise cost events,
and so would a master stopped before the daemon acknowledged everything. The backlog is a SQLite
file (Python's own ``sqlite3``) in the master's directory:

- once the queue is full, further events are appended here instead of being dropped, and while
  anything waits here every new event comes here too, so that the daemon still gets them in order;
- as the daemon acknowledges events, the oldest rows move into the queue; a row is deleted only
  after the daemon acknowledged its event, so a master killed meanwhile sends it again at its
  next start (the daemon skips what it already had, by ``event_id``);
- a stopping master writes the events still unacknowledged in front of the rest.

The file also lists the builds reported as started and not yet as finished. A master killed or
crashed during a build never reports its end: Buildbot finishes such builds (as RETRY) at the next
start, before the plugin is listening, so the plugin looks at the builds listed here instead.

The file is written only in those cases, from the reactor's thread: each append is one small
transaction in write-ahead-log mode with ``synchronous=NORMAL``, which survives the master's
process dying but not the machine losing power before the system wrote it out.
"""

from __future__ import annotations

import os
import sqlite3
import time

try:
    import fcntl
except ImportError:  # Windows has no fcntl: there, nothing keeps two services off one file
    fcntl = None

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT,
    line BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS running (buildid INTEGER PRIMARY KEY);
"""

# Acknowledged rows are deleted in groups rather than one transaction per reply; rows acknowledged
# but not yet deleted are merely sent again after a crash.
DELETE_EVERY = 200

# Seconds a statement waits for a lock on the file. Only the checkpoints of SQLite itself and a
# reader from outside (someone looking at the file) can hold one; the reactor must not wait long.
BUSY_TIMEOUT = 1.0

# An empty file holding more free pages than this is compacted when opened or closed: after a
# long outage it may have grown to ``backlog_bytes``.
COMPACT_FREE_PAGES = 4096

# The SQLite errors that say the file is not a database, or is damaged: its events can't be read.
_UNREADABLE = {"SQLITE_NOTADB", "SQLITE_CORRUPT"}


class BacklogError(Exception):
    """The backlog file can't be used; the message names the file and the cause.

    ``unreadable`` says the file is not a backlog, or is damaged, rather than out of reach for
    now (locked, no space, no permission).
    """

    def __init__(self, message: str, unreadable: bool = False):
        super().__init__(message)
        self.unreadable = unreadable


def _unreadable(error: sqlite3.Error) -> bool:
    name = getattr(error, "sqlite_errorname", None)  # Python 3.11 and later
    if name is not None:
        return name in _UNREADABLE
    text = str(error)
    return "file is not a database" in text or "malformed" in text


class Backlog:
    """A file of events in order, each with a sequence number.

    Rows are "waiting" until ``take`` moves them into the client's queue, and stay in the file
    until ``acknowledged`` says the daemon has them. ``max_bytes`` bounds the lines held.
    """

    def __init__(self, path: str, max_bytes: int):
        self.path = path
        self.max_bytes = max_bytes
        # Set when the file can no longer be read: the client then stops using it.
        self.failed: str | None = None
        self._closed = False
        self._lock = _lock(path)
        try:
            self._db = _open(path)
        except sqlite3.Error as e:
            _unlock(self._lock)
            raise BacklogError(f"cannot open backlog {path}: {e}", _unreadable(e)) from e
        try:
            seq_min, seq_max, rows, size = self._db.execute(
                "SELECT min(seq), max(seq), count(*), total(length(line)) FROM events"
            ).fetchone()
        except sqlite3.Error as e:
            self._db.close()
            _unlock(self._lock)
            raise BacklogError(f"cannot open backlog {path}: {e}", _unreadable(e)) from e
        if not rows:
            try:
                self._compact()
            except sqlite3.Error:
                pass  # only space is at stake
        self.bytes = int(size)
        self.waiting = rows
        # Rows from ``_first_waiting`` on are waiting; rows before it were taken into the queue.
        self._first_waiting = seq_min if seq_min is not None else 1
        self._last_seq = seq_max if seq_max is not None else 0
        self._acked = None
        self._acked_rows = 0

    def no_room_for(self, size: int) -> str | None:
        """Why a line of ``size`` bytes can't be appended, naming the bound; or None."""
        if self.bytes + size > self.max_bytes:
            return (
                f"backlog full ({self.bytes} bytes in {self.path}; {size} more would pass the "
                f"backlog_bytes bound, {self.max_bytes})"
            )
        return None

    def append(self, event_id: str | None, line: bytes) -> None:
        seq = self._last_seq + 1
        self._execute(
            "INSERT INTO events (seq, event_id, line) VALUES (?, ?, ?)", (seq, event_id, line)
        )
        if self.waiting == 0:
            self._first_waiting = seq
        self._last_seq = seq
        self.waiting += 1
        self.bytes += len(line)

    def take(self, count: int, room: int) -> list[tuple[int, str | None, bytes]]:
        """The oldest waiting rows, at most ``count`` of them and ``room`` bytes in all.

        With ``room`` too small for the first row, nothing is taken; a caller whose queue is
        empty asks for one row with unbounded room, so that a row larger than the queue still
        goes out.
        """
        taken = []
        used = 0
        try:
            rows = self._db.execute(
                "SELECT seq, event_id, line FROM events WHERE seq >= ? ORDER BY seq LIMIT ?",
                (self._first_waiting, count),
            )
            for seq, event_id, line in rows:
                if used + len(line) > room:
                    break
                taken.append((seq, event_id, bytes(line)))
                used += len(line)
        except sqlite3.Error as e:
            raise BacklogError(f"cannot read backlog {self.path}: {e}") from e
        if taken:
            self._first_waiting = taken[-1][0] + 1
            self.waiting -= len(taken)
        return taken

    def acknowledged(self, seq: int) -> None:
        """The daemon has every taken row up to ``seq``; they are deleted now or a little later."""
        self._acked = seq
        self._acked_rows += 1
        if self._acked_rows >= DELETE_EVERY or seq == self._first_waiting - 1:
            self._delete_acknowledged()

    def keep_front(self, lines: list[tuple[str | None, bytes]]) -> None:
        """Writes ``lines``, the queue's unacknowledged events, before every waiting row.

        The rows taken into the queue are among ``lines`` or acknowledged, so they are replaced.
        """
        first = self._first_waiting if self.waiting else self._last_seq + 1
        base = first - len(lines)
        try:
            with self._db:
                removed = self._delete_through(first - 1)
                self._db.executemany(
                    "INSERT INTO events (seq, event_id, line) VALUES (?, ?, ?)",
                    [(base + i, event_id, line) for i, (event_id, line) in enumerate(lines)],
                )
        except sqlite3.Error as e:
            raise BacklogError(f"cannot write backlog {self.path}: {e}") from e
        self._acked = None
        self._acked_rows = 0
        self.bytes += sum(len(line) for _, line in lines) - removed
        self.waiting += len(lines)
        if lines:
            self._first_waiting = base

    def build_started(self, buildid: int) -> None:
        self._execute("INSERT OR IGNORE INTO running (buildid) VALUES (?)", (buildid,))

    def build_finished(self, buildid: int) -> None:
        self._execute("DELETE FROM running WHERE buildid = ?", (buildid,))

    def running_builds(self) -> list[int]:
        """The builds reported as started and not as finished, oldest id first."""
        try:
            return [r[0] for r in self._db.execute("SELECT buildid FROM running ORDER BY buildid")]
        except sqlite3.Error as e:
            raise BacklogError(f"cannot read backlog {self.path}: {e}") from e

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._acked is not None:
                self._delete_acknowledged()
            if not self.bytes:
                self._compact()
        except (BacklogError, sqlite3.Error):
            pass  # acknowledged rows left are sent again at the next start: harmless
        self._db.close()
        _unlock(self._lock)

    def _compact(self):
        (free,) = self._db.execute("PRAGMA freelist_count").fetchone()
        if free > COMPACT_FREE_PAGES:
            self._db.execute("VACUUM")

    def _delete_acknowledged(self):
        seq, self._acked, self._acked_rows = self._acked, None, 0
        if seq is None:
            return
        try:
            with self._db:
                removed = self._delete_through(seq)
        except sqlite3.Error as e:
            raise BacklogError(f"cannot write backlog {self.path}: {e}") from e
        self.bytes -= removed

    def _delete_through(self, seq: int) -> int:
        """Deletes the rows up to ``seq``, in the caller's transaction; returns their bytes."""
        (size,) = self._db.execute(
            "SELECT total(length(line)) FROM events WHERE seq <= ?", (seq,)
        ).fetchone()
        self._db.execute("DELETE FROM events WHERE seq <= ?", (seq,))
        return int(size)

    def _execute(self, sql, params):
        try:
            with self._db:
                self._db.execute(sql, params)
        except sqlite3.Error as e:
            raise BacklogError(f"cannot write backlog {self.path}: {e}") from e


def _lock(path: str):
    """Holds the file for this service: two services on one file would take each other's events.

    The lock is on a file of its own, so that SQLite's locks on the backlog, and anyone reading
    it, are not in the way.
    """
    if fcntl is None:
        return None
    try:
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise BacklogError(f"cannot open backlog {path}: {e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise BacklogError(
            f"cannot open backlog {path}: another service or master uses it; give each "
            "BuildstoreReporter a backlog file of its own"
        ) from None
    return fd


def _unlock(fd):
    if fd is not None:
        os.close(fd)  # releases the lock


def _open(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        db.commit()
    except sqlite3.Error:
        db.close()
        raise
    return db


def open_backlog(path: str, max_bytes: int, say) -> Backlog | None:
    """The backlog at ``path``, or None after ``say``-ing why there is none.

    A file that is not a backlog (damaged, or something else at that path) is moved aside, with
    a line saying where, and a new one is started: its events can't be read anyway, and the file
    stays for whoever wants to look at it. A file out of reach for now (locked, in use by another
    service, no permission) is left alone.
    """
    try:
        return Backlog(path, max_bytes)
    except BacklogError as first:
        if not first.unreadable or not os.path.exists(path):
            say(f"buildstore: {first}; events past the queue's bounds will be dropped")
            return None
        aside = f"{path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9}"
        try:
            os.replace(path, aside)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.replace(path + suffix, aside + suffix)
            backlog = Backlog(path, max_bytes)
        except (OSError, BacklogError) as e:
            say(
                f"buildstore: {first}; and then: {e}; events past the queue's bounds will be dropped"
            )
            return None
        say(f"buildstore: {first}; moved it to {aside} and started a new backlog")
        return backlog
