#!/usr/bin/env python3
"""Drives `outpost run IMAGE` inside a real pseudo-terminal, as a person at a
terminal would, for TerminalTests.swift (which makes the assertions).

The pty's slave becomes outpost's controlling terminal and outpost leads the
foreground process group, exactly as under an interactive shell. The script
waits for the ready line, types `help` and a carriage return, waits for the
console's answer, types `kernel log` and waits for the kernel's first line, presses Ctrl-A then x, and waits for outpost to exit. It
prints one JSON object: what it saw, the QEMU and swtpm processes outpost
started (and whether they are gone), the temporary files left behind, and
the terminal's settings before and after. Every wait is bounded; on a timeout
the processes it started are killed by PID.

usage: pty-run.py OUTPOST IMAGE TMPDIR READY_TIMEOUT_SECONDS
"""
import json
import os
import select
import signal
import sys
import termios
import time

outpost, image, tmpdir, ready_timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
report = {"ready": False, "bootLines": [], "bootTimes": None, "helpReply": False, "kernelLogReply": False, "exited": False, "status": None, "children": [],
          "childrenGone": None, "tempDuringRun": [], "tempAfter": None, "termiosBefore": None,
          "termiosAfter": None, "echoAndCanonicalAfter": None, "transcriptTail": "", "error": None}

master, slave = os.openpty()
before = termios.tcgetattr(slave)
report["termiosBefore"] = repr(before)

pid = os.fork()
if pid == 0:
    try:
        os.close(master)
        os.setsid()  # a new session: the pty becomes the controlling terminal below
        import fcntl
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        if slave > 2:
            os.close(slave)
        env = dict(os.environ, TMPDIR=tmpdir, TERM="xterm")
        os.execve(outpost, [outpost, "run", image], env)
    finally:
        os._exit(127)

transcript = bytearray()


def read_until(needle, seconds):
    """Reads the pty until `needle` appears after the current end, or time runs out."""
    start = len(transcript)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return False
            if not chunk:
                return False
            transcript.extend(chunk)
            if needle in transcript[start:]:
                return True
        if child_status() is not None:
            return needle in transcript[start:]
    return False


exit_status = None


def child_status():
    global exit_status
    if exit_status is None:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            exit_status = status
    return exit_status


def children_of(parent):
    """(pid, start time, name) of every process whose parent is `parent`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == parent:
            found.append((int(entry), fields[19], name))
    return found


def alive(proc):
    pid_, start, _ = proc
    try:
        with open(f"/proc/{pid_}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19] == start and fields[0] != "Z"


try:
    report["ready"] = read_until(b"outpost: ready", ready_timeout)
    # What a person saw up to the ready line, one entry a line (the test looks for the
    # kernel's boot log and the helpers' banners there).
    report["bootLines"] = [line.decode("utf-8", "replace") for line in bytes(transcript).replace(b"\r", b"").split(b"\n")]
    # The line after the ready line: where the boot's time went.
    # The whole line: it may still be arriving when the ready line is read.
    if b"after the kernel started" in transcript or read_until(b"after the kernel started", 20):
        tail = bytes(transcript).replace(b"\r", b"").split(b"outpost: boot: ")[-1]
        report["bootTimes"] = "outpost: boot: " + tail.split(b"\n")[0].decode("utf-8", "replace")
    children = children_of(pid)
    report["children"] = [{"pid": p, "name": n} for p, _, n in children]
    report["tempDuringRun"] = sorted(os.listdir(tmpdir))
    if report["ready"]:
        # Typed as a person types: the word, then Enter (a carriage return).
        time.sleep(1)
        os.write(master, b"help\r")
        report["helpReply"] = read_until(b"console commands", 30)
        # The kernel's messages are one command away.
        os.write(master, b"kernel log\r")
        report["kernelLogReply"] = read_until(b"Linux version", 30)
    # Ctrl-A, then x: QEMU's "quit" on a mon:stdio console.
    os.write(master, b"\x01")
    time.sleep(0.3)
    os.write(master, b"x")
    deadline = time.monotonic() + 30
    while child_status() is None and time.monotonic() < deadline:
        read_until(b"\x00never", 0.5)
    if child_status() is None:
        report["error"] = "outpost still running 30 s after Ctrl-A x; killed"
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    else:
        report["exited"] = True
        report["status"] = os.waitstatus_to_exitcode(exit_status)
    time.sleep(0.5)
    report["childrenGone"] = not any(alive(c) for c in children)
    for c in children:
        if alive(c):
            os.kill(c[0], signal.SIGKILL)
    report["tempAfter"] = sorted(os.listdir(tmpdir))
    after = termios.tcgetattr(slave)
    report["termiosAfter"] = repr(after)
    lflag = after[3]
    report["echoAndCanonicalAfter"] = bool(lflag & termios.ECHO) and bool(lflag & termios.ICANON)
except Exception as e:  # reported, never hidden: the Swift test fails on it
    report["error"] = f"{type(e).__name__}: {e}"
    if child_status() is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
report["transcriptTail"] = transcript[-3000:].decode("utf-8", "replace")
print(json.dumps(report))
