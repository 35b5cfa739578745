"""Feed `buildstore serve`: python3 socket_client.py EVENTS.jsonl [HOST PORT]; exit 1 if any is refused"""
import json, socket, sys, time

WINDOW = 500  # lines sent and not yet answered, at most
# Lines end at "\n" only: JSON strings may hold U+2028 and friends, which splitlines() cuts at.
events = [e for e in open(sys.argv[1], "rb").read().split(b"\n") if e.strip()]
host, port = (sys.argv[2], int(sys.argv[3])) if len(sys.argv) > 3 else ("127.0.0.1", 9989)
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
                print(line.decode().rstrip())  # {"ack": ...} or {"error": ..., "line": N}, in order
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
