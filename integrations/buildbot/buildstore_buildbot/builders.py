"""The builders of this master as ``builder_added``, ``builder_state`` and ``builder_removed``.

A builder is described by ``builder_added`` (its tags and the workers that may run it), sent again
only when that changes, and followed by ``builder_state``. The daemon resets a builder's status to
``offline`` on every ``builder_added``, so a description sent again is always followed by the
state, also when that did not change (a busy builder is ``building`` again at once).

Not everything that changes a builder comes as an mq message. A reconfiguration of the master
writes which workers serve which builder to the database, and announces nothing; so after each
one every builder is described again, and what changed is sent.
"""

from __future__ import annotations

from twisted.python import log

from buildstore_buildbot import events


class BuilderReports:
    """The builder half of ``BuildstoreReporter``, mixed into it.

    Uses the reporter's ``master``, ``master_id``, ``_boot_ids``, ``_jobs``, ``_consumers``,
    ``_send`` and ``_ours``; the reporter counts the builds running in ``_running``.
    """

    def _reset_builders(self):
        # builderid -> ids of the builds of this master running on it: it is building
        self._running: dict[int, set[int]] = {}
        self._builder_names: dict[int, str] = {}
        # builderid -> (tags, workers) as last sent in builder_added
        self._builder_desc: dict[int, tuple] = {}
        self._builder_state: dict[int, str] = {}

    # -- message callbacks ------------------------------------------------------------------

    def _on_builder(self, key, msg):
        builderid, what = int(key[1]), key[2]
        if what == "started" and self._ours(msg.get("masterid")):
            self._jobs.add(("builder", builderid), self._describe_builder, builderid)
        elif what == "stopped" and self._ours(msg.get("masterid")):
            self._jobs.add(("builder", builderid), self._builder_stopped, builderid, msg["name"])
        elif what == "update" and self.master.masterid in (msg.get("masterids") or []):
            self._jobs.add(("builder", builderid), self._describe_builder, builderid, msg)

    def _on_worker(self, key, worker):
        for entry in worker.get("configured_on") or []:
            if self._ours(entry.get("masterid")):
                builderid = entry["builderid"]
                self._jobs.add(("builder", builderid), self._refresh_state, builderid)

    def _builders_reconfigured(self):
        """Describes every builder again once the running reconfiguration is over.

        The new configuration gives the workers of a builder at once, but the state also needs
        the database to tell which of them are connected, and the workers write what they serve
        only as they are reconfigured, after the services. The master holds its ``initLock`` for
        the whole reconfiguration: asking for it now gets it right after.
        """
        done = self.master.initLock.run(self._describe_builders_again)
        done.addErrback(log.err, "buildstore: while describing the builders after a reconfig")

    def _describe_builders_again(self):
        if self._consumers:  # else this service stopped meanwhile
            self._jobs.add(("reconfig",), self._announce_builders)

    # -- builders ---------------------------------------------------------------------------

    async def _announce_builders(self):
        builders = await self.master.data.get(("masters", self.master.masterid, "builders"))
        for builder in builders or []:
            builderid = builder["builderid"]
            self._jobs.add(("builder", builderid), self._describe_builder, builderid, builder)

    def _configured_builders(self) -> dict:
        return {b.name: b for b in getattr(self.master.config, "builders", None) or []}

    async def _describe_builder(self, builderid, builder=None):
        if builder is None:
            builder = await self.master.data.get(("builders", builderid))
        if builder is None or self.master.masterid not in (builder.get("masterids") or []):
            return
        name = builder["name"]
        self._builder_names[builderid] = name
        configured = self._configured_builders().get(name)
        if configured is not None:
            slaves = list(configured.workernames)
        else:
            workers = await self._workers_of(builderid)
            slaves = sorted(w["name"] for w in workers)
        description = (tuple(builder.get("tags") or []), tuple(slaves))
        if self._builder_desc.get(builderid) != description:
            self._send(
                events.builder_added(
                    self.master_id,
                    self._boot_ids.next(builderid, "added"),
                    name,
                    tags=description[0],
                    slaves=description[1],
                    time=self.master.reactor.seconds(),
                )
            )
            self._builder_desc[builderid] = description
            # builder_added sets the status to offline, so the state must follow it.
            self._builder_state.pop(builderid, None)
        await self._refresh_state(builderid)

    async def _workers_of(self, builderid) -> list:
        path = ("masters", self.master.masterid, "builders", builderid, "workers")
        return await self.master.data.get(path) or []

    async def _refresh_state(self, builderid):
        name = self._builder_names.get(builderid)
        if name is None or builderid not in self._builder_desc:
            await self._describe_builder(builderid)
            return
        running = len(self._running.get(builderid, ()))
        workers = [] if running else await self._workers_of(builderid)
        state = events.builder_status(running, workers, self.master.masterid)
        self._set_state(builderid, state)

    def _set_state(self, builderid, state):
        if self._builder_state.get(builderid) == state:
            return
        self._builder_state[builderid] = state
        self._send(
            events.builder_state(
                self.master_id,
                self._boot_ids.next(builderid, "state"),
                self._builder_names[builderid],
                state,
                time=self.master.reactor.seconds(),
            )
        )

    async def _builder_stopped(self, builderid, name):
        self._builder_names.setdefault(builderid, name)
        if name in self._configured_builders():
            # Still configured: the master is shutting down, not dropping the builder.
            if builderid in self._builder_desc:
                self._set_state(builderid, "offline")
            return
        self._send(
            events.builder_removed(
                self.master_id,
                self._boot_ids.next(builderid, "removed"),
                name,
                time=self.master.reactor.seconds(),
            )
        )
        for table in (self._builder_names, self._builder_desc, self._builder_state):
            table.pop(builderid, None)
