"""ember-snap lazy-restore target: holds memory with known contents, then moves, frees and
discards it on command, checking what it reads back."""
import mmap
import os
import sys

os.closerange(3, 1 << 16)
PATTERN = bytes(range(256)) * 4096  # 1 MiB
big = bytearray(PATTERN * 16)  # 16 MiB: an mmapped malloc chunk; grows by mremap
freed = bytearray(PATTERN * 16)
anon = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE)
anon.write(PATTERN * 4)


note = {"value": "image"}


def answer(cmd):
    global freed
    if cmd == "ping":
        return f"pong {os.getpid()}"
    if cmd.startswith("set "):
        note["value"] = cmd[4:]
        anon[: len(cmd)] = cmd.encode()  # a write into memory every instance shares
        return "set"
    if cmd == "get":
        return f"get {note['value']} {anon[:3] == PATTERN[:3]}"
    if cmd == "grow":
        big.extend(b"\x07" * (32 << 20))  # realloc of an mmapped chunk: mremap
        ok = big[: 16 << 20] == PATTERN * 16 and big[-1] == 7
        return f"grow {ok}"
    if cmd == "free":
        n = len(freed)
        freed = None  # munmap
        fresh = bytearray(n)  # a new mapping, likely at the same place: must read zeros
        return f"free {fresh.count(0) == n}"
    if cmd == "discard":
        anon.madvise(mmap.MADV_DONTNEED, 0, 1 << 20)
        zeros = anon[: 1 << 20] == bytes(1 << 20)
        kept = anon[1 << 20 :] == PATTERN * 3
        return f"discard {zeros} {kept}"
    if cmd == "fork":
        pid = os.fork()
        if pid == 0:
            os._exit(0 if big[: 16 << 20] == PATTERN * 16 and anon[1 << 20 :] == PATTERN * 3 else 1)
        _, status = os.waitpid(pid, 0)
        return f"fork {os.waitstatus_to_exitcode(status)}"
    return f"unknown {cmd}"


os.write(1, b"ready\n")
for line in sys.stdin.buffer:
    os.write(1, (answer(line.strip().decode()) + "\n").encode())
