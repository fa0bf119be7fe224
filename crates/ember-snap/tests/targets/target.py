"""ember-snap test target: imports the modules named on the command line, then answers one
command per line on stdin (blocked in read(0) between commands, where a dump finds it)."""
import os
import sys

os.closerange(3, 1 << 16)  # inherited descriptors would end up in the image
import json
import threading

for name in sys.argv[1:]:
    __import__(name)


def answer(cmd):
    if cmd == "ping":
        return f"pong {os.getpid()}"
    if cmd == "thread":
        out = []
        t = threading.Thread(target=lambda: out.append(sum(range(10))))
        t.start()
        t.join()
        return f"thread {out[0]}"
    if cmd == "fork":
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        _, status = os.waitpid(pid, 0)
        return f"fork {os.waitstatus_to_exitcode(status)}"
    if cmd == "json":
        return "json " + json.dumps({"b": [1, 2], "a": None}, sort_keys=True)
    if cmd == "creds":
        try:
            os.mkdir("/tmp/ember-snap-handoff-probe")
            os.rmdir("/tmp/ember-snap-handoff-probe")
            made = "made"
        except OSError as e:
            made = e.strerror
        return f"creds {os.getuid()} {os.getgid()} {made}"
    if cmd == "alloc":
        b = bytearray(50 << 20)
        b[-1] = 1
        return f"alloc {len(b) + b[-1]}"
    return f"unknown {cmd}"


os.write(1, b"ready\n")
for line in sys.stdin.buffer:
    os.write(1, (answer(line.strip().decode()) + "\n").encode())
