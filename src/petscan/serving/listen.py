"""Where the project's servers listen: a loud warning off loopback, and a URL announced only
once the port answers.

`petscan app` and `petscan serve` listen on `app.host` / `serve.host` (127.0.0.1 by default).
Any other address makes the page or the scoring server reachable from other machines,
without a password: `exposure_warning` is the one stderr line that says so.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """True when every address `host` stands for is a loopback address (127.0.0.0/8, ::1).

    An empty host, 0.0.0.0 and :: (every interface) are not; a name that does not resolve
    is not either (it cannot be shown to be local)."""
    host = host.strip().strip("[]")
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def exposure_warning(host: str, setting: str, what: str) -> str | None:
    """The one-line warning for a non-loopback `host` (None on loopback).

    `setting` names where the host came from (`app.host`, `--host`), `what` the server."""
    if is_loopback(host):
        return None
    return (
        f"WARNING: {setting} = {host!r} is not a loopback address: {what} will be reachable "
        "from other machines, without a password. Use 127.0.0.1 unless you mean it."
    )


def warn_if_exposed(prog: str, host: str, setting: str, what: str) -> None:
    """Print `exposure_warning` to stderr (one line, `prog: WARNING: ...`) when it applies."""
    warning = exposure_warning(host, setting, what)
    if warning:
        print(f"{prog}: {warning}", file=sys.stderr, flush=True)


def connect_host(host: str) -> str:
    """The address a local client uses to reach a server bound to `host`."""
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def port_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when a TCP connection to (host, port) is accepted."""
    try:
        with socket.create_connection((connect_host(host), port), timeout=timeout_s):
            return True
    except OSError:
        return False


def bound_port(server: Any, default: int) -> int:
    """The port a started uvicorn server listens on (`default` when it cannot tell)."""
    for listener in getattr(server, "servers", None) or []:
        for sock in listener.sockets or []:
            return int(sock.getsockname()[1])
    return default


def announce_when_listening(
    server: Any,
    host: str,
    port: int,
    announce: Callable[[int], None],
    timeout_s: float = 600.0,
) -> threading.Thread:
    """Call `announce(port)` from a thread once the uvicorn `server` has started and its port
    accepts a connection; never when it stops (or `timeout_s` passes) before that."""

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not server.should_exit:
            if server.started:
                actual = bound_port(server, port)
                if port_answers(host, actual):
                    announce(actual)
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, name="petscan-announce", daemon=True)
    thread.start()
    return thread
