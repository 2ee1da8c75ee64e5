"""Measures what unfinished request heads cost a node (docs/operations.md): starts the binary
named by SWITCHBOARD_BIN, opens N sockets from 127.0.0.1 that each send part of a request head
and stop, and prints the RSS growth, how many sockets the node kept, and whether another
address (127.0.0.2) is still served. A measurement, not a test: nothing is asserted.

    SWITCHBOARD_BIN=target/release/switchboard python3 tests/python/measure_slow_headers.py
"""
import os, socket, subprocess, sys, time, urllib.request

BIN = os.environ["SWITCHBOARD_BIN"]

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1])

def run(label, env, n, pad):
    port = free_port()
    full = {"PATH": os.environ["PATH"], "SWITCHBOARD_LISTEN": f"127.0.0.1:{port}",
            "SWITCHBOARD_TOKEN_HMAC_SECRET": "x" * 32, "SWITCHBOARD_API_KEY": "k",
            "SWITCHBOARD_HANDSHAKE_TIMEOUT": "120s", "SWITCHBOARD_LOG_LEVEL": "warn", **env}
    proc = subprocess.Popen([BIN, "serve"], env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1); break
        except OSError: time.sleep(0.05)
    before = rss(proc.pid)
    socks = []
    head = b"GET /ws/chat/a HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * pad
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        try: s.send(head)
        except OSError: pass
        socks.append(s)
    time.sleep(3)
    closed = 0
    for s in socks:
        try:
            if s.recv(65536) == b"": closed += 1
            else: closed += 1  # an answer (431) then close
        except BlockingIOError: pass
        except OSError: closed += 1
    after = rss(proc.pid)
    # Another address is served?
    other = socket.socket(); other.bind(("127.0.0.2", 0)); other.settimeout(5)
    other.connect(("127.0.0.1", port)); other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    served = other.recv(100).split(b"\r\n")[0].decode()
    print(f"{label}: {n} sockets x {pad} B of unfinished headers: RSS {before} -> {after} KiB "
          f"(+{after - before} KiB), {n - closed} held, {closed} closed; 127.0.0.2 /healthz: {served}")
    for s in socks: s.close()
    proc.terminate(); proc.wait()

if __name__ == "__main__":
    off = {"SWITCHBOARD_MAX_PENDING_HANDSHAKES": "0", "SWITCHBOARD_MAX_PENDING_HANDSHAKES_PER_IP": "0",
           "SWITCHBOARD_MAX_HEADER_BYTES": "262144"}
    run("bounds off, 256 KiB headers (closest to before)", off, 1000, 200_000)
    run("defaults", {}, 1000, 200_000)
    run("defaults", {}, 1000, 15_000)
