"""Process lifetime helpers shared by every entry point."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
PARENT_ENV = "FINPULSE_PARENT_PID"


def die_with_parent() -> None:
    """When started by the launcher (FINPULSE_PARENT_PID set), get SIGTERM if the launcher dies, so a
    killed launcher leaves no orphans. Done here, in the child, rather than in a preexec_fn: forking a
    process that runs gRPC threads and then running Python code before exec is unsafe."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return  # not Linux: the launcher's own shutdown still stops its children
    if str(os.getppid()) != parent:  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
