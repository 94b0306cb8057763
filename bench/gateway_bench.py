"""Gateway benchmark: added latency, throughput, slow-stream scaling and log completeness, LiteLLM alongside.

Everything runs on loopback against `bench/stub_upstream.py` (a zero-latency OpenAI-compatible stub):

1. sequential latency on kept-alive connections, interleaved direct / careloop / LiteLLM, plain and streamed:
   the added latency is p50/p99 of (via proxy) minus the same percentile direct;
2. throughput with `wrk -c32` (one gateway worker, logging and sampling on);
3. many concurrent slow streams (the stub waits between chunks): mean added time per stream at growing
   concurrency, which must not grow with the number of streams;
4. a sustained `wrk` load, then a graceful stop: every request the gateway counted must be in the store.

    .venv/bin/python bench/gateway_bench.py [--litellm /tmp/litellm-venv] [--quick] [--json out.json] [--fresh]

By default every request repeats one prompt and gets one reply, which the gateway's redaction memoises. With
`--fresh` every request carries a prompt of its own, with identifiers in it (a name, an MRN, a birth date, a
phone), and the stub quotes it in its reply, so that each exchange costs a redaction as live traffic does; after
each `wrk` round the benchmark waits for the gateway's traffic log to catch up before the next one.

LiteLLM runs from its own virtualenv (`python -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install
'litellm[proxy]'`); without it that column is skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BODY = json.dumps({"model": "assistant", "messages": [
    {"role": "system", "content": "You are a careful clinical assistant."},
    {"role": "user", "content": "I take metformin 500 mg twice a day. Can I drink alcohol with it?"}],
    "max_tokens": 64}).encode()
CHAT = "/v1/chat/completions"
KEY = "sk-bench-2f6c0e3a9d4b47c1a8e5f09b7d31c6e2a4f8b0d9"  # LiteLLM's master key; the others ignore it
STREAM_BODY = json.dumps({**json.loads(BODY), "stream": True}).encode()
# `--fresh`: a prompt of its own per request (the same %-format serves Python and wrk's Lua).
FRESH_NAMES = ("Maria Gonzalez", "James Okafor", "Aiko Tanaka", "Robert Miller", "Fatima Khan", "Liam O'Brien",
               "Chen Wei", "Sarah Johnson", "Dmitri Ivanov", "Grace Mensah")
FRESH_PROMPT = ("I'm %s, MRN A%07d, born %d/%d/19%d. I have taken metformin %d mg twice a day since my "
                "discharge on %d March; call me on 555-%03d-%04d. Can I drink alcohol with it?")


def fresh_body(i: int, stream: bool = False) -> bytes:
    """Request number i of the fresh traffic: the benchmark's body with a user prompt no other request has."""
    prompt = FRESH_PROMPT % (FRESH_NAMES[i % len(FRESH_NAMES)], i, 1 + i % 12, 1 + i % 28, 40 + i % 50,
                             250 * (1 + i % 4), 1 + i % 28, i % 1000, i % 10000)
    req = json.loads(BODY)
    req["messages"][-1]["content"] = prompt
    if stream:
        req["stream"] = True
    return json.dumps(req).encode()


def free_port() -> int:
    """A TCP port nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 90.0) -> None:
    """Block until url answers below 500, or raise after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except Exception:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not come up")


class Procs:
    """Child processes, stopped in reverse order."""

    def __init__(self) -> None:
        self.items: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None,
              cwd: Path = ROOT) -> subprocess.Popen[bytes]:
        out = log.open("wb") if log else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                cwd=cwd, start_new_session=True)  # each server its own scheduler group
        self.items.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.items:
            self.items.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.items)):
            self.stop(proc, 10)


def pct(values: list[float], q: float) -> float:
    """The q-quantile of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sequential(targets: dict[str, tuple[int, str]], n: int, body: bytes,
               fresh: bool = False) -> dict[str, list[float]]:
    """Interleaved sequential requests on one kept-alive connection per target; seconds per request (`fresh`:
    request i carries `fresh_body(i)` to every target instead of `body`)."""
    conns = {name: http.client.HTTPConnection("127.0.0.1", port) for name, (port, _) in targets.items()}
    times: dict[str, list[float]] = {name: [] for name in targets}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    warm = max(50, n // 10)
    stream = b'"stream": true' in body
    for i in range(n + warm):
        if fresh:
            body = fresh_body(i, stream)
        for name, (_, path) in targets.items():
            conn = conns[name]
            t = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            elapsed = time.perf_counter() - t
            if resp.status != 200:
                raise RuntimeError(f"{name}: {resp.status} {data[:300]!r}")
            if i >= warm:
                times[name].append(elapsed)
    for conn in conns.values():
        conn.close()
    return times


WRK_LUA = """wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""
_WRK_RUNS = itertools.count(1)
# `--fresh`: each wrk thread numbers its requests from its own offset (and the run's), so no prompt repeats.
WRK_FRESH_LUA = WRK_LUA + """local names = {{{names}}}
local next_tid = 0
function setup(thread)
  thread:set("offset", {offset} + next_tid * 100000000)
  next_tid = next_tid + 1
end
local n = 0
function request()
  n = n + 1
  local i = offset + n
  local prompt = string.format([[{prompt}]], names[i % #names + 1], i, 1 + i % 12, 1 + i % 28, 40 + i % 50,
                               250 * (1 + i % 4), 1 + i % 28, i % 1000, i % 10000)
  return wrk.format(nil, nil, nil, [[{head}]] .. prompt .. [[{tail}]])
end
"""


def wrk_script(tmp: Path, fresh: bool) -> Path:
    """The wrk Lua script: the benchmark's one body, or (`fresh`) a prompt of its own per request."""
    script = tmp / ("post-fresh.lua" if fresh else "post.lua")
    if not fresh:
        script.write_text(WRK_LUA.format(body=BODY.decode(), key=KEY))
        return script
    marker = "\u0000PROMPT\u0000"
    req = json.loads(BODY)
    req["messages"][-1]["content"] = marker
    head, tail = json.dumps(req).split(json.dumps(marker)[1:-1])
    names = ", ".join(json.dumps(n) for n in FRESH_NAMES)
    script.write_text(WRK_FRESH_LUA.format(body=BODY.decode(), key=KEY, names=names, head=head, tail=tail,
                                           prompt=FRESH_PROMPT, offset=next(_WRK_RUNS) * 10**9))
    return script


def wrk(port: int, path: str, seconds: int, conns: int, tmp: Path, fresh: bool = False) -> dict[str, Any]:
    """Run wrk and return requests/s, requests, non-2xx and latency percentiles (ms)."""
    script = wrk_script(tmp, fresh)
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", str(script),
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)

    def lat(q: str) -> float:
        m = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return {"rps": rps, "requests": total, "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "p50_ms": lat("50"), "p99_ms": lat("99"), "socket_errors": errors.group(1) if errors else ""}


async def streams(port: int, path: str, concurrency: int, stagger_s: float = 0.0
                  ) -> tuple[list[float], list[float]]:
    """Open `concurrency` streams, spread evenly over `stagger_s` (0: all at once); (seconds to the first
    chunk, seconds to the end) of each."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(i: int) -> tuple[float, float]:
            await asyncio.sleep(stagger_s * i / concurrency)
            t = time.perf_counter()
            first = 0.0
            async with session.post(f"http://127.0.0.1:{port}{path}", data=STREAM_BODY,
                                    headers={"Content-Type": "application/json",
                                             "Authorization": f"Bearer {KEY}"}) as resp:
                async for _ in resp.content.iter_any():
                    first = first or time.perf_counter() - t
                if resp.status != 200:
                    raise RuntimeError(f"stream status {resp.status}")
            return first, time.perf_counter() - t

        out = await asyncio.gather(*(one(i) for i in range(concurrency)))
    return [a for a, _ in out], [b for _, b in out]


def metric(port: int, name: str) -> float:
    """Sum of one metric's samples on a /metrics page."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def wait_drained(port: int, timeout_s: float = 120.0) -> float:
    """Wait until a careloop gateway's traffic-log queue is empty (no-op for other targets); seconds waited."""
    t = time.perf_counter()
    while time.perf_counter() - t < timeout_s:
        try:
            if metric(port, "careloop_traffic_log_queue_depth") == 0:
                break
        except OSError:
            break
        time.sleep(0.2)
    return time.perf_counter() - t


def overhead_quantiles(port: int, qs: tuple[float, ...] = (0.5, 0.99)) -> dict[float, float]:
    """Upper bucket bounds (ms) holding each quantile of careloop_gateway_overhead_seconds."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    buckets = []
    for line in text.splitlines():
        m = re.match(r'careloop_gateway_overhead_seconds_bucket\{le="([^"]+)"\} ([\d.e+]+)', line)
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
    total = buckets[-1][1] if buckets else 0.0
    return {q: next((le * 1e3 for le, n in buckets if n >= q * total), float("inf")) for q in qs}


def add_client_key(home: Path) -> None:
    """Store the bench's key (KEY) as a client key with limits far above the load, in a fresh store at `home`."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from careloop.core.migrations import upgrade
    from careloop.core.schema import ClientKey
    from careloop.core.store import make_engine, session_scope
    from careloop.gateway.keys import hash_key

    url = f"sqlite:///{home / 'careloop.db'}"
    upgrade(url)
    engine = make_engine(url)
    with session_scope(engine) as session:
        session.add(ClientKey(name="bench", key_hash=hash_key(KEY), prefix=KEY[:10], rpm=10**9, tpm=10**12))
    engine.dispose()


def start_gateway(procs: Procs, home: Path, upstream_port: int, sample_rate: float = 0.1, keys: bool = False,
                  code_dir: Path = ROOT, extra_env: dict[str, str] | None = None
                  ) -> tuple[subprocess.Popen[bytes], int]:
    """Start a gateway (this checkout's code, or `code_dir`'s) in front of the stub; (process, port) once ready.

    `keys`: client keys required and the bench's key rate limited (limits far above the load, so every request
    pays the check and the quota accounting without being refused).
    """
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {"CARELOOP_HOME": str(home), "CARELOOP_UPSTREAM": f"http://127.0.0.1:{upstream_port}",
           "CARELOOP_SAMPLE_RATE": str(sample_rate), "CARELOOP_GATEWAY__PORT": str(port),
           "CARELOOP_DATABASE_URL": f"sqlite:///{home / 'careloop.db'}", "PYTHONPATH": str(code_dir),
           "PYTHONDONTWRITEBYTECODE": "1", **(extra_env or {})}
    if keys:
        add_client_key(home)
        env["CARELOOP_KEYS__REQUIRE"] = "on"
    # a baseline from before the careloop.* namespace keeps its gateway in `service`
    pkg = ("careloop.core", "careloop.gateway") if (code_dir / "careloop/core").is_dir() else ("service", "service")
    proc = procs.start([PY, "-c", f"from {pkg[0]}.settings import Settings; "
                        f"from {pkg[1]}.server import run_gateway; run_gateway(Settings(), 'warning')"],
                       env, home / "gateway.log", cwd=code_dir)
    wait_http(f"http://127.0.0.1:{port}/readyz")
    return proc, port


def start_litellm(procs: Procs, venv: Path, upstream_port: int, tmp: Path) -> int | None:
    """Start LiteLLM's proxy in front of the stub upstream; its port, or None where it is not installed."""
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        print(f"note: LiteLLM not found at {exe}; skipping the LiteLLM column "
              f"(python -m venv {venv} && {venv}/bin/pip install 'litellm[proxy]')")
        return None
    port = free_port()
    cfg = tmp / "litellm.yaml"
    cfg.write_text(f"""model_list:
  - model_name: assistant
    litellm_params:
      model: openai/smollm2-135m
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: sk-stub
""")
    procs.start([str(exe), "--config", str(cfg), "--port", str(port), "--num_workers", "1"],
                {"LITELLM_MASTER_KEY": KEY, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
                 "LITELLM_MODE": "PRODUCTION"},
                tmp / "litellm.log")
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", 180)
    return port


def row_count(home: Path) -> int:
    """How many exchanges the gateway's SQLite store holds."""
    with sqlite3.connect(home / "careloop.db") as db:
        return int(db.execute("SELECT count(*) FROM exchange").fetchone()[0])


def hotpath_costs(n: int = 20000) -> dict[str, float]:
    """Microseconds per request of what client keys and request ids add to the request path, in-process."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import timeit

    from careloop.core.store import init_db, make_engine
    from careloop.gateway.keys import KeyInfo, KeyRing, hash_key
    from careloop.gateway.ratelimit import RateLimiter, usage_tokens
    from careloop.gateway.request_id import request_ids

    store = Path(tempfile.mkdtemp(prefix="careloop-hotpath-")) / "store.db"
    engine = make_engine(f"sqlite:///{store}")
    init_db(engine)
    ring = KeyRing(engine, required=True)
    info = KeyInfo("bench", rpm=10**9, tpm=10**12, expires_at=None)
    ring.by_hash[hash_key(KEY)] = info
    limiter = RateLimiter(engine)
    header = f"Bearer {KEY}".encode()
    body = b'{"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":64,"total_tokens":75}}'
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    async def keyed(k: int) -> None:
        for _ in range(k):
            key = await ring.authenticate(header)
            assert key is not None
            await limiter.admit(key)
            limiter.spend_tokens(key, usage_tokens(body) or 0)

    asyncio.run(keyed(10))  # first claim from the store
    t = time.perf_counter()
    asyncio.run(keyed(n))
    keys_us = (time.perf_counter() - t) / n * 1e6
    ids_us = timeit.timeit(lambda: request_ids("0193a1b2c3d4e5f60718293a4b5c6d7e", "clinic-7-req-1", tp),
                           number=n) / n * 1e6
    engine.dispose()
    shutil.rmtree(store.parent, ignore_errors=True)
    return {"keys_auth_limit_tokens_us": keys_us, "request_ids_us": ids_us}


def main() -> None:
    """Run the gateway benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--litellm", type=Path, default=Path("/tmp/litellm-venv"),
                        help="virtualenv with litellm[proxy] (skipped when absent)")
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per target")
    parser.add_argument("--wrk-seconds", type=int, default=10)
    parser.add_argument("--wrk-rounds", type=int, default=1,
                        help="throughput rounds per gateway, order reversed each round (median reported)")
    parser.add_argument("--load-seconds", type=int, default=60, help="sustained load before the row count")
    parser.add_argument("--stream-counts", default="1,16,64,256")
    parser.add_argument("--stream-rounds", type=int, default=3)
    parser.add_argument("--stagger", type=float, default=1.0,
                        help="seconds over which each batch of streams opens (0: all in one burst)")
    parser.add_argument("--sections", default="hotpath,sequential,throughput,streams,sustained",
                        help="which parts to run (comma-separated)")
    parser.add_argument("--baseline", type=Path,
                        help="a checkout of the previous release (e.g. `git archive main | tar -x -C DIR`): its "
                             "gateway runs as a column of its own, so each new part's cost shows in one run")
    parser.add_argument("--no-wal-column", action="store_true",
                        help="also run this gateway with the write-ahead log off (the durability's own cost)")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test of the script)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--fresh", action="store_true",
                        help="a prompt of its own per request, quoted in the reply (redaction is not memoised)")
    parser.add_argument("--keys", action="store_true",
                        help="add a column: a second gateway with client keys required and the key rate limited")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.wrk_seconds, args.load_seconds = 300, 3, 5
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install wrk)")

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start "
          "(a shared machine makes tails and throughput noisy; compare columns within one run)")
    tmp = Path(tempfile.mkdtemp(prefix="careloop-bench-"))
    procs = Procs()
    results: dict[str, object] = {}
    try:
        stub_port, slow_port = free_port(), free_port()
        procs.start([PY, str(ROOT / "bench" / "stub_upstream.py"), "--port", str(stub_port), "--chunks", "16",
                     *(["--echo"] if args.fresh else [])])
        procs.start([PY, str(ROOT / "bench" / "stub_upstream.py"), "--port", str(slow_port), "--chunks", "20",
                     "--chunk-delay", "0.05"])
        wait_http(f"http://127.0.0.1:{stub_port}/health")
        wait_http(f"http://127.0.0.1:{slow_port}/health")
        home = tmp / "home"
        home.mkdir()
        gateway, gw_port = start_gateway(procs, home, stub_port)
        sections = set(args.sections.split(","))
        ll_port = (start_litellm(procs, args.litellm, stub_port, tmp)
                   if sections & {"sequential", "throughput"} else None)

        targets = {"direct": (stub_port, "/v1/chat/completions"), "careloop": (gw_port, "/v1/chat/completions")}
        if args.keys and sections & {"sequential", "throughput"}:
            (tmp / "home-keys").mkdir()
            _, keys_port = start_gateway(procs, tmp / "home-keys", stub_port, keys=True)
            targets["careloop_keys"] = (keys_port, "/v1/chat/completions")
        if args.no_wal_column and sections & {"sequential", "throughput"}:
            _, port = start_gateway(procs, tmp / "home-nowal", stub_port,
                                    extra_env={"CARELOOP_GATEWAY__DURABLE_LOG": "false"})
            targets["careloop-nowal"] = (port, "/v1/chat/completions")
        if args.baseline and sections & {"sequential", "throughput"}:
            _, port = start_gateway(procs, tmp / "home-baseline", stub_port, code_dir=args.baseline.resolve())
            targets["baseline"] = (port, "/v1/chat/completions")
        if ll_port:
            targets["litellm"] = (ll_port, "/v1/chat/completions")

        if "hotpath" in sections:
            costs = hotpath_costs()
            print(f"\n== in-process cost per request: client key check + rate limit + token charge "
                  f"{costs['keys_auth_limit_tokens_us']:.1f} us; request ids {costs['request_ids_us']:.1f} us ==")
            results["hotpath_us"] = costs

        if "sequential" in sections:
            print(f"\n== sequential, kept-alive, {args.requests} requests each (interleaved) ==")
            for label, body in (("plain", BODY), ("stream", STREAM_BODY)):
                times = sequential(targets, args.requests, body, args.fresh)
                base50, base99 = pct(times["direct"], 0.5), pct(times["direct"], 0.99)
                row: dict[str, object] = {"direct_p50_ms": base50 * 1e3, "direct_p99_ms": base99 * 1e3}
                for name in targets:
                    if name == "direct":
                        continue
                    add50 = (pct(times[name], 0.5) - base50) * 1e3
                    add99 = (pct(times[name], 0.99) - base99) * 1e3
                    row[f"{name}_added_p50_ms"], row[f"{name}_added_p99_ms"] = add50, add99
                    print(f"{label:6s} {name:14s} added p50 {add50:7.3f} ms   p99 {add99:7.3f} ms   "
                          f"(direct p50 {base50 * 1e3:.3f} ms)")
                if ll_port:
                    ratio = float(row["litellm_added_p50_ms"]) / max(float(row["careloop_added_p50_ms"]), 1e-6)  # type: ignore[arg-type]
                    row["litellm_over_careloop_p50"] = ratio
                    print(f"{label:6s} LiteLLM adds {ratio:.1f}x careloop's p50")
                results[f"sequential_{label}"] = row
            results["gateway_overhead_histogram_mean_ms"] = (
                metric(gw_port, "careloop_gateway_overhead_seconds_sum")
                / max(metric(gw_port, "careloop_gateway_overhead_seconds_count"), 1) * 1e3)
            quant = overhead_quantiles(gw_port)
            results["gateway_overhead_histogram_p50_le_ms"] = quant[0.5]
            results["gateway_overhead_histogram_p99_le_ms"] = quant[0.99]
            print(f"careloop_gateway_overhead_seconds (the gateway's own clock): mean "
                  f"{results['gateway_overhead_histogram_mean_ms']:.3f} ms, p50 <= {quant[0.5]:.2f} ms, "
                  f"p99 <= {quant[0.99]:.2f} ms")

        if "throughput" in sections:
            print(f"\n== throughput: wrk -t2 -c32 -d{args.wrk_seconds}s ==")
            tp: dict[str, object] = {}
            # Direct last: 10 s of the stub at full speed leaves this session's scheduler group penalised for
            # a while (Linux autogroup fairness), which would depress whatever ran next.
            # The gateways in turn, the order reversed each round (whatever runs first on a busy machine is
            # penalised); each gateway's median round is reported.
            gateways = [n for n in targets if n != "direct"]
            runs: dict[str, list[dict[str, Any]]] = {n: [] for n in targets}
            for rnd in range(args.wrk_rounds):
                for name in (gateways if rnd % 2 == 0 else gateways[::-1]):
                    port, path = targets[name]
                    runs[name].append(wrk(port, path, args.wrk_seconds, 32, tmp, args.fresh))
                    if args.fresh and name != "litellm":  # the next round must not share the machine with this backlog
                        last = runs[name][-1]
                        last["drain_s"] = wait_drained(port)
                        last["logged_per_s"] = last["requests"] / (args.wrk_seconds + last["drain_s"])
            runs["direct"].append(wrk(targets["direct"][0], targets["direct"][1], args.wrk_seconds, 32, tmp,
                                      args.fresh))
            for name in [*gateways, "direct"]:
                ordered = sorted(runs[name], key=lambda x: x["rps"])
                r = {**ordered[len(ordered) // 2], "rounds_rps": [x["rps"] for x in runs[name]]}
                tp[name] = r
                drain = (f"   log caught up {r['drain_s']:.1f} s after: {r['logged_per_s']:.0f} exchanges "
                         "logged/s" if "drain_s" in r else "")
                print(f"{name:14s} {r['rps']:9.0f} req/s   p50 {r['p50_ms']:.2f} ms   p99 {r['p99_ms']:.2f} ms   "
                      f"non-2xx {r['non2xx']} {r['socket_errors']}   rounds "
                      + " ".join(f"{x:.0f}" for x in r["rounds_rps"]) + drain)
            if ll_port:
                ratio = tp["careloop"]["rps"] / max(tp["litellm"]["rps"], 1e-6)  # type: ignore[index]
                tp["careloop_over_litellm"] = ratio
                print(f"careloop serves {ratio:.1f}x LiteLLM's requests/s")
            results["throughput_c32"] = tp

        if "streams" in sections:
            print("\n== concurrent slow streams (20 chunks 50 ms apart, ~1.0 s each), "
                  f"opened over {args.stagger} s ==")
            # A gateway on the slow stub for this part.
            home2 = tmp / "home-slow"
            home2.mkdir()
            slow_gw, slow_gw_port = start_gateway(procs, home2, slow_port)
            st: dict[str, object] = {}
            asyncio.run(streams(slow_gw_port, "/v1/chat/completions", 8))  # warm the gateway's pool
            for count in [int(c) for c in args.stream_counts.split(",")]:
                # Alternate direct and via the gateway; the median over rounds damps the machine's noise.
                adds_first, adds_total, direct_total = [], [], []
                for _ in range(args.stream_rounds):
                    d_first, d_total = asyncio.run(streams(slow_port, CHAT, count, args.stagger))
                    v_first, v_total = asyncio.run(streams(slow_gw_port, CHAT, count, args.stagger))
                    adds_first.append((statistics.mean(v_first) - statistics.mean(d_first)) * 1e3)
                    adds_total.append((statistics.mean(v_total) - statistics.mean(d_total)) * 1e3)
                    direct_total.append(statistics.mean(d_total))
                first, total = statistics.median(adds_first), statistics.median(adds_total)
                st[str(count)] = {"direct_mean_s": statistics.median(direct_total), "added_first_chunk_ms": first,
                                  "added_total_ms": total, "rounds_added_total_ms": adds_total}
                print(f"{count:4d} streams: direct {statistics.median(direct_total):.3f} s; careloop adds "
                      f"{first:6.2f} ms to the first chunk, {total:6.2f} ms to the whole stream "
                      f"(median of {args.stream_rounds} rounds)")
            procs.stop(slow_gw)
            results["slow_streams"] = st
            st_rows = row_count(home2)
            print(f"slow-stream exchanges logged: {st_rows}")

        if "sustained" in sections:
            print(f"\n== sustained load {args.load_seconds} s (wrk -c32), then graceful stop and row count ==")
            before = metric(gw_port, "careloop_requests_total")
            load = wrk(gw_port, "/v1/chat/completions", args.load_seconds, 32, tmp, args.fresh)
            time.sleep(1.0)  # requests in flight when wrk stopped finish and are counted
            counted = metric(gw_port, "careloop_requests_total") - before
            dropped = metric(gw_port, "careloop_traffic_log_dropped_total")
            procs.stop(gateway)  # SIGTERM: uvicorn finishes in-flight requests, the log drains
            rows = row_count(home)
            expected = int(before) + int(counted)
            missing = expected - rows
            print(f"wrk: {load['requests']} requests ({load['rps']:.0f} req/s, non-2xx {load['non2xx']}); "
                  f"gateway counted {int(counted)} in the load, {expected} in all (this gateway's whole run); "
                  f"rows in the store {rows}; missing {missing}; dropped {int(dropped)}")
            results["sustained"] = {"wrk": load, "gateway_counted": expected, "rows": rows, "missing": missing,
                                    "dropped": dropped}
    finally:
        procs.stop_all()
    results["load_average_end"] = os.getloadavg()[0]
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
