"""Feed `buildstore serve`: python3 socket_client.py EVENTS.jsonl [HOST PORT]"""
import json, socket, sys, time

events = open(sys.argv[1]).read().splitlines()
host, port = (sys.argv[2], int(sys.argv[3])) if len(sys.argv) > 3 else ("127.0.0.1", 9989)
acked = 0
while acked < len(events):
    try:
        with socket.create_connection((host, port)) as s, s.makefile("rb") as replies:
            s.sendall("".join(e + "\n" for e in events[acked:]).encode())  # resend the unacknowledged
            for line in replies:
                print(line.decode().rstrip())  # {"ack": ...} or {"error": ..., "line": N}, in order
                if json.loads(line).get("retry"):
                    raise OSError("the daemon cannot take events now")  # it closes; resend later
                acked += 1
                if acked == len(events):
                    break
    except OSError as e:
        print(f"daemon unreachable ({e}); retrying", file=sys.stderr)
        time.sleep(1)
