"""The way to ``buildstore serve``: its address, and the Twisted protocol that carries lines.

The protocol only reads reply lines and hands them, and the connection's coming and going, to
the client (``client.py``), which keeps the queue and decides what to send.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

from twisted.internet import protocol
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.protocols.basic import LineOnlyReceiver

if TYPE_CHECKING:
    from buildstore_buildbot.client import BuildstoreClient

CONNECT_TIMEOUT = 10


def parse_address(address: str) -> tuple[str, Any]:
    """``tcp://HOST:PORT`` or ``unix:/PATH`` as ("tcp", (host, port)) or ("unix", path)."""
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        path = path.removeprefix("//")
        if not path:
            raise ValueError(f"{address!r}: no socket path")
        return "unix", path
    if address.startswith("tcp://"):
        rest = address[len("tcp://") :].rstrip("/")
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{address!r}: expected tcp://HOST:PORT, PORT from 1 to 65535")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return "tcp", (host, int(port))
    raise ValueError(f"{address!r}: expected tcp://HOST:PORT or unix:/PATH")


def make_endpoint(reactor, address: str):
    kind, where = parse_address(address)
    if kind == "unix":
        return UNIXClientEndpoint(reactor, where, timeout=CONNECT_TIMEOUT)
    host, port = where
    return HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)


class DaemonProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, client: BuildstoreClient):
        self.client = client

    def connectionMade(self):
        self.client._connected(self)

    def lineReceived(self, line: bytes):
        self.client._reply(self, line)

    def lineLengthExceeded(self, line):
        self.client._drop_connection("reply line too long")

    def connectionLost(self, reason=protocol.connectionDone):
        self.client._disconnected(self, reason)


class DaemonFactory(protocol.Factory):
    def __init__(self, client):
        self.client = client

    def buildProtocol(self, addr):
        return DaemonProtocol(self.client)
