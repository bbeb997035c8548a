#!/usr/bin/env python3
"""Boots one image with `outpost run --headless` and says where the time went.

Every console line is stamped with the host's time since QEMU was started, as
the line arrives. Two kinds of boot are understood:
  - Outpost's: GRUB's "outpost-grub: booting" line, then outpostd's `boot:` line
    (printed right after the ready line) with each early-boot step measured on
    the guest's clock from the kernel's start;
  - the baseline's: GRUB's line, then "baseline: up UPTIME" from a busybox init
    that prints /proc/uptime (seconds since the kernel started) and powers off.
The guest's clock under TCG follows the host's, so the kernel's start on the host
is the marker's arrival minus the guest's own figure.

usage: boot-phases.py MARKER OUTPOST-RUN-ARGUMENTS...   (prints one JSON object)
"""
import json
import re
import subprocess
import sys
import time

marker, command = sys.argv[1], sys.argv[2:]
started = time.monotonic()
stamps = []  # (seconds since start, line)
with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as run:
    for raw in run.stdout:
        stamps.append((time.monotonic() - started, raw.decode("utf-8", "replace").rstrip("\r\n")))
    run.wait(timeout=60)
total = time.monotonic() - started


def first(text):
    return next(((t, line) for t, line in stamps if text in line), (None, None))


grub_at, _ = first("outpost-grub: booting")
phases = {"firmware (QEMU start to GRUB's first line)": grub_at}
marker_at, marker_line = first(marker)
boot_at, boot_line = first("outpost: boot: ")
if boot_line:
    # "boot: kernel 2.91 s, modules 0.21 s, ...; ready 6.02 s after the kernel started"
    body = boot_line.split("outpost: boot: ", 1)[1]
    steps_text, ready_text = body.split("; ready ")
    steps = [(m.group(1), float(m.group(2))) for m in re.finditer(r"([a-z ]+?) (\d+\.\d+) s", steps_text)]
    ready_after_kernel = float(ready_text.split(" ")[0])
    kernel_at = marker_at - ready_after_kernel
    phases["GRUB, kernel and initramfs load and unpacking"] = kernel_at - grub_at
    for name, seconds in steps:
        phases["kernel to init" if name.strip() == "kernel" else "outpostd: " + name.strip()] = seconds
elif marker_line and "baseline: up" in marker_line:
    uptime = float(marker_line.split("baseline: up", 1)[1].split()[0])
    kernel_at = marker_at - uptime
    phases["GRUB, kernel and initramfs load and unpacking"] = kernel_at - grub_at
    phases["kernel to init"] = uptime
print(json.dumps({"toMarker": marker_at, "total": total, "phases": phases, "exit": run.returncode}))
