"""The gateway as a process: signals, CLI, configuration errors and logs, with a Python
`websockets` client over real sockets."""

import asyncio
import json
import signal
import socket
import subprocess

import pytest
import websockets

from conftest import API_KEY, BINARY, SECRET


def run(*args, env=None, check=False):
    return subprocess.run([str(BINARY), *args], env=env or {}, capture_output=True, text=True, timeout=15, check=check)


async def recv_text(ws, timeout=5.0):
    return await asyncio.wait_for(ws.recv(), timeout)


def test_room_members_and_api_publications_reach_a_python_client(server):
    async def scenario():
        url = f"ws://{server.base}/ws/chat/py?token={server.token('alice')}"
        async with websockets.connect(url) as a, websockets.connect(url) as b:
            await a.send("hello from python")
            assert await recv_text(a) == "hello from python"
            assert await recv_text(b) == "hello from python"
            status, body = await asyncio.to_thread(server.api, "publish", {"channel": "chat:py", "data": {"n": 1}})
            assert (status, body) == (200, {"result": {}})
            # The API keeps `data` byte for byte as sent (json.dumps writes a space after ':').
            assert await recv_text(b) == '{"n": 1}'

    asyncio.run(scenario())


def test_sigterm_sends_1001_to_clients_and_exits_0(server):
    async def scenario():
        url = f"ws://{server.base}/ws/chat/bye?token={server.token('u')}"
        async with websockets.connect(url) as ws:
            server.proc.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd.code == 1001

    asyncio.run(scenario())
    assert server.proc.wait(timeout=15) == 0
    phases = [e.get("phase") for e in server.log_events() if e.get("event") == "shutdown"]
    assert "draining" in phases and "drained" in phases, phases


def test_sigint_exits_0_with_no_clients(server):
    assert server.stop(signal.SIGINT) == 0


def test_logs_are_json_lines_with_connection_fields_and_no_secrets(server):
    token = server.token("log-user")

    async def scenario():
        url = f"ws://{server.base}/ws/chat/logs?token={token}"
        async with websockets.connect(url, additional_headers={"X-Trace-ID": "trace-py-1"}) as ws:
            await ws.send("x")
            await recv_text(ws)
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(f"ws://{server.base}/ws/chat/logs?token=bad.token.value")

    asyncio.run(scenario())
    server.stop()
    events = server.log_events()
    assert events, "log lines are JSON"
    connected = next(e for e in events if e.get("event") == "connected")
    assert connected["user"] == "log-user" and connected["trace_id"] == "trace-py-1"
    assert connected["door"] == "chat" and connected["channel"] == "chat:logs"
    assert "timestamp" in connected and "level" in connected and connected["ip"] == "127.0.0.1"
    disconnected = next(e for e in events if e.get("event") == "disconnected")
    assert disconnected["messages_in"] == 1 and disconnected["messages_out"] >= 1
    assert {"code", "reason", "duration_ms", "bytes_in", "bytes_out"} <= disconnected.keys()
    assert any(e.get("event") == "auth_failed" for e in events)
    text = server.read_log()
    for secret in (SECRET, API_KEY, token):
        assert secret not in text, "a secret leaked into the log"


def test_log_lines_reach_the_log_while_the_server_runs(server):
    # Lines are batched in memory; the batch must still be written out without a stop.
    token = server.token("live-log-user")

    async def scenario():
        url = f"ws://{server.base}/ws/chat/live-logs?token={token}"
        async with websockets.connect(url) as ws:
            await ws.send("x")
            await recv_text(ws)
            for _ in range(100):
                events = server.log_events()
                if any(e.get("event") == "connected" and e.get("user") == "live-log-user" for e in events):
                    return True
                await asyncio.sleep(0.05)
            return False

    assert asyncio.run(scenario()), "the connected line was not written within 5 s"
    assert server.proc.poll() is None


def test_an_invalid_environment_value_stops_the_start_naming_the_variable(tmp_path):
    result = run("serve", env={"SWITCHBOARD_MAX_MESSAGE_BYTES": "lots"})
    assert result.returncode != 0
    assert "SWITCHBOARD_MAX_MESSAGE_BYTES" in result.stderr


def test_flags_override_environment(make_server):
    import conftest
    env_port, flag_port = conftest.free_port(), conftest.free_port()
    server = make_server(env={"SWITCHBOARD_LISTEN": f"127.0.0.1:{env_port}"}, args=["--listen", f"127.0.0.1:{flag_port}"], port=flag_port)
    assert server.get("/healthz") == (200, "ok")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", env_port), timeout=2).close()


def test_genconfig_output_passes_checkconfig(tmp_path):
    path = tmp_path / "switchboard.toml"
    run("genconfig", "--output", str(path), check=True)
    assert "max_message_bytes = 65536" in path.read_text()
    result = run("checkconfig", str(path))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_checkconfig_names_an_unknown_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[limits]\nmax_mesage_bytes = 10\n")
    result = run("checkconfig", str(path))
    assert result.returncode != 0
    assert "max_mesage_bytes" in result.stderr


def test_token_command_mints_a_token_the_server_accepts(server):
    token = server.token("cli-user", ttl="5m")
    assert token.count(".") == 2

    async def scenario():
        async with websockets.connect(f"ws://{server.base}/ws/notify/user/cli-user?token={token}") as ws:
            await asyncio.to_thread(server.api, "publish", {"channel": "#cli-user", "data": "pushed"})
            assert await recv_text(ws) == "pushed"

    asyncio.run(scenario())


def test_dev_mode_opens_echo_and_anonymous_rooms(make_server):
    server = make_server(args=["--dev"], env={"SWITCHBOARD_TOKEN_HMAC_SECRET": "", "SWITCHBOARD_API_KEY": ""})

    async def scenario():
        async with websockets.connect(f"ws://{server.base}/ws", origin="http://localhost:5173") as ws:
            await ws.send("echo me")
            assert await recv_text(ws) == "echo me"
        async with websockets.connect(f"ws://{server.base}/ws/chat/open") as ws:
            await asyncio.to_thread(server.api, "publish", {"channel": "chat:open", "data": "open api in dev"}, "")
            assert await recv_text(ws) == "open api in dev"

    asyncio.run(scenario())


def test_bad_input_from_python_gets_its_close_code_and_others_are_served(server):
    async def scenario():
        url = f"ws://{server.base}/ws/chat/big?token={server.token('u')}"
        async with websockets.connect(url, max_size=None) as big:
            await big.send("x" * 70_000)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(big.recv(), 5)
            assert closed.value.rcvd.code == 1009
        async with websockets.connect(url) as other:
            await other.send("fine")
            assert await recv_text(other) == "fine"

    asyncio.run(scenario())


def test_dev_mode_refuses_to_start_off_loopback_and_names_the_override(tmp_path):
    # Refused before anything is bound: no socket is opened on the network.
    out = run("serve", "--dev", "--listen", "0.0.0.0:1", env={"PATH": ""})
    assert out.returncode != 0
    assert "dev_insecure_on_network" in out.stderr + out.stdout


# Start-up as a new user meets it: every refusal says once what is wrong and where, and exits
# non-zero; a refused start leaves a server that is already running serving.

def test_a_missing_config_file_is_reported_once_with_its_path(tmp_path):
    missing = tmp_path / "nope.toml"
    out = run("serve", "--config", str(missing), env={"PATH": ""})
    assert out.returncode == 1
    assert str(missing) in out.stderr
    assert out.stderr.count("No such file or directory") == 1, out.stderr


def test_a_port_in_use_is_reported_once_with_the_address_and_the_holder_keeps_serving(server):
    out = run("serve", "--listen", server.base, env={"PATH": "", "SWITCHBOARD_TOKEN_HMAC_SECRET": SECRET})
    assert out.returncode == 1
    assert f"cannot listen on {server.base}" in out.stderr, out.stderr
    assert out.stderr.count("in use") == 1, out.stderr
    assert server.get("/healthz") == (200, "ok")


def test_a_bad_log_level_is_reported_once_naming_the_key(tmp_path):
    out = run("serve", "--log-level", "info,switchboard=loud", env={"PATH": ""})
    assert out.returncode == 1
    assert "log.level" in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    message = lines[0].split("log.level", 1)[1]
    # each part of the chain once: no sentence of it repeats
    parts = [p.strip() for p in message.split(": ") if p.strip()]
    assert len(parts) == len(set(parts)), out.stderr


def test_an_error_in_the_channels_table_names_the_key_and_its_line(tmp_path):
    path = tmp_path / "channels.toml"
    path.write_text("[channels]\npresence = true\nsubscribe = \"everyone\"\n")
    out = run("checkconfig", str(path), env={"PATH": ""})
    assert out.returncode == 1
    assert "channels.subscribe (line 3)" in out.stderr, out.stderr
    path.write_text("[channels]\nhistory_size = -5\n")
    out = run("serve", "--config", str(path), env={"PATH": ""})
    assert out.returncode == 1
    assert "channels.history_size (line 2)" in out.stderr, out.stderr


def test_a_misspelt_switchboard_variable_stops_the_start_naming_the_closest_known_one(server):
    out = run("serve", env={"PATH": "", "SWITCHBOARD_LISTN": "127.0.0.1:1"})
    assert out.returncode == 1
    assert "unknown environment variable SWITCHBOARD_LISTN" in out.stderr, out.stderr
    assert "did you mean SWITCHBOARD_LISTEN?" in out.stderr, out.stderr
    # The variables the project's own scripts export are not refused.
    out = run("checkconfig", "/dev/null", env={"PATH": "", "SWITCHBOARD_BIN": "x", "SWITCHBOARD_SHARED": "y"})
    assert out.returncode == 0, out.stderr
    assert server.get("/healthz") == (200, "ok")


def test_recover_without_history_stops_the_start_naming_the_namespace(tmp_path):
    path = tmp_path / "recover.toml"
    path.write_text("[channels.namespaces.feed]\nrecover = true\n")
    out = run("serve", "--config", str(path), env={"PATH": ""})
    assert out.returncode == 1
    assert "channels.namespaces.feed.recover" in out.stderr and '"feed"' in out.stderr, out.stderr
    assert "history_size" in out.stderr and "history_ttl" in out.stderr, out.stderr


def test_a_host_name_as_listen_address_is_refused_with_an_ip_example(tmp_path):
    path = tmp_path / "listen.toml"
    path.write_text("[server]\nlisten = \"localhost:8000\"\n")
    out = run("serve", "--config", str(path), env={"PATH": ""})
    assert out.returncode == 1
    assert "server.listen (line 2)" in out.stderr, out.stderr
    assert "host names are not accepted" in out.stderr and "127.0.0.1:8000" in out.stderr, out.stderr
    out = run("serve", "--listen", "localhost:8000", env={"PATH": ""})
    assert out.returncode == 1
    assert "--listen" in out.stderr and "127.0.0.1:8000" in out.stderr, out.stderr


@pytest.mark.parametrize("ttl", ["-5s", "=-5s", "soon"])
def test_a_token_ttl_that_is_not_a_positive_duration_is_refused_with_an_example(ttl):
    args = ["token", "--dev", "--user", "u"] + ([f"--ttl{ttl}"] if ttl.startswith("=") else ["--ttl", ttl])
    out = run(*args, env={"PATH": ""})
    assert out.returncode == 1
    assert "--ttl" in out.stderr and "positive duration" in out.stderr and "--ttl 5m" in out.stderr, out.stderr
    assert out.stdout == ""


def test_dev_mode_logs_the_resolved_configuration(make_server):
    server = make_server(
        args=["--dev", "--log-format", "json"],
        env={"SWITCHBOARD_TOKEN_HMAC_SECRET": "", "SWITCHBOARD_API_KEY": ""},
    )
    assert server.get("/healthz") == (200, "ok")
    server.stop()
    config = next(e for e in server.log_events() if e.get("event") == "config")["config"]
    assert "allow_anonymous: Some(true)" in config, config
    assert "echo: Some(true)" in config, config
    assert "subscribe: Some(Anonymous)" in config and "recover: Some(true)" in config, config
    channels = config.split("channels: ", 1)[1].split(", log: ", 1)[0]
    assert "None" not in channels, channels
