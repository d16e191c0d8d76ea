"""svc_common.server.sockets.shut_down: whoever waits on the connection reads its end at once. (Under
gevent, in the worker, tests/e2e/test_graceful_stop.py: idle keep-alive connections closed on SIGTERM.)"""

import socket
import threading

from svc_common.server.sockets import shut_down


def test_a_reader_waiting_on_the_connection_reads_its_end_and_the_peer_sees_it_closed():
    ours, peer = socket.socketpair()
    read = []
    reader = threading.Thread(target=lambda: read.append(ours.recv(10)))
    reader.start()
    shut_down(ours.fileno())
    reader.join(timeout=5)
    assert not reader.is_alive() and read == [b""]
    assert peer.recv(10) == b""  # the peer reads the end too
    ours.close(), peer.close()


def test_a_connection_its_peer_has_closed_or_no_descriptor_is_quietly_passed_over():
    ours, peer = socket.socketpair()
    peer.close()
    shut_down(ours.fileno())
    assert ours.recv(10) == b""
    ours.close()
    shut_down(-1)
