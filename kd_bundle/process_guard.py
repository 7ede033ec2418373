"""Tie a server's life to its owner's, however the owner ends (kill -9, the OOM killer, a pod eviction included).

    python -m kd_bundle.process_guard OWNER_PID -- COMMAND ...   # run COMMAND; stop it when OWNER_PID is gone
    python -m kd_bundle.process_guard OWNER_PID --pid PID        # stop the existing process PID likewise

The owner cannot be trusted to clean up (a SIGKILL runs no handler), and PR_SET_PDEATHSIG set on the server itself
fires when the *thread* that started it exits, while runs start servers from worker threads. So a small guard
process sits between them: the owner's child and the server's parent, started in its own process group. It runs the
server with PR_SET_PDEATHSIG (its one thread lives as long as it does, so killing the guard kills the server),
polls its parent, and when the owner is gone (its parent pid changes) it stops the server and exits. SIGTERM,
SIGINT or SIGHUP to the guard stop the server the same way. Standard library only, so it starts in ~50 ms.
On systems without prctl (macOS) the owner check still works; only a hard kill of the guard itself leaves the server.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

POLL_S = 0.2
GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1


def guarded_command(command: list[str], owner_pid: int | None = None) -> list[str]:
    """`command` wrapped so that it stops when `owner_pid` (default: this process) is gone. Start the result with
    `start_new_session=True` so that `os.killpg(guard_pid, ...)` reaches the guard and the server together."""
    return [sys.executable, "-m", "kd_bundle.process_guard", str(owner_pid or os.getpid()), "--", *command]


def guard_pid(pid: int, owner_pid: int | None = None) -> subprocess.Popen:
    """Adopt a process some library started (e.g. Prefect's temporary API server): stop it when we are gone."""
    command = [sys.executable, "-m", "kd_bundle.process_guard", str(owner_pid or os.getpid()), "--pid", str(pid)]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the thread that forked it exits (Linux); no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] not in {"--", "--pid"}:
        print(__doc__, file=sys.stderr)
        return 2
    owner = int(argv[0])
    stop_requested: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda received, _frame: stop_requested.append(received))
    if argv[1] == "--pid":  # an adopted process: stop it at once if its owner died before we started
        return _watch(int(argv[2]), owner, stop_requested)
    if os.getppid() != owner:
        return 3  # the owner died before we started: start nothing
    child = subprocess.Popen(argv[2:], stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)  # noqa: PLW1509 (one thread)
    while True:
        try:
            code = child.wait(timeout=POLL_S)
            return code if code >= 0 else 128 - code
        except subprocess.TimeoutExpired:
            pass
        if stop_requested or os.getppid() != owner:
            child.terminate()
            try:
                child.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            return 128 + (stop_requested[0] if stop_requested else signal.SIGTERM)


def _watch(pid: int, owner: int, stop_requested: list[int]) -> int:
    while pid_alive(pid):
        if stop_requested or os.getppid() != owner:
            _signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + GRACE_S
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(POLL_S)
            _signal(pid, signal.SIGKILL)
            return 0
        time.sleep(POLL_S)
    return 0


def pid_alive(pid: int) -> bool:
    """Whether `pid` still runs; an exited child of ours is reaped first, so a zombie does not count as alive."""
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
