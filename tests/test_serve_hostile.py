"""`charrnn serve` over HTTP against clients that misbehave (issue 27, section 1): the real server in a
subprocess on a loopback port, attacked with raw sockets in bounded loops, with a normal client (httpx,
urllib) that must still be served, within bounds, while the attack runs. The timeouts are set low by
their options so that each test takes seconds."""

from __future__ import annotations

import json
import resource
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from serverproc import JSON, Server  # noqa: E402

from charrnn.cli import cli  # noqa: E402

TINY = ["--hidden", "16", "--layers", "1", "-b", "4", "-t", "16", "--val-every", "4", "-q", "--precision", "fp32"]
FAST = ["--header-timeout", "1", "--body-timeout", "1", "--send-timeout", "1"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile-http")
    words = "the time traveller smiled and we sat about the fire in the room while he spoke".split()
    (d / "c.txt").write_text("\n".join(" ".join(words[i % 7:]) for i in range(60)) + "\n", encoding="utf-8")
    r = CliRunner().invoke(cli, ["train", str(d / "c.txt"), "-o", str(d / "m.pt"), *TINY, "--max-steps", "4"])
    assert r.exit_code == 0, r.stderr
    return d


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    s = Server("-m", str(home / "m.pt"), *FAST, "--max-requests", "4", "--max-body-bytes", "4096",
               "--max-n", "10000000", "--allow-host", "charrnn.example")
    yield s
    code, out = s.stop()
    assert code == 0 and out == b"", "".join(s.lines)
    assert "Traceback" not in "".join(s.lines)


def raw(port: int, data: bytes = b"", timeout: float = 5) -> socket.socket:
    """A connection that has sent `data` and nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if data:
        sock.sendall(data)
    return sock


def answer_of(sock: socket.socket, timeout: float = 5) -> bytes:
    """What the server writes before it closes the connection (b"" for a close without a word)."""
    sock.settimeout(timeout)
    got = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            piece = sock.recv(65536)
            if not piece:
                break
            got += piece
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return got


def head(path: str, length: int | None = None, host: str = "127.0.0.1") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{size}\r\n").encode()


def served_in(s: Server, body: dict | None = None) -> float:
    """Seconds a normal client (a fresh httpx connection) takes to get a 200 from /charrnn/v1/next; retried on 503."""
    start = time.monotonic()
    with httpx.Client(base_url=s.url, timeout=10, headers=JSON) as c:
        while True:
            r = c.post("/charrnn/v1/next", json=body or {"prefix": "the", "k": 2})
            if r.status_code != 503:
                assert r.status_code == 200, r.text
                return time.monotonic() - start
            assert time.monotonic() - start < 10, r.text
            time.sleep(0.05)


def test_a_body_that_stops_halfway_frees_its_slot_and_healthz_stays_outside(server: Server) -> None:
    """Four clients (--max-requests 4) send a head and part of a body and stop: /healthz still answers at
    once, and each of them gets a JSON 408 when --body-timeout passes, which frees the slots."""
    stuck = [raw(server.port, head("/charrnn/v1/next", 100) + b'{"prefix": ') for _ in range(4)]
    time.sleep(0.2)  # their requests have reached the application
    start = time.monotonic()
    assert server.client.get("/healthz").status_code == 200  # not counted against --max-requests
    assert time.monotonic() - start < 1
    busy = server.client.post("/charrnn/v1/next", json={"k": 1})
    assert busy.status_code == 503 and "--max-requests" in busy.json()["error"]
    for sock in stuck:
        got = answer_of(sock)
        assert got.startswith(b"HTTP/1.1 408 ") and b"--body-timeout" in got, got
    assert served_in(server) < 2


def test_heads_that_never_end_are_closed_and_others_are_served_meanwhile(server: Server) -> None:
    slow = [raw(server.port, b"POST /v1/next HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ") for _ in range(20)]
    silent = [raw(server.port) for _ in range(5)]
    took = served_in(server)
    assert took < 1, took
    start = time.monotonic()
    answers = [answer_of(sock) for sock in slow]
    assert time.monotonic() - start < 4
    assert all(a.startswith(b"HTTP/1.1 408 ") and b"--header-timeout" in a for a in answers), answers[0]
    assert all(answer_of(sock) == b"" for sock in silent)  # nothing sent, nothing said: closed


def test_a_lowered_descriptor_limit_still_serves_normal_clients(home: Path) -> None:
    """150 connections that never finish their heads against a limit of 128 descriptors: the server keeps
    its connections below the limit, closing the one that waited longest to make room, so a normal
    client is served at once and stderr holds no 'Too many open files'."""
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    s = Server("-m", str(home / "m.pt"), "--header-timeout", "30", preexec_fn=lower)
    try:
        assert any("at most" in line and "--max-connections" in line for line in s.lines), s.lines
        attackers, times = [], []
        for i in range(150):
            try:
                attackers.append(raw(s.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", timeout=2))
            except OSError:  # the listen queue is full for a moment: the attacker goes on
                pass
            if i % 50 == 49:
                times.append(served_in(s))
        times.append(served_in(s))
        print("normal client served in", [round(t, 3) for t in times], "s")
        assert max(times) < 2, times
        assert s.client.get("/healthz").status_code == 200
    finally:
        for sock in attackers:
            sock.close()
        code, _ = s.stop()
    err = "".join(s.lines)
    assert code == 0 and "Too many open files" not in err and "Traceback" not in err, err[-2000:]


def test_a_413_is_read_by_clients_that_send_the_whole_body_first(server: Server) -> None:
    big = json.dumps({"prefix": "a" * 200_000}).encode()  # the limit here is 4096 bytes
    request = urllib.request.Request(server.url + "/charrnn/v1/next", data=big, headers=JSON)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=10)
    assert e.value.code == 413 and "--max-body-bytes" in json.loads(e.value.read())["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, found past the limit, drained
        for _ in range(50):
            yield b"a" * 4000

    request = urllib.request.Request(server.url + "/charrnn/v1/next", data=chunks(), headers=JSON)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=10)
    assert e.value.code == 413
    assert served_in(server) < 1


@pytest.mark.parametrize(("headers", "status", "needle"), [
    ({"Host": "attacker.example"}, 403, "the Host header 'attacker.example' does not name this server"),
    ({"Host": "attacker.example:8000"}, 403, "--allow-host"),
    ({"Content-Type": "text/plain"}, 415, "application/json, got 'text/plain'"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "Content-Type: application/json"),
    ({"Content-Type": ""}, 415, "Content-Type"),
])
def test_only_this_servers_names_and_json_bodies(server: Server, headers: dict, status: int, needle: str) -> None:
    """A page in the user's browser reaches the API through a name it controls (DNS rebinding) or a
    simple cross-origin POST (text/plain, form): both are refused, as JSON."""
    r = server.client.post("/charrnn/v1/next", content=b'{"k": 1}', headers=headers)
    assert r.status_code == status and needle in r.json()["error"], r.text


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST.", "[::1]:8000", "10.1.2.3",
                                  "charrnn.example:80"])
def test_ip_addresses_localhost_and_allowed_names_are_served(server: Server, host: str) -> None:
    r = server.client.post("/charrnn/v1/next", json={"k": 1}, headers={"Host": host})
    assert r.status_code == 200, r.text
    assert server.client.post("/charrnn/v1/next", json={"k": 1},
                              headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 200


def test_the_access_log_escapes_what_could_forge_a_line(server: Server) -> None:
    r = server.client.post("/v1/%0a127.0.0.1:1%20%22POST%20/v1/next%22%20200%07", json={})
    assert r.status_code == 404
    (line,) = server.access('POST /v1/\\n127.0.0.1:1 \\"POST /v1/next\\" 200\\x07', timeout=10)
    assert "\x07" not in "".join(server.lines) and line.count("\n") == 1
    assert not any(x.startswith("127.0.0.1:1 ") for x in server.lines)


def test_a_lone_surrogate_and_extreme_temperatures_get_answers_not_500(server: Server) -> None:
    r = server.client.post("/charrnn/v1/next", content=b'{"prefix": "the\\ud800"}')
    assert r.status_code == 400 and "\\ud800 alone" in r.json()["error"]
    r = server.client.post("/charrnn/v1/score", content=b'{"records": ["\\udfff"]}')
    assert r.status_code == 400 and '"records"[0]' in r.json()["error"]
    for temperature in (1e-300, 1e39):
        for extra in ({}, {"stop": "\n"}):  # the batched engine, and the pool's sampler
            r = server.client.post("/charrnn/v1/generate", json={"prefix": "the ", "n": 20, "seed": 1,
                                                         "temperature": temperature, **extra})
            assert r.status_code == 200, (temperature, extra, r.text)


def test_a_public_bind_warns_and_sighup_stops_gracefully(home: Path) -> None:
    s = Server("-m", str(home / "m.pt"), "--host", "0.0.0.0", "--max-n", "10000000")
    try:
        assert any(line.startswith("Warning: ") and "no authentication" in line for line in s.lines), s.lines
        body = json.dumps({"n": 3000, "seed": 2, "stream": True})
        with s.client.stream("POST", "/charrnn/v1/generate", content=body) as r:
            lines = r.iter_lines()
            first = json.loads(next(lines))
            s.proc.send_signal(signal.SIGHUP)  # graceful, as SIGTERM: the stream in flight finishes
            rest = [json.loads(line) for line in lines if line]
        assert rest[-1] == {"done": True, "seed": 2}
        assert len(first["text"] + "".join(x.get("text", "") for x in rest)) == 3000
    finally:
        code, out = s.stop(None)
    assert code == 0 and out == b"" and s.lines[-1].strip() == "stopped", "".join(s.lines)


def test_a_stream_whose_client_stops_reading_is_dropped(server: Server) -> None:
    """The client reads the first line and then nothing: the socket's buffers fill, the stream's writes
    wait, and after --send-timeout (1 s here) it is dropped, its generation stopped."""
    sock = stalled_stream(server.port, 64)
    try:
        start = time.monotonic()
        deadline = start + 60
        while not any("--send-timeout" in line for line in server.lines):
            assert time.monotonic() < deadline, "".join(server.lines[-5:])
            time.sleep(0.05)
        print(f"stream dropped {time.monotonic() - start:.1f} s after its client stopped reading")
        while server.client.get("/healthz").json()["models"]["m"]["generating"]:
            assert time.monotonic() < deadline, "the generation went on after its stream was dropped"
            time.sleep(0.05)
    finally:
        sock.close()
    assert served_in(server) < 1


def stalled_stream(port: int, num_samples: int) -> socket.socket:
    """A streamed generation whose client reads its head and then nothing (small buffers fill at once)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    body = json.dumps({"n": 5_000_000, "num_samples": num_samples, "stream": True}).encode()
    sock.sendall(head("/charrnn/v1/generate", len(body)) + body)
    assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
    return sock


def test_a_paused_stream_leaves_its_rows_to_the_others(home: Path) -> None:
    """--max-streams 64 and a stream of 64 samples whose client stops reading: once paused it is parked out
    of the engine, so another generation runs at once instead of waiting for --send-timeout (30 s here)."""
    s = Server("-m", str(home / "m.pt"), "--max-streams", "64", "--send-timeout", "30", "--max-n", "10000000")
    try:
        sock = stalled_stream(s.port, 64)
        deadline = time.monotonic() + 60
        while s.client.get("/healthz").json()["models"]["m"]["paused"] < 1:
            assert time.monotonic() < deadline, "the stream never paused"
            time.sleep(0.05)
        start = time.monotonic()
        r = s.client.post("/charrnn/v1/generate", json={"n": 200, "seed": 1})
        took = time.monotonic() - start
        print(f"a generation beside a stalled stream of 64 samples took {took:.2f} s")
        assert r.status_code == 200 and len(r.json()["samples"][0]) == 200 and took < 5, took
        load = s.client.get("/healthz").json()
        assert load["models"]["m"]["paused"] == 1 and load["models"]["m"]["waiting"] == 0, load
        sock.close()
        while s.client.get("/healthz").json()["models"]["m"]["generating"]:
            assert time.monotonic() < deadline, "the parked stream went on after its client left"
            time.sleep(0.05)
    finally:
        code, _ = s.stop()
    assert code == 0


def test_clients_that_go_away_free_the_shared_threads(server: Server) -> None:
    """Three generations with a stop string (the shared pool's work, minutes each) sent and dropped: the
    pool stops them at their next piece, and a score request is answered at once."""
    body = json.dumps({"n": 5_000_000, "stop": "zzzzzzzz", "num_samples": 4}).encode()
    dropped = [raw(server.port, head("/charrnn/v1/generate", len(body)) + body) for _ in range(3)]
    deadline = time.monotonic() + 30
    while server.client.get("/healthz").json()["pool"]["running"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert server.client.get("/healthz").json()["pool"] == {"running": 2, "waiting": 1}
    for sock in dropped:
        sock.close()
    start = time.monotonic()
    r = server.client.post("/charrnn/v1/score", json={"records": ["the time"]})
    took = time.monotonic() - start
    print(f"a score after three dropped generations took {took:.2f} s")
    assert r.status_code == 200 and took < 3, took
    while server.client.get("/healthz").json()["pool"]["running"]:
        assert time.monotonic() < deadline, "the pool's work went on after its clients left"
        time.sleep(0.05)


@pytest.mark.parametrize("data", [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000])
def test_a_malformed_or_oversized_head_gets_a_json_400(server: Server, data: bytes) -> None:
    got = answer_of(raw(server.port, data))
    assert got.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in got.lower(), got[:300]
    assert json.loads(got.split(b"\r\n\r\n", 1)[1])["error"].startswith("malformed HTTP request")
    assert served_in(server) < 1
