"""Prefect's temporary API server dies with the run that started it.

With no PREFECT_API_URL, Prefect starts its own API server as a subprocess at the first client call; a `kill -9` of
the run (or the OOM killer) leaves it running. The entry points start it themselves and hand its pid to
kd_bundle.process_guard, which stops it when the run is gone. Prefect's client then reuses that same server.
"""

from __future__ import annotations

from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL

from kd_bundle.process_guard import guard_pid


def guard_temporary_server() -> int | None:
    """Start Prefect's temporary server now, guarded; the pid of the server, or None when an API URL is set."""
    if PREFECT_API_URL.value():
        return None
    server = SubprocessASGIServer()
    server.start()
    guard_pid(server.server_process.pid)
    return server.server_process.pid
