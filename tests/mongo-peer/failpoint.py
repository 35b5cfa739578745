"""MongoDB's `failCommand` fail point, so that tests can make the next writes fail on purpose.

A real server takes it with `enableTestCommands`; the peer always does. Supported:

    {configureFailPoint: "failCommand", mode: {times: N} | {skip: N} | "alwaysOn" | "off",
     data: {failCommands: [names], errorCode: CODE, errorLabels: [labels],
            writeConcernError: {code: CODE, errmsg: TEXT}}}

Each matching command then gets an error reply with that code instead of running, `times` times
or until turned off; with `skip`, the first N matching commands run and every later one fails.
With `writeConcernError` instead of `errorCode`, the command runs, and its reply carries that
error, as a server's does when the write could not be confirmed to the write concern.
"""

from replies import CommandError, error_doc


class FailPoint:
    def __init__(self):
        self.commands, self.times, self.skip, self.code, self.labels = set(), 0, 0, 1, []
        self.concern = None

    def configure(self, body):
        if body.get("configureFailPoint") != "failCommand":
            raise CommandError(2, f"unknown fail point {body.get('configureFailPoint')!r}: "
                                  "the peer has only failCommand")
        mode, data = body.get("mode"), body.get("data") or {}
        self.skip = 0
        if mode == "off":
            self.times = 0
        elif mode == "alwaysOn":
            self.times = None
        elif isinstance(mode, dict) and set(mode) == {"times"}:
            self.times = int(mode["times"])
        elif isinstance(mode, dict) and set(mode) == {"skip"}:
            self.times, self.skip = None, int(mode["skip"])
        else:
            raise CommandError(
                2, f"mode {mode!r}: the peer takes {{times: N}}, {{skip: N}}, 'alwaysOn' or 'off'")
        self.commands = set(data.get("failCommands", []))
        self.code = int(data.get("errorCode", 1))
        self.labels = list(data.get("errorLabels", []))
        self.concern = data.get("writeConcernError")
        return {"ok": 1.0}

    def trip(self, name):
        """What the fail point does to command `name`: None (nothing), ("fail", reply) to answer
        that reply instead of running it, or ("concern", error) to run it and add the error."""
        if name not in self.commands or self.times == 0:
            return None
        if self.skip > 0:
            self.skip -= 1
            return None
        if self.times is not None:
            self.times -= 1
        if self.concern is not None:
            return ("concern", dict(self.concern))
        reply = error_doc(self.code, f"Failing command {name} via 'failCommand' failpoint")
        if self.labels:
            reply["errorLabels"] = self.labels
        return ("fail", reply)
