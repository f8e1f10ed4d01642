"""Listening sockets whose failures read as one line naming the port and its setting.

`bind_socket` raises the operating system's error (`[Errno 98] Address already in
use`, `gaierror`); an operator needs to know which of the three ports (app, ops,
the development sidecar's) and which setting to change. `listen` says so with a
ListenError; `check_hosts` tries the configured host addresses before anything
starts (a bind of each, closed at once), so a host that is not an address of
this machine fails before the development sidecar tries to call it, and a taken
app port before the worker waits for its sidecar.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from typing import Final

from worker.errors import ListenError
from worker.server.serving import bind_socket
from worker.settings import Settings

_IN_USE: Final = frozenset({errno.EADDRINUSE})
_NOT_HERE: Final = frozenset({errno.EADDRNOTAVAIL})
_PRIVILEGED: Final = frozenset({errno.EACCES, errno.EPERM})


def listen_error(exc: OSError | UnicodeError, host: str, port: int, host_env: str,
                 port_env: str) -> ListenError:
    """What `exc` (raised binding host:port) means, naming the setting to change."""
    if isinstance(exc, socket.gaierror | UnicodeError):
        return ListenError(f"{host_env}={host} is not an address or host name this machine "
                           "can listen on; set it to an address of this machine (127.0.0.1, "
                           "0.0.0.0)")
    assert isinstance(exc, OSError)
    if exc.errno in _IN_USE:
        return ListenError(f"port {port} ({port_env}) is already in use; stop what listens "
                           f"there or set {port_env} to a free port")
    if exc.errno in _NOT_HERE:
        return ListenError(f"{host_env}={host} is not an address of this machine; set it to "
                           "one (127.0.0.1, 0.0.0.0)")
    if exc.errno in _PRIVILEGED:
        return ListenError(f"port {port} ({port_env}) needs privileges this process lacks; "
                           f"set {port_env} to a port above 1023")
    return ListenError(f"cannot listen on {host}:{port} ({host_env}/{port_env}): "
                       f"{exc.strerror or exc}")


def listen(host: str, port: int, host_env: str, port_env: str) -> socket.socket:
    """`bind_socket(host, port)`, its failure a ListenError naming the settings."""
    try:
        return bind_socket(host, port)
    except (OSError, UnicodeError) as exc:
        raise listen_error(exc, host, port, host_env, port_env) from None


Address = tuple[str, int, str, str]  # host, port, and the settings that name them


def check_hosts(settings: Settings, also: Sequence[Address] = ()) -> None:
    """Raise ListenError when the app or ops address cannot be listened on (a host that is
    no address here, a port already taken), before anything starts: the app port is
    otherwise bound only once the sidecar answers. Both are tried, and `also` (the
    development sidecar's), and a failure of each is told in the one line. An address
    read from the secret store is tried when it is bound (its value is not known yet)."""
    problems: list[str] = []
    refs = settings.secret_refs()
    for host, port, host_env, port_env, fields in (
            (settings.host, settings.port, "REMINDER_HOST", "REMINDER_PORT", ("host", "port")),
            (settings.ops_host, settings.ops_port, "REMINDER_OPS_HOST", "REMINDER_OPS_PORT",
             ("ops_host", "ops_port")),
            *((*address, ()) for address in also)):
        if any(f in refs for f in fields):
            continue
        try:
            bind_socket(host, port).close()
        except (OSError, UnicodeError) as exc:  # UnicodeError: idna refuses a label
            problems.append(str(listen_error(exc, host, port, host_env, port_env)))
    if problems:
        raise ListenError("; and ".join(problems))
