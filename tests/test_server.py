"""`charrnn serve` over HTTP (issue 20, section 3): the real server in a subprocess on a free loopback
port, talked to over HTTP with httpx. One server serves most of the module; the tests that need other
limits, or that stop the server, start their own."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from serverproc import CHARRNN, Server  # noqa: E402

from charrnn.cli import cli  # noqa: E402
from charrnn.serving.protocol import Limits, parse_generate, parse_score  # noqa: E402
from charrnn.serving.server import listen  # noqa: E402
from charrnn.serving.service import load_models, run_generate, run_score  # noqa: E402

TINY = ["--hidden", "16", "--layers", "1", "-b", "4", "-t", "16", "--val-every", "4", "-q"]


def text() -> str:
    words = "the time traveller smiled and we sat about the fire in the room while he spoke".split()
    return "\n".join(" ".join(words[(i * 5 + j) % len(words)] for j in range(8)) for i in range(40)) + "\n"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("server")
    (d / "c.txt").write_text(text(), encoding="utf-8")
    r = CliRunner().invoke(cli, ["train", str(d / "c.txt"), "-o", str(d / "m.pt"), *TINY, "--max-steps", "8",
                                 "--precision", "fp32"])
    assert r.exit_code == 0, r.stderr
    return d


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    s = Server("-m", f"tiny={home / 'm.pt'}", "-m", f"other={home / 'm.pt'}", "--max-body-bytes", "4096",
               "--max-n", "10000000", "--max-num-samples", "8", "--max-records", "4")
    yield s
    code, out = s.stop()
    assert code == 0, "".join(s.lines)
    assert out == b""  # stdout stays empty: everything is on stderr
    assert s.lines[-1].strip() == "stopped"


@pytest.fixture(scope="module")
def loaded(home: Path) -> Any:
    return load_models([("tiny", str(home / "m.pt"))], "cpu")["tiny"]


def post(s: Server, path: str, body: Any, **kw: Any) -> Any:
    return s.client.post(path, content=body if isinstance(body, (str, bytes)) else json.dumps(body), **kw)


def error(r: Any, status: int, *needles: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    message = r.json()["error"]
    assert isinstance(message, str) and "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_healthz_and_models(server: Server) -> None:
    r = server.client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert set(r.json()["models"]) == {"tiny", "other"}
    models = server.client.get("/charrnn/v1/models").json()
    assert models["default"] == "tiny"
    assert [m["name"] for m in models["models"]] == ["tiny", "other"]
    tiny = models["models"][0]
    assert (tiny["cell"], tiny["hidden"], tiny["layers"]) == ("lstm", 16, 1)
    assert tiny["vocab_size"] > 10 and tiny["training"]["step"] == 8
    assert server.access("GET /healthz") and server.access("GET /charrnn/v1/models")


def test_next_is_charrnn_complete(server: Server, home: Path) -> None:
    r = post(server, "/charrnn/v1/next", {"prefix": "the time tra", "k": 4})
    assert r.status_code == 200
    got = r.json()
    cli_answer = json.loads(subprocess.run([*CHARRNN, "complete", "-m", str(home / "m.pt"), "--prefix",
                                            "the time tra", "-k", "4", "--json", "--device", "cpu"],
                                           capture_output=True, check=True).stdout)
    assert got["prefix"] == cli_answer["prefix"]
    assert [g["char"] for g in got["next"]] == [g["char"] for g in cli_answer["next"]]
    assert [g["prob"] for g in got["next"]] == pytest.approx([g["prob"] for g in cli_answer["next"]], rel=1e-5)
    words = post(server, "/charrnn/v1/next", {"prefix": "the ", "words": 3, "model": "other"}).json()
    assert len(words["words"]) == 3 and all(set(w) == {"word", "prob"} for w in words["words"])


def test_generate_with_a_seed_is_the_service_answer(server: Server, loaded: Any) -> None:
    limits = Limits(max_n=10_000_000)
    for body in ({"prefix": "the ", "n": 60, "seed": 7, "num_samples": 3, "temperature": 0.8, "top_k": 5},
                 {"n": 20, "seed": 1, "echo": True},
                 {"prefix": "the", "n": 40, "seed": 2, "stop": " ", "num_samples": 2},  # not batched: stop strings
                 {"prefix": "the", "n": 6, "beam": 3, "num_samples": 2}):
        r = post(server, "/charrnn/v1/generate", body)
        assert r.status_code == 200, r.text
        assert r.json() == run_generate(loaded, parse_generate(body, limits)), body


def stream_lines(s: Server, body: dict) -> list[dict]:
    with s.client.stream("POST", "/charrnn/v1/generate", content=json.dumps({**body, "stream": True})) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line]


@pytest.mark.parametrize("body", [{"prefix": "we sat ", "n": 300, "seed": 3, "num_samples": 2},
                                  {"prefix": "the", "n": 50, "seed": 4, "stop": "\n", "num_samples": 3}],
                         ids=["plain", "stop"])
def test_a_streamed_generation_makes_the_same_samples(server: Server, body: dict) -> None:
    lines = stream_lines(server, body)
    assert lines[-1] == {"done": True, "seed": body["seed"]}
    samples = ["".join(line["text"] for line in lines[:-1] if line["sample"] == i) for i in range(body["num_samples"])]
    whole = post(server, "/charrnn/v1/generate", body).json()["samples"]
    # Samples that end at a stop string are listed in the order they end, and numbered in the stream
    # in the order they begin: the same samples.
    assert samples == whole if "stop" not in body else sorted(samples) == sorted(whole)


def test_score_is_eval_score(server: Server, loaded: Any) -> None:
    body = {"records": ["the time traveller", "we sat", "zzz"]}
    r = post(server, "/charrnn/v1/score", body)
    assert r.status_code == 200
    assert r.json() == run_score(loaded, parse_score(body, Limits()))


def test_32_concurrent_clients_each_get_their_own_answer(server: Server, loaded: Any) -> None:
    def one(i: int) -> tuple[int, Any]:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            if i % 2:
                r = c.post("/charrnn/v1/next", json={"prefix": "the time"[: i % 8], "k": 3})
            else:
                r = c.post("/charrnn/v1/generate", json={"prefix": "the ", "n": 100 + i, "seed": i})
            return r.status_code, r.json()

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(32)))
    assert all(status == 200 for status, _ in answers), answers
    alone = {i: run_generate(loaded, parse_generate({"prefix": "the ", "n": 100 + i, "seed": i}, Limits()))
             for i in range(0, 32, 2)}
    for i, (_, answer) in enumerate(answers):
        if i % 2:
            assert answer["prefix"] == "the time"[: i % 8] and len(answer["next"]) == 3
        else:  # batched with the others, the text is the text of the request alone
            assert answer == alone[i]


@pytest.mark.parametrize(("path", "body", "status", "needle"), [
    ("/charrnn/v1/next", '{"prefix": "the', 400, "malformed JSON"),
    ("/charrnn/v1/next", b"\xff\xfe", 400, "not UTF-8"),
    ("/charrnn/v1/generate", '{"n": NaN}', 400, "NaN"),
    ("/charrnn/v1/next", "[1, 2]", 400, "JSON object"),
    ("/charrnn/v1/next", '{"k": "3"}', 422, '"k" must be an integer'),
    ("/charrnn/v1/next", '{"prefix": 5}', 422, '"prefix" must be a string'),
    ("/charrnn/v1/generate", '{"temperature": true}', 422, '"temperature"'),
    ("/charrnn/v1/generate", '{"temprature": 0.5}', 422, "unknown field 'temprature'"),
    ("/charrnn/v1/generate", '{"n": -1}', 422, '"n" must be an integer from 0'),
    ("/charrnn/v1/generate", '{"n": 100000000000}', 422, "--max-n"),
    ("/charrnn/v1/generate", '{"num_samples": 9}', 422, "--max-num-samples"),
    ("/charrnn/v1/score", '{"records": ["a", "b", "c", "d", "e"]}', 413, "limit of 4"),
    ("/charrnn/v1/next", '{"prefix": "x", "model": "nope"}', 404, "unknown model 'nope'"),
    ("/charrnn/v1/generate", '{"prefix": "QQ"}', 422, "not in the model's vocabulary"),
])
def test_bad_requests_get_a_json_error(server: Server, path: str, body: str, status: int, needle: str) -> None:
    error(post(server, path, body), status, needle)


def test_oversized_bodies_unknown_paths_and_methods(server: Server) -> None:
    big = json.dumps({"prefix": "a" * 5000})
    error(post(server, "/charrnn/v1/next", big), 413, "--max-body-bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused once past the limit
        yield b'{"prefix": "'
        for _ in range(100):
            yield b"a" * 1000
        yield b'"}'

    error(server.client.post("/charrnn/v1/next", content=chunks()), 413, "--max-body-bytes")
    error(server.client.get("/charrnn/v1/nothing"), 404, "no such path")
    error(server.client.get("/charrnn/v1/next"), 405, "GET")
    assert server.client.get("/healthz").status_code == 200  # and it goes on


def wait_until_idle(s: Server, model: str = "tiny", timeout: float = 60) -> None:
    """Until the model generates nothing (a generation that went on would take minutes)."""
    deadline = time.monotonic() + timeout
    while s.client.get("/healthz").json()["models"][model]["generating"]:
        assert time.monotonic() < deadline, "the generation went on after its client left"
        time.sleep(0.05)


def test_a_client_that_leaves_mid_stream_stops_its_generation(server: Server) -> None:
    body = {"prefix": "the ", "n": 5_000_000, "stream": True}  # minutes of work if it were not stopped
    with server.client.stream("POST", "/charrnn/v1/generate", content=json.dumps(body)) as r:
        lines = r.iter_lines()  # kept: a dropped iterator closes the connection
        assert json.loads(next(lines))["sample"] == 0
        assert server.client.get("/healthz").json()["models"]["tiny"]["generating"] == 1
    wait_until_idle(server)
    with pytest.raises(httpx.ReadTimeout):  # not streamed: a client that gives up stops it too
        server.client.post("/charrnn/v1/generate", json={"n": 5_000_000}, timeout=0.5)
    wait_until_idle(server)
    deadline = time.monotonic() + 30
    while not any('"POST /charrnn/v1/generate" 499 ' in line for line in server.lines):  # logged as gone
        assert time.monotonic() < deadline, "".join(server.lines[-5:])
        time.sleep(0.02)
    assert post(server, "/charrnn/v1/next", {"prefix": "the"}).status_code == 200  # the server goes on


def test_a_full_queue_is_503_with_retry_after(home: Path) -> None:
    s = Server("-m", str(home / "m.pt"), "--max-queue", "1", "--max-streams", "1", "--max-n", "10000000")
    try:
        def long(_: int) -> tuple[int, str | None]:
            with httpx.Client(base_url=s.url, timeout=3) as c:
                try:
                    r = c.post("/charrnn/v1/generate", json={"n": 5_000_000})
                    return r.status_code, r.headers.get("retry-after")
                except httpx.ReadTimeout:
                    return 0, None  # still generating, or waiting for room: it gave up

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(long, range(6)))
        # One runs, one waits for room in the engine, one waits in the queue: the others are refused.
        assert (503, "1") in answers, answers
        wait_until_idle(s, "m")
    finally:
        code, out = s.stop()
    assert code == 0 and out == b""


def test_requests_past_max_requests_are_503(home: Path) -> None:
    s = Server("-m", str(home / "m.pt"), "--max-requests", "1", "--max-n", "10000000")
    try:
        with s.client.stream("POST", "/charrnn/v1/generate", content=json.dumps({"n": 5_000_000, "stream": True})) as r:
            lines = r.iter_lines()
            next(lines)  # one request in progress
            busy = s.client.get("/charrnn/v1/models")
            error(busy, 503, "--max-requests")
            assert busy.headers["retry-after"] == "1"
            assert s.client.get("/healthz").status_code == 200  # outside the limit: it answers however busy
        deadline = time.monotonic() + 60
        while s.client.get("/charrnn/v1/models").status_code == 503:  # until the stream's end is seen
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        code, out = s.stop()
    assert code == 0 and out == b""


def test_sigterm_lets_requests_in_flight_finish_and_exits_0(home: Path) -> None:
    s = Server("-m", str(home / "m.pt"), "--max-n", "10000000", "--shutdown-timeout", "120")
    body = {"prefix": "the ", "n": 20_000, "seed": 5}
    results: dict[str, Any] = {}

    def plain() -> None:
        with httpx.Client(base_url=s.url, timeout=120) as c:
            results["plain"] = c.post("/charrnn/v1/generate", json=body)

    with s.client.stream("POST", "/charrnn/v1/generate", content=json.dumps({**body, "stream": True})) as r:
        lines = r.iter_lines()
        first = next(lines)  # the stream is under way
        worker = threading.Thread(target=plain)
        worker.start()
        deadline = time.monotonic() + 60
        while s.client.get("/healthz").json()["models"]["m"]["generating"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        s.proc.send_signal(signal.SIGTERM)
        rest = [json.loads(line) for line in lines if line]
    worker.join(120)
    code, out = s.stop(None, timeout=120)
    streamed = json.loads(first)["text"] + "".join(x.get("text", "") for x in rest)
    assert rest[-1] == {"done": True, "seed": 5}
    assert results["plain"].status_code == 200
    assert results["plain"].json()["samples"] == [streamed]
    assert len(streamed) == 20_000
    assert code == 0 and out == b"", "".join(s.lines)
    assert s.lines[-1].strip() == "stopped"
    assert len(s.access("POST /charrnn/v1/generate", 2)) == 2


def test_requests_past_the_shutdown_bound_are_cancelled_in_one_line_each(home: Path) -> None:
    """A request still running when --shutdown-timeout passes is cancelled: exit 0 all the same, and
    stderr says so in single lines, never a traceback."""
    s = Server("-m", str(home / "m.pt"), "--max-n", "100000000", "--shutdown-timeout", "0.5")
    results: dict[str, Any] = {}

    def endless() -> None:
        with httpx.Client(base_url=s.url, timeout=120) as c:
            results["r"] = c.post("/charrnn/v1/generate", json={"prefix": "the ", "n": 50_000_000})

    worker = threading.Thread(target=endless)
    worker.start()
    deadline = time.monotonic() + 60
    while s.client.get("/healthz").json()["models"]["m"]["generating"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    s.proc.send_signal(signal.SIGTERM)
    code, out = s.stop(None, timeout=120)
    worker.join(120)
    err = "".join(s.lines)
    assert code == 0 and out == b"", err
    assert "Traceback" not in err and "CancelledError" not in err and s.lines[-1].strip() == "stopped"
    assert all(line.strip() and not line.startswith((" ", "\t")) for line in s.lines), err
    error(results["r"], 503, "the server stopped before this request was answered (--shutdown-timeout)")
    assert s.access("POST /charrnn/v1/generate") and " 503 " in s.access("POST /charrnn/v1/generate")[0]


def test_without_the_extra_one_line_names_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    r = CliRunner().invoke(cli, ["serve", "-m", str(home / "m.pt")])
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.strip().startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "charrnn[serve]" in r.stderr


def test_http_options_are_refused_with_stdio(home: Path) -> None:
    r = CliRunner().invoke(cli, ["serve", "--stdio", "-m", str(home / "m.pt"), "--max-queue", "3"], input="")
    assert r.exit_code == 2 and "--max-queue" in r.stderr


def test_a_port_in_use_is_one_line_and_the_socket_says_tcp(home: Path) -> None:
    taken = listen("127.0.0.1", 0)
    try:
        # asyncio turns Nagle's algorithm off only where the socket says TCP (else 40 ms per kept-alive answer).
        assert taken.proto == socket.IPPROTO_TCP
        r = CliRunner().invoke(cli, ["serve", "-m", str(home / "m.pt"), "--port", str(taken.getsockname()[1]),
                                     "--device", "cpu"])
    finally:
        taken.close()
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1].startswith("Error: cannot listen on 127.0.0.1:")


def http_doc_blocks(info: str) -> list[str]:
    """The fenced blocks of docs/serve.md's HTTP part with this info string."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "serve.md").read_text(encoding="utf-8")
    part = page.split("\n## HTTP\n")[1].split("\n## ")[0]
    return re.findall(rf"^```{info}\n(.*?)^```", part, flags=re.MULTILINE | re.DOTALL)


def test_the_curl_and_python_examples_of_the_docs_run(server: Server, tmp_path: Path) -> None:
    """docs/serve.md's HTTP examples, as written but for the port, against the running server: every curl
    line answers its JSON (no error), and the Python client prints the streamed text."""
    hostport = server.url.removeprefix("http://")

    def lower(block: str) -> str:  # the test model knows no capitals
        return block.replace("The Time Trav", "the time trav").replace('"The ', '"the ')

    curls = [lower(b.replace("localhost:8000", hostport)) for b in http_doc_blocks("bash") if "curl" in b]
    assert len(curls) == 2
    for block in curls:
        for line in block.strip().splitlines():
            r = subprocess.run(["bash", "-c", f"set -o pipefail; {line}"], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, (line, r.stderr)
            answers = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
            assert answers and not any("error" in a for a in answers), (line, r.stdout[:300])
            if '"stream": true' in line:
                assert answers[-1]["done"] is True and "".join(a.get("text", "") for a in answers[:-1])
    (python,) = [b for b in http_doc_blocks("python") if "urllib" in b]  # the standard library: no extra needed
    code = lower(python.replace("http://127.0.0.1:8000", server.url))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and len(r.stdout) == 2000, (r.stderr, len(r.stdout))


def test_the_readme_curl_lines_run(server: Server) -> None:
    """README.md's HTTP example, its curl lines against the running server (the lines that start and stop
    a server are the fixture's work here)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"^```bash\n(.*?)^```", readme, flags=re.MULTILINE | re.DOTALL) if "curl" in b]
    lines = [line.replace("localhost:8000", server.url.removeprefix("http://")) for line in block.splitlines()]
    assert any(line.startswith("charrnn serve -m model.pt") for line in lines) and lines[-1].startswith("kill %1")
    curls = [line.split("  #")[0].replace("The Time Trav", "the time trav").replace('"The ', '"the ')
             for line in lines if line.startswith("curl")]
    assert len(curls) == 4
    for line in curls:
        r = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=120)
        answers = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
        assert r.returncode == 0 and answers and not any("error" in a for a in answers), (line, r.stdout[:300])
