"""Who owns a run: the process that started it, and whether that process is still alive.

A run records its process id, the host name and the process's start time. When a ledger is
opened, a run still ``running`` whose process is gone *on this host* is marked ``interrupted``
(a ``kill -9`` or a power loss leaves no chance to say so). The start time tells a live process
from a later one that reuses the same id.

On Linux the start time is ``/proc/<pid>/stat``'s ``starttime`` (clock ticks since boot) with the
boot id and the pid namespace: a run from an earlier boot is gone, and a run from another pid
namespace (another container with the same host name) cannot be judged and is left alone.
Elsewhere no start time is recorded and only the process id is checked (a reused id keeps the
run ``running``: a run is never marked interrupted while its owner might be alive).
Runs owned by another host are never touched: a ledger on a shared disk cannot see their processes.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from pathlib import Path


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


@functools.cache
def _linux_context() -> tuple[str, str] | None:
    """(boot id, pid namespace) of this process, or None when /proc does not tell."""
    if not sys.platform.startswith("linux"):
        return None
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        ns = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return None
    if not boot:
        return None
    return boot, ns.removeprefix("pid:[").removesuffix("]")


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, starttime) of a process from /proc/<pid>/stat, or None when there is none."""
    text = _read(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may contain spaces and parens
    if len(fields) < 20:
        return None
    return fields[0], fields[19]  # fields 3 (state) and 22 (starttime) of proc(5)


def process_start(pid: int) -> str | None:
    """An opaque token for when process ``pid`` started, comparable on this host; None if unknown."""
    context, stat = _linux_context(), _stat(pid)
    if context is None or stat is None:
        return None
    boot, ns = context
    return f"linux:{boot}:{ns}:{stat[1]}"


def this_process() -> tuple[int, str, str | None]:
    """(pid, host name, start token) of the calling process."""
    pid = os.getpid()
    return pid, socket.gethostname(), process_start(pid)


def is_gone(pid: int, start: str | None) -> bool:
    """True when process ``pid`` that started at ``start`` (on this host) has certainly ended."""
    if start is not None and start.startswith("linux:"):
        context = _linux_context()
        parts = start.split(":")
        if context is not None and len(parts) == 4:
            _, boot, ns, starttime = parts
            if boot != context[0]:
                return True  # recorded before this host last booted
            if ns != context[1]:
                return False  # another pid namespace (container): cannot be seen from here
            stat = _stat(pid)
            return stat is None or stat[1] != starttime or stat[0] in ("Z", "X")
    if sys.platform == "win32":
        return False  # os.kill(pid, 0) would send CTRL_C_EVENT there; no check without a start time
    try:
        os.kill(pid, 0)  # signal 0: does the process exist (and may we signal it)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False  # exists, owned by someone else
    return False
