"""Feed `buildstore serve`: python3 socket_client.py EVENTS.jsonl [HOST PORT]; exit 1 if any is refused"""
import json, os, socket, sys, time

WINDOW = 500  # lines sent and not yet answered, at most
if len(sys.argv) not in (2, 4) or len(sys.argv) == 4 and not (sys.argv[3].isdigit() and 0 < int(sys.argv[3]) < 65536):
    sys.exit("usage: " + __doc__.split(": ", 1)[1].split(";")[0])
try:  # lines end at "\n" only: JSON strings may hold U+2028 and friends, which splitlines() cuts at
    events = [e for e in open(sys.argv[1], "rb").read().split(b"\n") if e.strip()]
except OSError as e:
    sys.exit(f"cannot read the events: {e}")
host, port = (sys.argv[2], int(sys.argv[3])) if len(sys.argv) == 4 else ("127.0.0.1", 9989)


def show(reply):
    try:
        print(reply, flush=True)
    except BrokenPipeError:  # our reader is gone (| head): stop, rather than take it for the daemon
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit("standard output closed; stopping")


acked = refused = 0
while acked < len(events):
    try:
        with socket.create_connection((host, port)) as s, s.makefile("rb") as replies:
            sent = acked  # after a reconnect, everything not answered is sent again
            while acked < len(events):
                if sent - acked <= WINDOW // 2 and sent < len(events):
                    upto = min(len(events), acked + WINDOW)
                    s.sendall(b"".join(e + b"\n" for e in events[sent:upto]))
                    sent = upto
                line = replies.readline()
                if not line.endswith(b"\n"):
                    raise OSError("the connection closed")  # a part of a reply is no reply
                show(line.decode().rstrip())  # {"ack": ...} or {"error": ..., "line": N}, in order
                reply = json.loads(line)
                if reply.get("retry"):
                    raise OSError("the daemon cannot take events now")  # it closes; resend later
                if reply.get("closing"):
                    sys.exit(f"the daemon closed the connection: {reply['error']}")  # e.g. a token
                acked, refused = acked + 1, refused + ("error" in reply)
    except OSError as e:
        print(f"daemon unreachable ({e}); retrying", file=sys.stderr)
        time.sleep(1)
sys.exit(1 if refused else 0)
