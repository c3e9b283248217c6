#!/usr/bin/env python
"""Screenshots of every dashboard page, from a running mesh, in headless Chromium.

    INFERMESH_HOME=/tmp/mesh .venv/bin/infermesh up &          # a mesh, in the background
    .venv/bin/python bench/dashboard_screens.py --home /tmp/mesh [--traffic-seconds 120]
                                                [--rps 4] [--out docs/dashboard]

Not a test (`make test` does not run it): it needs Debian's Chromium (`apt-get install
chromium`) and Playwright (`pip install -e '.[screens]'`). It reads the mesh's context file,
optionally sends demo traffic through the mesh's router first (bounded: `--traffic-seconds` x
`--rps` requests at most, to 127.0.0.1 only), starts `infermesh dashboard` on a free port, opens
each page, checks that it shows its title and a drawn Plotly chart and no error, saves
`<page>.png` into `--out`, and stops the dashboard by its PID. Exit status 1 if a page failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from infermesh.client import MeshClient
from infermesh.context import Context, load_context
from infermesh.errors import MeshError
from infermesh.invoke import RouterClient
from infermesh.store.etcd_server import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGES = (
    ("slos", "", "SLOs"),
    ("slo-detail", "slo", "SLO detail"),
    ("canary", "canary", "Canary"),
    ("fleet", "fleet", "Fleet"),
    ("jobs", "jobs", "Jobs"),
    ("events", "events", "Events & audit"),
)
WIDTH = 1400
# How the dashboard words a failed API call (infermesh/dashboard/session.py).
API_ERRORS = ("Could not load", "Cannot reach", "The API at", "The server at")
SHOWN = """([title]) => {
  const heading = [...document.querySelectorAll('h1')].some(h => h.innerText.trim() === title);
  const drawn = [...document.querySelectorAll('.js-plotly-plot .main-svg')]
    .some(c => !c.closest('[data-stale="true"]'));
  const running = document.querySelector('[data-testid="stStatusWidget"]');
  return heading && drawn && !running;
}"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--home", type=Path, help="the mesh's INFERMESH_HOME (default: the usual)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard")
    p.add_argument("--traffic-seconds", type=float, default=0, help="demo traffic first")
    p.add_argument("--rps", type=float, default=4, help="demo traffic rate (requests/s)")
    p.add_argument("--endpoint", default="chat-pro", help="endpoint the demo traffic calls")
    p.add_argument("--settle", type=float, default=3, help="seconds a page may keep drawing")
    return p.parse_args(argv)


def local(url: str) -> bool:
    return (urlparse(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


def demo_traffic(ctx: Context, endpoint: str, seconds: float, rps: float) -> tuple[int, int]:
    """Chat requests through the router at about `rps`, for `seconds` (and so at most
    seconds x rps requests), four at a time; (answered, failed)."""
    if not ctx.router_url or not local(ctx.router_url):
        raise SystemExit(f"demo traffic goes to a local router only (got {ctx.router_url!r})")
    total = int(seconds * rps)
    body = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}
    ok = failed = 0
    started = time.monotonic()
    with (
        RouterClient.from_context(ctx) as router,
        concurrent.futures.ThreadPoolExecutor(4) as pool,
    ):

        def one(_: int) -> bool:
            try:
                router.invoke(endpoint, body)
                return True
            except MeshError:
                return False  # a canary nothing serves answers 503: that is data too

        futures = []
        for i in range(total):
            due = started + i / rps
            if time.monotonic() - started > seconds + 5:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            futures.append(pool.submit(one, i))
        for f in futures:
            if f.result():
                ok += 1
            else:
                failed += 1
    return ok, failed


def worst_slo(ctx: Context) -> str | None:
    """The SLO with the least budget left, for the detail page's screenshot."""
    with MeshClient.from_context(ctx) as client:
        items = client.list("slos").items
    judged = [s for s in items if (s.get("status") or {}).get("budgetRemaining") is not None]
    pick = min(judged or items, key=lambda s: s["status"].get("budgetRemaining") or 0, default=None)
    return pick["metadata"]["name"] if pick else None


def start_dashboard(home: Path | None, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if home:
        env["INFERMESH_HOME"] = str(home)
    argv = [sys.executable, "-m", "infermesh", "dashboard", "--port", str(port)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"infermesh dashboard exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=1).is_success:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the dashboard at {url} was not healthy in {timeout:.0f} s")


def screenshots(url: str, out: Path, slo: str | None, settle: float) -> list[str]:
    """Each page's PNG; the problems found (empty when every page passed)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    problems = []
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for name, path, title in PAGES:
                page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
                query = f"?slo={slo}" if name == "slo-detail" and slo else ""
                t0 = time.perf_counter()
                page.goto(f"{url}/{path}{query}")
                try:
                    page.wait_for_function(SHOWN, arg=[title], timeout=60_000, polling=50)
                except PlaywrightTimeout:
                    problems.append(f"{name}: no title {title!r} with a drawn chart in 60 s")
                shown = time.perf_counter() - t0
                page.wait_for_timeout(settle * 1000)  # the other charts finish drawing
                alerts = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
                errors = [a for a in alerts if a.strip().startswith(API_ERRORS)]  # not SLO news
                errors += page.locator('[data-testid="stException"]').all_inner_texts()
                if errors:
                    problems.append(f"{name}: the page shows errors: {errors}")
                height = page.evaluate(
                    "() => (document.querySelector('[data-testid=\"stMain\"]') || "
                    "document.body).scrollHeight"
                )
                page.set_viewport_size({"width": WIDTH, "height": max(1000, int(height) + 40)})
                page.wait_for_timeout(1000)
                target = out / f"{name}.png"
                page.screenshot(path=str(target))
                charts = page.locator(".js-plotly-plot").count()
                print(
                    f"  {name:<11} {shown:5.2f} s to the first chart, {charts} charts -> {target}"
                )
                page.close()
        finally:
            browser.close()
    return problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} not found: apt-get install chromium")
    if args.home:
        os.environ["INFERMESH_HOME"] = str(args.home)
    ctx = load_context()
    if not local(ctx.api_url):
        raise SystemExit(f"screenshots are taken of a local mesh only (API {ctx.api_url})")
    traffic: concurrent.futures.Future[tuple[int, int]] | None = None
    background = concurrent.futures.ThreadPoolExecutor(1)
    if args.traffic_seconds > 0:
        if not ctx.router_url or not local(ctx.router_url):
            raise SystemExit(f"demo traffic goes to a local router only (got {ctx.router_url!r})")
        # It goes on while the pages are shot (about a minute more), so they show a live mesh.
        seconds = args.traffic_seconds + 60
        print(f"demo traffic: {args.rps:g} req/s for {seconds:g} s to {args.endpoint}")
        traffic = background.submit(demo_traffic, ctx, args.endpoint, seconds, args.rps)
        time.sleep(args.traffic_seconds)
    slo = worst_slo(ctx)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_dashboard(args.home, port)
    try:
        wait_healthy(url, proc)
        print(f"dashboard {url} (pid {proc.pid}) on API {ctx.api_url}")
        problems = screenshots(url, args.out, slo, args.settle)
        if traffic is not None:
            ok, failed = traffic.result()
            print(f"demo traffic: {ok} answered, {failed} failed")
    finally:
        background.shutdown(wait=True)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    for problem in problems:
        print(f"FAILED {problem}")
    print("every page rendered" if not problems else f"{len(problems)} page(s) failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
