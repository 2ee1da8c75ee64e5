"""Hostile clients against the release binary: each one is held to a bound, and the node
keeps serving everyone else."""

import asyncio
import base64
import os
import socket
import struct
import time

import websockets

from conftest import API_KEY


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw_upgrade(server, path):
    """A raw socket past the WebSocket handshake, for sending frames by hand."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def masked(opcode, payload):
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


def still_serves(server):
    async def check():
        url = f"ws://{server.base}/ws/chat/ok?token={server.token('other')}"
        async with websockets.connect(url) as ws:
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 5) == "still here"
    asyncio.run(check())


def test_a_ping_flood_from_a_client_that_never_reads_is_held_to_the_queue_bound(make_server):
    # No message rate, to show the queue bound alone: pongs count against max_queued_bytes
    # (1 MiB by default), past which the client is closed as a slow consumer.
    server = make_server(env={"SWITCHBOARD_CLIENT_MESSAGE_RATE": "0"})
    sock = raw_upgrade(server, f"/ws/chat/flood?token={server.token('mallory')}")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    before = rss_kib(server.proc.pid)
    ping = masked(0x9, b"p" * 125)
    burst = ping * 1000
    deadline = time.monotonic() + 20
    sent = 0
    sock.settimeout(2)
    try:
        while sent < 200_000 and time.monotonic() < deadline:
            sock.sendall(burst)
            sent += 1000
    except (socket.timeout, OSError):
        pass  # the node stopped reading a client that does not read: the bound holds
    time.sleep(0.5)
    grown = rss_kib(server.proc.pid) - before
    # 200k queued pongs would be over 25 MiB; the bound is 1 MiB of queue plus bookkeeping.
    assert grown < 8 * 1024, f"RSS grew {grown} KiB after {sent} pings"
    still_serves(server)
    sock.close()


def test_a_ping_flood_is_closed_by_the_message_rate(make_server):
    server = make_server(env={"SWITCHBOARD_CLIENT_MESSAGE_RATE": "50"})
    sock = raw_upgrade(server, f"/ws/chat/flood?token={server.token('mallory')}")
    sock.sendall(masked(0x9, b"x") * 500)
    sock.settimeout(5)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        at = data.find(b"\x88")
        if at >= 0 and len(data) >= at + 4:
            break
    at = data.find(b"\x88")
    assert at >= 0, "no close frame"
    assert struct.unpack(">H", data[at + 2:at + 4])[0] == 4004
    sock.close()
    still_serves(server)


def test_slowloris_headers_from_one_address_are_held_to_the_per_ip_pending_bound(make_server):
    # Each socket sends part of a request and then nothing. From one address at most
    # server.max_pending_handshakes_per_ip (256 by default) are kept; the rest are closed at
    # once, before the node reads or answers anything; other addresses are served meanwhile.
    server = make_server(env={"SWITCHBOARD_HANDSHAKE_TIMEOUT": "60s"})
    before = rss_kib(server.proc.pid)
    opened = []
    for _ in range(1000):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        try:
            sock.sendall(b"GET /ws/chat/a HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        except OSError:
            pass  # closed already
        opened.append(sock)
    closed = set()
    deadline = time.monotonic() + 20
    while len(closed) < 1000 - 256 and time.monotonic() < deadline:
        for i, sock in enumerate(opened):
            if i in closed:
                continue
            sock.setblocking(False)
            try:
                if sock.recv(4096) == b"":
                    closed.add(i)
            except BlockingIOError:
                pass
            except OSError:
                closed.add(i)
        time.sleep(0.05)
    held = rss_kib(server.proc.pid) - before
    assert len(closed) == 1000 - 256, f"{len(closed)} of 1000 closed"
    assert min(closed) >= 256, "the first 256 are the ones kept"

    async def other_address():
        url = f"ws://{server.base}/ws/chat/ok?token={server.token('other')}"
        async with websockets.connect(url, local_addr=("127.0.0.2", 0)) as ws:
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 5) == "still here"
    asyncio.run(other_address())
    print(f"RSS grew {held} KiB with 256 slow sockets held, 744 closed")
    for sock in opened:
        sock.close()
    # The node frees the places as it sees the sockets end; until then 127.0.0.1 is refused.
    deadline = time.monotonic() + 10
    while True:
        try:
            _, body = server.get("/metrics")
            break
        except OSError:
            assert time.monotonic() < deadline, "127.0.0.1 is served again once its sockets end"
            time.sleep(0.05)
    assert 'switchboard_pending_closed_total{reason="per_ip"} 744' in body, body
