"""The test harness's ports: a server a test starts never listens on a port the kernel may hand
to an outgoing connection meanwhile."""

from __future__ import annotations

import socket

from support.harness import EPHEMERAL, SERVER_PORTS, free_port, free_port_pair


def test_free_ports_are_outside_the_ephemeral_range_and_bindable():
    assert SERVER_PORTS[1] <= EPHEMERAL[0]
    ports = {free_port() for _ in range(50)}
    assert all(SERVER_PORTS[0] <= p < SERVER_PORTS[1] for p in ports)
    assert len(ports) > 40  # drawn at random, not one after another from a shared start
    for port in list(ports)[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_taken_port_is_never_given():
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        assert all(free_port() != taken for _ in range(200))


def test_a_port_pair_is_two_free_ports_in_the_server_range():
    port = free_port_pair()
    assert SERVER_PORTS[0] <= port and port + 1 < SERVER_PORTS[1]
    for p in (port, port + 1):
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
