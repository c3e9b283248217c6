#!/usr/bin/env python
"""Dashboard page load times on a big mesh: 200 nodes, 50 endpoints, 7 days of SLI series.

    .venv/bin/python bench/dashboard.py [--nodes 200] [--endpoints 50] [--days 7]
                                        [--raw-hours 24] [--runs 5] [--no-browser]
                                        [--out bench/results/dashboard.json]

About four and a half minutes. What it builds, in a temporary directory:

1. The series store: `--days` of 10 s SLI data for `--endpoints` endpoints x 2 revisions (a
   stable one and a canary) x 2 domains, written by the SLO benchmark's fast path
   (bench/slo_data.py: what the store holds after days of ingest, rollup and retention).
2. etcd and the real API (`infermesh api`) on that series store, then through the API: the
   endpoints (each with `spec.slo`, so 2 implicit SLOs each, and a 90/10 traffic split), a
   rollout Policy, capacity pools and 20 jobs; and, as their owners write them, 200 node reports
   (8 GPUs each, bound to a lease) and the jobs' statuses. The API's SLO evaluator judges every
   SLO before anything is measured.
3. Each page, `--runs` times (medians reported):
   - AppTest: the page's script run (the Python side of a page load: the SDK calls, the frames,
     the figures, Streamlit's serialisation), a fresh session per run, the first one discarded;
   - headless Chromium (Debian's /usr/bin/chromium through Playwright, the `screens` extra;
     skipped with --no-browser or when either is missing): `infermesh dashboard` serves the app,
     and a page load is the time from navigation to the page's title and its first Plotly chart
     drawn (for the cold tab also to every chart of the page drawn): in a fresh browser context
     per load (cold HTTP cache: the target's measure), in a new tab of a context that loaded
     the dashboard before (warm cache), and by a click on the sidebar link within one session
     (see `browser_runs`).

Target (issue 8): every page <= 2 s. Prints a table, writes JSON with every run and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import slo_data  # bench/ is on sys.path when run as a script
from dashboard_screens import CHROMIUM, CHROMIUM_ARGS
from harness import ROOT, Child, http_ready, machine_facts, wait_until_idle, write_report

from infermesh.dashboard import APP, launch
from infermesh.dashboard.plot import COMPONENT
from infermesh.store.auth import new_token
from infermesh.store.etcd import EtcdStore
from infermesh.store.etcd_server import EmbeddedEtcd, free_port
from infermesh.store.keys import KeyLayout
from infermesh.store.series import SeriesStore

TARGET_S = 2.0
PROJECT = "bench"  # the project slo_data's series belong to
# Page, its script, its URL path (the SLOs page is the app's root), its title.
PAGES = (
    ("slos", "views/slos.py", "", "SLOs"),
    ("slo_detail", "views/slo_detail.py", "slo?slo=ep0000-availability", "SLO detail"),
    ("canary", "views/canary.py", "canary", "Canary"),
    ("fleet", "views/fleet.py", "fleet", "Fleet"),
    ("jobs", "views/jobs.py", "jobs", "Jobs"),
    ("events", "views/events.py", "events", "Events & audit"),
)
DOMAINS = (("cloud-eu", "cloud-h100"), ("cloud-us", "cloud-a100"), ("edge-eu", "edge-l4"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--endpoints", type=int, default=50)
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--days", type=float, default=7)
    p.add_argument("--raw-hours", type=float, default=24)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--no-browser", action="store_true", help="AppTest times only")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=60,
        metavar="S",
        help="wait up to S seconds for a quiet machine before each half",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dashboard.json")
    return p.parse_args(argv)


# -- the mesh -------------------------------------------------------------------------------
def objects(endpoints: int, jobs: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {
            "kind": "CapacityPool",
            "metadata": {"name": f"train-{tier}"},
            "spec": {"sloClass": tier, "quotaGpuHours": 5000, "budgetUSD": 20000},
        }
        for tier in ("gold", "silver")
    ]
    out.append(
        {
            "kind": "Policy",
            "metadata": {"name": "canaries"},
            "spec": {"rollout": {"steps": [10, 25, 50, 100], "stepIntervalSeconds": 600}},
        }
    )
    for e in range(endpoints):
        name = f"ep{e:04d}"
        out.append(
            {
                "kind": "Endpoint",
                "metadata": {"name": name},
                "spec": {
                    "modelRef": f"{name}@stable",
                    "domains": [
                        {"name": "cloud-eu", "weight": 60},
                        {"name": "cloud-us", "weight": 40},
                    ],
                    "slo": {"p95_ms": 3000, "availability": 99.5},
                    "trafficSplit": [
                        {"modelRef": f"{name}@stable", "weight": 90},
                        {"modelRef": f"{name}@canary", "weight": 10},
                    ],
                },
            }
        )
    for j in range(jobs):
        out.append(
            {
                "kind": "Job",
                "metadata": {"name": f"job-{j:03d}"},
                "spec": {
                    "parallelism": {"dp": 2, "tp": 4},
                    "capacityPoolRef": "train-gold" if j % 2 else "train-silver",
                    "workload": {"steps": 1000},
                },
            }
        )
    return [{"apiVersion": "v1", **o} for o in out]


def node_report(i: int) -> dict[str, Any]:
    domain, node_class = DOMAINS[i % len(DOMAINS)]
    util = (i * 37) % 100
    return {
        "agent": {
            "address": "127.0.0.1:9",
            "version": "bench",
            "startedAt": "2026-01-05T10:00:00Z",
            "leaseTtlSeconds": 3600,
        },
        "facts": {"nodeClass": node_class, "gpu": "H100-80G", "gpuCount": 8, "domain": domain},
        "gpus": [
            {
                "index": g,
                "uuid": f"GPU-{i}-{g}",
                "name": "H100-80G",
                "utilPct": (util + 7 * g) % 100,
                "memUsedMiB": 81920 * ((util + 7 * g) % 100) // 100,
                "memTotalMiB": 81920,
                "tempC": 35 + (util + 7 * g) % 50,
                "powerW": 150 + 5 * ((util + 7 * g) % 100),
                "powerLimitW": 700,
                "eccVolatileSbe": 0,
                "eccVolatileDbe": 0,
            }
            for g in range(8)
        ],
        "runtime": {"kind": "vllm", "healthy": True, "running": util // 10, "waiting": 0},
        "conditions": [{"type": "Ready", "status": "True", "reason": "RuntimeHealthy"}],
        "inFlight": util // 10,
        "heartbeat": dt.datetime.now(dt.UTC).isoformat(),
    }


def job_status(job: dict[str, Any], j: int) -> dict[str, Any]:
    tier = "gold" if j % 2 else "silver"
    return {
        "uid": job["metadata"]["uid"],
        "phase": ("Running", "Pending", "Succeeded", "Paused")[j % 4],
        "reason": "Bench",
        "gpus": 8 if j % 4 == 0 else 0,
        "step": 10 * j,
        "totalSteps": 1000,
        "stepTimeP95Ms": 200 + j,
        "throughputTps": 1000.0 + 10 * j,
        "lastCheckpoint": {"step": 10 * j, "time": "2026-01-05T10:00:00Z"},
        "gpuHours": 10.0 + j,
        "costUSD": 29.0 + 3 * j,
        "pool": f"{PROJECT}/train-{tier}",
        "restarts": j % 3,
    }


async def write_owner_status(
    endpoints: list[str], prefix: str, nodes: int, jobs: list[dict[str, Any]]
) -> None:
    """Node reports (lease-bound, as agents write them) and job statuses (as the scheduler)."""
    keys = KeyLayout(prefix)
    async with EtcdStore(endpoints) as store:
        lease = (await store.grant_lease(3600)).id
        for i in range(nodes):
            key = keys.status("nodes", PROJECT, f"node-{i:04d}")
            await store.put(key, json.dumps(node_report(i)), lease=lease)
        for j, job in enumerate(jobs):
            key = keys.status("jobs", PROJECT, job["metadata"]["name"])
            await store.put(key, json.dumps(job_status(job, j)))


def wait_evaluated(c: httpx.Client, slos: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = c.get("/v1/slos", params={"project": PROJECT}).json()["items"]
        done = [s for s in items if (s.get("status") or {}).get("phase") != "Pending"]
        if len(items) >= slos and len(done) == len(items):
            return
        time.sleep(1)
    raise RuntimeError(f"the SLO evaluator had not judged {slos} SLOs in {timeout:.0f} s")


# -- measurements ---------------------------------------------------------------------------
def apptest_runs(api: str, token: str, runs: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Each page's script run times, and how many charts each page shows."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    times: dict[str, list[float]] = {name: [] for name, *_ in PAGES}
    charts: dict[str, int] = {}
    for run in range(runs + 1):  # the first run imports and warms up: not counted
        st.cache_data.clear()  # cold: the SLO page's cached window read is read again
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.session_state["mesh.settings"] = {"api": api, "token": token, "project": PROJECT}
        for name, script, *_ in PAGES:
            t0 = time.perf_counter()
            if script != PAGES[0][1]:
                at.switch_page(script)
            at.run()
            took = time.perf_counter() - t0
            if at.exception or at.error:
                problems = [e.value for e in [*at.exception, *at.error]]
                raise RuntimeError(f"page {name} failed: {problems}")
            if run:
                times[name].append(took)
            drawn = [e for e in at.get("bidi_component") if e.proto.component_name == COMPONENT]
            charts[name] = len(drawn)
        print(
            f"  AppTest run {run}{' (warm-up)' if not run else ''}: "
            + ", ".join(f"{n} {times[n][-1]:.2f}s" for n, *_ in PAGES if run),
            flush=True,
        )
    return times, charts


# The page shows its title and a Plotly chart that is not left over from the page before.
_SHOWN = """([title]) => {
  const heading = [...document.querySelectorAll('h1')].some(h => h.innerText.trim() === title);
  const drawn = [...document.querySelectorAll('.js-plotly-plot .main-svg')]
    .some(c => !c.closest('[data-stale="true"]'));
  return heading && drawn;
}"""
# Every chart of the page drawn (Plotly draws one per frame: assets/plot.js).
_ALL_DRAWN = """([count]) => [...document.querySelectorAll('.js-plotly-plot')]
  .filter(p => p.querySelector('.main-svg') && !p.closest('[data-stale="true"]')).length >= count"""
_TITLED = """([title]) => [...document.querySelectorAll('h1')]
  .some(h => h.innerText.trim() === title)"""


def _timed(page: Any, title: str, start: float) -> tuple[float, float]:
    """(seconds to the title, seconds to the first chart drawn) since `start`."""
    page.wait_for_function(_TITLED, arg=[title], timeout=60_000, polling=20)
    titled = time.perf_counter() - start
    page.wait_for_function(_SHOWN, arg=[title], timeout=60_000, polling=20)
    return titled, time.perf_counter() - start


def browser_runs(url: str, runs: int, floor_url: str, charts: dict[str, int]) -> dict[str, Any]:
    """Four ways a page loads in headless Chromium, `runs` times each after a warm-up:
    `tab`: a fresh browser context (no cache) opens the page's URL (the SLO page: another SLO
    each time, so the dashboard's one-minute cache of the SLO window's read never answers);
    `tab_warm`: a new tab of one browser context that has loaded the dashboard before, so its
    HTTP cache holds Streamlit's and Plotly's scripts (served immutable) but the tab is a new
    Streamlit session (the SLO page: yet other SLOs, cold as above); `tab_all`: as `tab`, until
    every chart of the page is drawn (`charts` of them), not just the first; `navigate`: in one
    session, a click on the page's sidebar link (how people move between pages; the SLO page
    shows the same SLO each time, so after the first its window read comes from that cache);
    `floor`: a fresh context opens a bare Streamlit app with one Plotly chart (Streamlit's and
    Plotly's own cost on this machine, for comparison)."""
    from playwright.sync_api import sync_playwright

    out: dict[str, dict[str, list[float]]] = {
        "tab_title": {n: [] for n, *_ in PAGES},
        "tab_chart": {n: [] for n, *_ in PAGES},
        "tab_all_charts": {n: [] for n, *_ in PAGES},
        "tab_warm_title": {n: [] for n, *_ in PAGES},
        "tab_warm_chart": {n: [] for n, *_ in PAGES},
        "navigate_title": {n: [] for n, *_ in PAGES},
        "navigate_chart": {n: [] for n, *_ in PAGES},
        "floor_chart": {"floor": []},
    }
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for run in range(runs + 1):
                for name, _, path, title in PAGES:
                    if name == "slo_detail":  # another SLO each run: its window read is cold
                        path = f"slo?slo=ep{run:04d}-availability"
                    context = browser.new_context(viewport={"width": 1400, "height": 1000})
                    page = context.new_page()
                    t0 = time.perf_counter()
                    page.goto(f"{url}/{path}")
                    titled, charted = _timed(page, title, t0)
                    count = charts[name]
                    page.wait_for_function(_ALL_DRAWN, arg=[count], timeout=60_000, polling=20)
                    every = time.perf_counter() - t0
                    context.close()
                    if run:
                        out["tab_title"][name].append(titled)
                        out["tab_chart"][name].append(charted)
                        out["tab_all_charts"][name].append(every)
                context = browser.new_context()
                page = context.new_page()
                t0 = time.perf_counter()
                page.goto(floor_url)
                _, charted = _timed(page, "Floor", t0)
                context.close()
                if run:
                    out["floor_chart"]["floor"].append(charted)
            warm = browser.new_context(viewport={"width": 1400, "height": 1000})
            for run in range(runs + 1):  # the first run fills the HTTP cache: not counted
                for name, _, path, title in PAGES:
                    if name == "slo_detail":  # SLOs the tabs above did not open
                        path = f"slo?slo=ep{runs + 1 + run:04d}-availability"
                    page = warm.new_page()
                    t0 = time.perf_counter()
                    page.goto(f"{url}/{path}")
                    titled, charted = _timed(page, title, t0)
                    page.close()
                    if run:
                        out["tab_warm_title"][name].append(titled)
                        out["tab_warm_chart"][name].append(charted)
            warm.close()
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.goto(f"{url}/{PAGES[-1][2]}")
            _timed(page, PAGES[-1][3], time.perf_counter())
            for run in range(runs + 1):
                for name, _, _, title in PAGES:
                    link = page.locator('[data-testid="stSidebarNav"] a', has_text=title).first
                    t0 = time.perf_counter()
                    link.click()
                    titled, charted = _timed(page, title, t0)
                    if run:
                        out["navigate_title"][name].append(titled)
                        out["navigate_chart"][name].append(charted)
            context.close()
        finally:
            browser.close()
    for key in ("tab_chart", "tab_all_charts", "tab_warm_chart", "navigate_chart"):
        print(
            f"  {key.replace('_', ' ')}: "
            + ", ".join(f"{n} {statistics.median(v):.2f}s" for n, v in out[key].items()),
            flush=True,
        )
    print(f"  floor (bare app, one chart): {statistics.median(out['floor_chart']['floor']):.2f}s")
    return out


FLOOR_APP = """import plotly.graph_objects as go
import streamlit as st

st.title("Floor")
st.plotly_chart(go.Figure(go.Scatter(x=[1, 2, 3], y=[1, 3, 2])))
"""


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: round(statistics.median(v), 3) for k, v in times.items() if v}


def browser_available() -> str | None:
    """Why the browser half cannot run, or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright not installed (pip install -e '.[screens]')"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    now = int(time.time()) // 10 * 10 + 3
    print(
        f"bench/dashboard.py: {args.nodes} nodes, {args.endpoints} endpoints, "
        f"{args.days:g} days of series, {args.runs} runs",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="infermesh-dashboard-"))
    children: list[Child] = []
    etcd = EmbeddedEtcd(tmp / "etcd", unsafe_no_fsync=True)
    try:
        t0 = time.perf_counter()
        w = slo_data.workload(args.endpoints * 4, now)
        series_db = tmp / "series.sqlite"
        store = SeriesStore(series_db, max_bytes=1 << 50)
        store.open(now=now)
        written = slo_data.write(store, w, args.days, args.raw_hours, now)
        store.close()
        build_s = time.perf_counter() - t0
        size_mb = series_db.stat().st_size / (1 << 20)
        print(f"  series: {written.raw_rows:,} raw rows, {size_mb:.0f} MiB, {build_s:.0f} s")

        etcd.start()
        token, port, prefix = new_token(), free_port(), f"/bench-{uuid.uuid4().hex[:8]}"
        argv_api = [sys.executable, "-m", "infermesh", "api", "--etcd", etcd.endpoint]
        argv_api += ["--port", str(port), "--etcd-prefix", prefix, "--series-db", str(series_db)]
        argv_api += ["--series-max-mb", "8192"]
        api = Child("api", argv_api, tmp / "api.log", {"INFERMESH_BOOTSTRAP_TOKEN": token})
        children.append(api)
        url = f"http://127.0.0.1:{port}"
        api.wait_for(http_ready(f"{url}/readyz"), 60)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            body = {"apiVersion": "v1", "kind": "List", "items": objects(args.endpoints, args.jobs)}
            r = c.post("/v1/apply", params={"project": PROJECT}, json=body)
            r.raise_for_status()
            jobs = c.get("/v1/jobs", params={"project": PROJECT}).json()["items"]
            asyncio.run(write_owner_status(etcd.endpoints, prefix, args.nodes, jobs))
            print("  mesh written; waiting for the SLO evaluator", flush=True)
            wait_evaluated(c, 2 * args.endpoints)
            listed = len(c.get("/v1/nodes", params={"project": PROJECT}).json()["items"])
            assert listed == args.nodes, f"{listed} nodes listed"

        wait_until_idle(args.wait_idle)
        print("AppTest (script run per page)", flush=True)
        app_times, charts = apptest_runs(url, token, args.runs)
        browser: dict[str, Any] = {}
        why_not = "--no-browser" if args.no_browser else browser_available()
        if why_not is None:
            dash_port = free_port()
            argv_dash = [sys.executable, "-m", "infermesh", "--api", url, "-p", PROJECT]
            argv_dash += ["dashboard", "--port", str(dash_port)]
            dash = Child("dashboard", argv_dash, tmp / "dashboard.log", {"INFERMESH_TOKEN": token})
            children.append(dash)
            dash_url = f"http://127.0.0.1:{dash_port}"
            floor_app, floor_port = tmp / "floor.py", free_port()
            floor_app.write_text(FLOOR_APP)
            argv_floor = [sys.executable, "-m", "streamlit", "run", str(floor_app)]
            argv_floor += [*launch.streamlit_argv(port=floor_port)[5:]]
            floor = Child("floor", argv_floor, tmp / "floor.log")
            children.append(floor)
            dash_url = f"http://127.0.0.1:{dash_port}"
            floor_url = f"http://127.0.0.1:{floor_port}"
            dash.wait_for(http_ready(f"{dash_url}/_stcore/health"), 60)
            floor.wait_for(http_ready(f"{floor_url}/_stcore/health"), 60)
            wait_until_idle(args.wait_idle)
            print("headless Chromium (to the title, to the first chart drawn)", flush=True)
            b_times = browser_runs(dash_url, args.runs, floor_url, charts)
            browser = {
                "median_s": {k: medians(v) for k, v in b_times.items()},
                "runs_s": b_times,
            }
        else:
            print(f"headless Chromium: skipped ({why_not})", flush=True)
            browser = {"skipped": why_not}
    finally:
        for child in reversed(children):
            child.stop()
        etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    app_median = medians(app_times)
    report = {
        "benchmark": "dashboard",
        "target_s": TARGET_S,
        "parameters": vars(args) | {"out": str(args.out)},
        "mesh": {
            "nodes": args.nodes,
            "gpus": 8 * args.nodes,
            "endpoints": args.endpoints,
            "slos": 2 * args.endpoints,
            "jobs": args.jobs,
            "series_days": args.days,
            "series_slices": len(w.slos),
            "series_raw_rows": written.raw_rows,
            "series_mib": round(size_mb, 1),
        },
        "apptest": {"median_s": app_median, "runs_s": app_times, "charts": charts},
        "browser": browser,
        "machine": machine_facts(),
    }
    print(f"\npage load, median of {args.runs} runs (target <= {TARGET_S:g} s)")
    b = browser.get("median_s") or {}
    columns = ("tab_title", "tab_chart", "tab_all_charts", "tab_warm_chart", "navigate_title")
    columns += ("navigate_chart",)
    print(f"{'page':<12} {'AppTest':>9}" + "".join(f" {c:>15}" for c in columns if b))
    for name, *_ in PAGES:
        cells = "".join(f" {b[c][name]:>14.2f}s" for c in columns if b)
        print(f"{name:<12} {app_median[name]:>8.2f}s{cells}")
    if b:
        print(f"{'floor':<12} {'':>9} {'':>15} {b['floor_chart']['floor']:>14.2f}s")
    write_report(args.out, report, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
