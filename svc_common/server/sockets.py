"""Ending a connection from outside the code that is waiting on it."""

import os
import socket

from gevent.monkey import get_original

# The standard library's socket class as it was before gevent patched it (gevent's public way to it).
_UNPATCHED_SOCKET: type[socket.socket] = get_original("socket", "socket")


def shut_down(fd: int) -> None:
    """Shut down, for reading and writing, the connection behind descriptor ``fd``: whoever waits to
    read from it reads its end (or an error) at once. Done on a duplicate descriptor, since shutdown
    acts on the connection itself, and with the standard library's socket, not gevent's: gevent's
    ``shutdown`` wakes the greenlets waiting on its own object with an error instead. Quiet when the
    connection is gone already."""
    if fd < 0:
        return
    try:
        duplicate = _UNPATCHED_SOCKET(fileno=os.dup(fd))
    except OSError:  # closed meanwhile
        return
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:  # the peer has gone already
        pass
    finally:
        duplicate.close()
