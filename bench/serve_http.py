"""`charrnn serve` over HTTP, on loopback: /charrnn/v1/next latency (p50, p99) with 1 and 16 concurrent clients,
200-character /charrnn/v1/generate throughput (total characters per second) with 1 and 16 clients, and the
server's memory (RSS) after 100 and after 10,000 requests.

    python bench/serve_http.py [--quick] [--model CKPT] [--out results.json]

Without --model, a model of the default architecture (LSTM, 384 hidden, 64-wide embedding) is trained
for two steps first: speed does not depend on training. The server runs as `charrnn serve` in a child
process; the clients are a minimal HTTP/1.1 keep-alive client on asyncio (one connection each) in this
process, so that the client's own cost stays small beside the server's. The issue's target: 16 clients
get at least 3x one client's generation throughput. Prints a markdown table; --out writes JSON too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import cpu_name  # noqa: E402

CHARRNN = [sys.executable, "-m", "charrnn"]
LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


class Connection:
    """One keep-alive HTTP/1.1 connection: JSON in, (status, JSON bytes) out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, path: str, body: dict) -> tuple[int, bytes]:
        data = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        match = LENGTH.search(head)
        assert match, head
        return int(head.split(b" ", 2)[1]), await self.reader.readexactly(int(match.group(1)))

    def close(self) -> None:
        self.writer.close()


async def run_clients(port: int, clients: int, per_client: int, path: str, body: dict) -> tuple[list[float], float]:
    """`clients` connections, each sending `per_client` requests one after another: (latencies in
    seconds, wall seconds of the whole)."""
    conns = [await Connection.open(port) for _ in range(clients)]
    latencies: list[float] = []

    async def one(conn: Connection, index: int) -> None:
        for i in range(per_client):
            t = time.perf_counter()
            status, data = await conn.post(path, {**body, "seed": index * per_client + i} if "n" in body else body)
            latencies.append(time.perf_counter() - t)
            assert status == 200, data[:200]

    start = time.perf_counter()
    await asyncio.gather(*(one(c, i) for i, c in enumerate(conns)))
    wall = time.perf_counter() - start
    for c in conns:
        c.close()
    return latencies, wall


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_server(model: Path, extra: list[str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([*CHARRNN, "serve", "-m", f"bench={model}", "--port", "0", "--device", "cpu", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stderr is not None
    for raw in proc.stderr:
        line = raw.decode()
        if line.startswith("serving "):
            port = int(line.split("http://", 1)[1].split()[0].rsplit(":", 1)[1])
            # The access log keeps coming: read it all along (a full pipe would stop the server).
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
            return proc, port
    raise RuntimeError(f"the server did not start (exit {proc.wait()})")


def default_model(tmp: Path) -> Path:
    text = tmp / "text.txt"
    corpus = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
    text.write_text(corpus.read_text()[:200_000] if corpus.exists() else
                    (Path(json.__file__).read_text() * 20)[:200_000], encoding="utf-8")
    out = tmp / "bench.pt"
    subprocess.run([*CHARRNN, "train", str(text), "-o", str(out), "--max-steps", "2", "-q", "--precision", "fp32",
                    "--device", "cpu"], check=True, cwd=ROOT)
    return out


def measure(port: int, pid: int, quick: bool) -> dict:
    n_next, n_gen, n_mem = (200, 16, 2_000) if quick else (2_000, 64, 10_000)
    r: dict = {}
    asyncio.run(run_clients(port, 4, 10, "/charrnn/v1/next", {"prefix": "The ", "k": 5}))  # warm-up
    for clients in (1, 16):
        lat, wall = asyncio.run(run_clients(port, clients, max(1, n_next // clients), "/charrnn/v1/next",
                                            {"prefix": "First Citizen:\nBefore we proceed any further", "k": 5}))
        r[f"next_{clients}"] = {"p50_ms": round(percentile(lat, 0.5) * 1000, 2),
                                "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
                                "requests_per_s": round(len(lat) / wall, 1)}
    for clients in (1, 16):
        per = n_gen if clients == 1 else max(2, n_gen // 4)  # 16 clients: 4x the requests, as they go faster
        lat, wall = asyncio.run(run_clients(port, clients, per, "/charrnn/v1/generate", {"prefix": "The ", "n": 200}))
        r[f"generate_{clients}"] = {"chars_per_s": round(200 * len(lat) / wall), "requests": len(lat),
                                    "p50_ms": round(percentile(lat, 0.5) * 1000, 1)}
    r["generate_speedup_16_vs_1"] = round(r["generate_16"]["chars_per_s"] / r["generate_1"]["chars_per_s"], 2)
    # Memory: RSS after 100 requests of a mix, then after n_mem in all.
    mix = [("/charrnn/v1/next", {"prefix": "To be", "k": 3}), ("/charrnn/v1/generate", {"prefix": "To be", "n": 20})]

    async def mixed(count: int) -> None:
        conns = [await Connection.open(port) for _ in range(16)]

        async def one(conn: Connection, index: int) -> None:
            for i in range(index, count, 16):
                path, body = mix[i % 2]
                status, _ = await conn.post(path, body)
                assert status == 200
        await asyncio.gather(*(one(c, i) for i, c in enumerate(conns)))
        for c in conns:
            c.close()

    asyncio.run(mixed(100))
    r["rss_mb_after_100"] = round(rss_mb(pid), 1)
    asyncio.run(mixed(n_mem - 100))
    r[f"rss_mb_after_{n_mem}"] = round(rss_mb(pid), 1)
    r["rss_growth"] = round(r[f"rss_mb_after_{n_mem}"] / r["rss_mb_after_100"] - 1, 3)
    r["requests_for_memory"] = n_mem
    return r


def table(r: dict, machine: str) -> str:
    n_mem = r["requests_for_memory"]
    rows = [("/charrnn/v1/next p50 / p99, 1 client", f"{r['next_1']['p50_ms']} / {r['next_1']['p99_ms']} ms"),
            ("/charrnn/v1/next p50 / p99, 16 clients", f"{r['next_16']['p50_ms']} / {r['next_16']['p99_ms']} ms"),
            ("/charrnn/v1/next requests/s, 1 / 16 clients", f"{r['next_1']['requests_per_s']} / "
                                                    f"{r['next_16']['requests_per_s']}"),
            ("/charrnn/v1/generate n=200, chars/s, 1 client", f"{r['generate_1']['chars_per_s']:,}"),
            ("/charrnn/v1/generate n=200, chars/s, 16 clients", f"{r['generate_16']['chars_per_s']:,}"),
            ("16 clients vs 1 (target >= 3x)", f"{r['generate_speedup_16_vs_1']}x"),
            (f"server RSS after 100 / {n_mem:,} requests (target: within 10%)",
             f"{r['rss_mb_after_100']} / {r[f'rss_mb_after_{n_mem}']} MB ({r['rss_growth']:+.1%})")]
    return "\n".join([f"Measured on {machine}.", "", "| charrnn serve (HTTP, loopback) | value |", "| --- | ---: |",
                      *[f"| {k} | {v} |" for k, v in rows]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests (a check that it runs, not a measurement)")
    ap.add_argument("--model", type=Path, help="checkpoint to serve (default: the default architecture, untrained)")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--server-args", default="", help="more options for charrnn serve, as one string")
    args = ap.parse_args()
    machine = f"{cpu_name()}, {os.cpu_count()} CPUs, {platform.system()}, {time.strftime('%Y-%m-%d')}"
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or default_model(Path(tmp))
        proc, port = start_server(model, args.server_args.split())
        try:
            results = measure(port, proc.pid, args.quick)
        finally:
            proc.terminate()
            code = proc.wait(120)
    results.update(machine=machine, quick=args.quick, server_exit=code)
    print(table(results, machine))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
