"""The built-in `synthetic` training workload: `python -m infermesh.scheduler.synthetic`.

Each rank trains a linear regression model (`DIM` weights) by minibatch SGD with numpy for
`INFERMESH_STEP_TIME_MS` per step (default 50; `INFERMESH_SYNTHETIC_CPU_SHARE`, default 1, is
the share of that spent computing: the rest waits, as a rank waiting on its GPU would), then
waits out a simulated all-reduce whose time follows the topology hint. It runs
`INFERMESH_STEPS` steps (default 200) and exits 0.

Environment: RANK, WORLD_SIZE, LOCAL_WORLD_SIZE (as torchrun sets them), INFERMESH_STEPS,
INFERMESH_STEP_TIME_MS, INFERMESH_CHECKPOINT_URI, INFERMESH_CHECKPOINT_INTERVAL (default 50),
INFERMESH_CHECKPOINT_KEEP (default 3), INFERMESH_TOPOLOGY (JSON; reads `algorithm`: `ring`
(default), `tree` or `hierarchical`, and `compression`: true halves the inter-node part) and
INFERMESH_TOPOLOGY_FILE (the same JSON, rewritten when the scheduler adjusts the hint; re-read
about once a second).

Communication: a ring costs 2(N-1) hops over N ranks, a tree 2*ceil(log2 N), hierarchical
2(L-1) cheap intra-node hops plus 2(M-1) over M nodes of L ranks. The file `.wan-factor` in
the checkpoint directory (a number, re-read about once a second) multiplies the inter-node
part: the hook tests and demos use for a slowing WAN link. Ranks exchange no real data.

Checkpoints: the URI names a directory (`file:///abs/dir`, a plain path, or any fsspec URL such
as `s3://bucket/dir` when fsspec is installed). Rank 0 writes `step-<step, 8 digits>.npz` (numpy
npz with `w`, the weights, and `step`) every `interval` steps, on SIGUSR1, on SIGTERM and at the
end, atomically: a temporary `.step-<step>.npz.tmp-<pid>` in the same directory, fsynced, then
renamed over; it keeps the newest `INFERMESH_CHECKPOINT_KEEP` files.

Start: rank 0 loads the newest checkpoint (`latest_checkpoint`) and hands its step and weights
to the other ranks, which connect to it at MASTER_ADDR:MASTER_PORT (the rendezvous and initial
broadcast of torch.distributed), so the whole gang resumes from the same step; a gang that does
not meet within `RENDEZVOUS_TIMEOUT_S` exits 1. Without MASTER_ADDR each rank loads the newest.

Signals: SIGTERM checkpoints and exits 0 after a report with `"stopped": true`; SIGUSR1
checkpoints and goes on. Both act at the end of the current step.

Reports: `INFERMESH_REPORT {"step", "step_time_ms", "comm_ms", "tokens_per_s",
"checkpoint_step" (the newest checkpoint this rank knows of, or null), "loss", "resumed_from"
(the checkpoint step it started from, or null)}`
after the first step, every step, or every few when steps are quicker than `REPORT_EVERY_S`,
and after every checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import signal
import socket
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DIM = 256
BATCH = 64
TOKENS_PER_STEP = 16_384  # what one rank's step stands for (8 sequences of 2,048), for tokens/s
LEARNING_RATE = 0.01
HOP_MS = 0.5  # one inter-node hop of the simulated all-reduce
INTRA_HOP_MS = 0.05  # one NVLink hop
REPORT_EVERY_S = 0.1
WAN_REREAD_S = 1.0
WAN_FILE = ".wan-factor"
RENDEZVOUS_TIMEOUT_S = 120.0
_CHECKPOINT_RE = re.compile(r"step-(\d{8})\.npz")


# -- checkpoint storage ------------------------------------------------------------------------
class _Local:
    def __init__(self, path: Path) -> None:
        self.path = path

    def names(self) -> list[str]:
        try:
            return os.listdir(self.path)
        except FileNotFoundError:
            return []

    def where(self, name: str) -> str:
        return str(self.path / name)

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def write_atomic(self, name: str, data: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{name}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / name)
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)


class _Fsspec:
    def __init__(self, uri: str) -> None:
        try:
            import fsspec
        except ImportError:
            raise RuntimeError(
                f"checkpoint URI {uri!r} needs fsspec (pip install fsspec and the filesystem's "
                "package, e.g. s3fs); without it only file:// URIs and plain paths work"
            ) from None
        self.fs, self.path = fsspec.core.url_to_fs(uri)
        self.uri = uri.rstrip("/")

    def names(self) -> list[str]:
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path, detail=False)]
        except FileNotFoundError:
            return []

    def where(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def read(self, name: str) -> bytes:
        return bytes(self.fs.cat_file(f"{self.path}/{name}"))

    def write_atomic(self, name: str, data: bytes) -> None:
        tmp = f"{self.path}/.{name}.tmp-{os.getpid()}"
        self.fs.makedirs(self.path, exist_ok=True)
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, f"{self.path}/{name}")

    def remove(self, name: str) -> None:
        if self.fs.exists(f"{self.path}/{name}"):
            self.fs.rm_file(f"{self.path}/{name}")


def _storage(uri: str) -> _Local | _Fsspec:
    uri = os.path.expandvars(uri)  # file://$INFERMESH_HOME/checkpoints/...
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        # file:///abs, file://localhost/abs, and file://~/rel for a path under the home directory
        host = "" if parsed.netloc == "localhost" else parsed.netloc
        return _Local(Path(urllib.parse.unquote(host + parsed.path)).expanduser())
    if parsed.scheme == "":
        return _Local(Path(uri).expanduser())
    return _Fsspec(uri)


def _checkpoints(store: _Local | _Fsspec) -> list[tuple[int, str]]:
    found = []
    for name in store.names():
        match = _CHECKPOINT_RE.fullmatch(name)
        if match:
            found.append((int(match.group(1)), name))
    return sorted(found)


def latest_checkpoint(uri: str) -> tuple[int, str] | None:
    """The newest checkpoint under `uri`: (its step, its path or URL); None if there is none."""
    store = _storage(uri)
    found = _checkpoints(store)
    if not found:
        return None
    step, name = found[-1]
    return step, store.where(name)


def _save(store: _Local | _Fsspec, step: int, w: np.ndarray, keep: int) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, w=w, step=np.int64(step))
    store.write_atomic(f"step-{step:08d}.npz", buffer.getvalue())
    for _, name in _checkpoints(store)[:-keep]:
        store.remove(name)


def _load(store: _Local | _Fsspec, name: str) -> tuple[int, np.ndarray]:
    with np.load(io.BytesIO(store.read(name))) as data:
        return int(data["step"]), np.array(data["w"])


# -- the simulated all-reduce ------------------------------------------------------------------
def comm_ms(topology: dict[str, Any], world: int, local: int, wan_factor: float) -> float:
    """Simulated all-reduce time of one step (see the module docstring)."""
    if world <= 1:
        return 0.0
    algorithm = topology.get("algorithm", "ring")
    compression = 0.5 if topology.get("compression") else 1.0
    inter = HOP_MS * wan_factor * compression
    if algorithm == "tree":
        return 2 * math.ceil(math.log2(world)) * inter
    if algorithm == "hierarchical":
        per_node = max(1, min(local, world))
        nodes = math.ceil(world / per_node)
        return 2 * (per_node - 1) * INTRA_HOP_MS + 2 * (nodes - 1) * inter
    return 2 * (world - 1) * inter


# -- the training loop -------------------------------------------------------------------------
@dataclass
class _Config:
    rank: int
    world: int
    local_world: int
    steps: int
    step_s: float
    cpu_share: float
    uri: str | None
    interval: int
    keep: int
    topology: dict[str, Any]
    topology_file: str | None
    master: tuple[str, int] | None  # MASTER_ADDR, MASTER_PORT: where the ranks meet

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str]) -> _Config:
        world = int(env.get("WORLD_SIZE", "1"))
        addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
        return cls(
            rank=int(env.get("RANK", "0")),
            world=world,
            local_world=int(env.get("LOCAL_WORLD_SIZE", str(world))),
            steps=int(env.get("INFERMESH_STEPS") or 200),
            step_s=float(env.get("INFERMESH_STEP_TIME_MS") or 50) / 1000,
            cpu_share=min(1.0, max(0.0, float(env.get("INFERMESH_SYNTHETIC_CPU_SHARE") or 1))),
            uri=env.get("INFERMESH_CHECKPOINT_URI") or None,
            interval=int(env.get("INFERMESH_CHECKPOINT_INTERVAL") or 50),
            keep=int(env.get("INFERMESH_CHECKPOINT_KEEP") or 3),
            topology=json.loads(env.get("INFERMESH_TOPOLOGY") or "{}"),
            topology_file=env.get("INFERMESH_TOPOLOGY_FILE") or None,
            master=(addr, int(port)) if addr and port else None,
        )


class _Signals:
    def __init__(self) -> None:
        self.stop = False
        self.checkpoint = False
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGUSR1, self._on_usr1)

    def _on_term(self, _signum: int, _frame: Any) -> None:
        self.stop = True

    def _on_usr1(self, _signum: int, _frame: Any) -> None:
        self.checkpoint = True


def _report(**fields: Any) -> None:
    print("INFERMESH_REPORT " + json.dumps(fields), flush=True)


def _topology(path: str | None, current: dict[str, Any]) -> dict[str, Any]:
    if not path:
        return current
    try:
        hint = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # gone with its rank, or unreadable: keep the last one
        return current
    return hint if isinstance(hint, dict) else current


def _wan_factor(store: _Local | _Fsspec | None) -> float:
    if store is None:
        return 1.0
    try:
        return max(0.0, float(store.read(WAN_FILE).decode().strip()))
    except (OSError, ValueError):  # absent or being rewritten: no slowdown
        return 1.0


def _rendezvous(
    cfg: _Config, sigs: _Signals, step: int | None, w: np.ndarray
) -> tuple[int | None, np.ndarray] | None:
    """Rank 0 waits for every other rank at MASTER_ADDR:MASTER_PORT and hands them the step it
    resumes from and its weights, as DDP's initial broadcast would; (step, weights) for this
    rank, or None when stopped or when the gang did not meet in time."""
    assert cfg.master is not None
    deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_S
    if cfg.rank == 0:
        with socket.create_server(cfg.master) as server:
            server.settimeout(0.2)
            peers: list[socket.socket] = []
            while len(peers) < cfg.world - 1:
                if sigs.stop or time.monotonic() > deadline:
                    return None
                with contextlib.suppress(TimeoutError):
                    peers.append(server.accept()[0])
            message = f"{-1 if step is None else step}\n".encode() + w.astype("<f8").tobytes()
            for peer in peers:
                with peer:
                    peer.sendall(message)
        return step, w
    while not sigs.stop and time.monotonic() < deadline:
        try:
            conn = socket.create_connection(cfg.master, timeout=RENDEZVOUS_TIMEOUT_S)
        except OSError:  # rank 0 is not listening yet
            time.sleep(0.05)
            continue
        with conn, conn.makefile("rb") as stream:
            got = int(stream.readline())
            weights = np.frombuffer(stream.read(DIM * 8), dtype="<f8").copy()
        return (None if got < 0 else got), weights
    return None


def train(cfg: _Config) -> int:
    sigs = _Signals()
    store = _storage(cfg.uri) if cfg.uri else None
    rng = np.random.default_rng(cfg.rank)
    w_true = np.random.default_rng(0).standard_normal(DIM)
    w = np.zeros(DIM)
    resumed: int | None = None
    found = _checkpoints(store) if store is not None else []
    if store is not None and found and (cfg.rank == 0 or cfg.master is None):
        resumed, w = _load(store, found[-1][1])
    if cfg.world > 1 and cfg.master is not None:  # rank 0's choice holds for the gang
        met = _rendezvous(cfg, sigs, resumed, w)
        if met is None:
            print(f"rank {cfg.rank}: the gang did not meet at {cfg.master}", flush=True)
            return 0 if sigs.stop else 1
        resumed, w = met
    step, checkpoint = resumed or 0, resumed
    if resumed is not None:
        print(f"rank {cfg.rank}: resumed from checkpoint step {step}", flush=True)
    else:
        print(f"rank {cfg.rank}: starting at step 0", flush=True)

    def save() -> None:
        nonlocal checkpoint
        if store is not None and cfg.rank == 0 and checkpoint != step:
            _save(store, step, w, cfg.keep)
            checkpoint = step

    topology = _topology(cfg.topology_file, cfg.topology)
    wan, wan_read, last_report, loss = _wan_factor(store), time.monotonic(), None, 0.0
    while step < cfg.steps and not sigs.stop:
        t0 = time.monotonic()
        busy_until = t0 + cfg.step_s * cfg.cpu_share
        while True:  # real SGD until this step's compute time is spent
            x = rng.standard_normal((BATCH, DIM))
            err = x @ w - (x @ w_true + 0.01 * rng.standard_normal(BATCH))
            w -= LEARNING_RATE * (x.T @ err) / BATCH
            loss = float(err @ err) / BATCH
            if time.monotonic() >= busy_until:
                break
        time.sleep(max(0.0, t0 + cfg.step_s - time.monotonic()))
        if time.monotonic() - wan_read >= WAN_REREAD_S:
            wan, wan_read = _wan_factor(store), time.monotonic()
            topology = _topology(cfg.topology_file, topology)
        comm = comm_ms(topology, cfg.world, cfg.local_world, wan)
        time.sleep(comm / 1000)
        step += 1
        saved = step % cfg.interval == 0 or sigs.checkpoint or step == cfg.steps
        if saved:
            save()
            sigs.checkpoint = False
        now = time.monotonic()
        if saved or last_report is None or now - last_report >= REPORT_EVERY_S:
            elapsed = now - t0
            _report(
                step=step,
                step_time_ms=round(elapsed * 1000, 3),
                comm_ms=round(comm, 3),
                tokens_per_s=round(TOKENS_PER_STEP / elapsed, 1),
                checkpoint_step=checkpoint,
                loss=round(loss, 6),
                resumed_from=resumed,
            )
            last_report = now
    if sigs.stop and step < cfg.steps:
        save()
        _report(step=step, checkpoint_step=checkpoint, resumed_from=resumed, stopped=True)
        print(f"rank {cfg.rank}: stopped on request at step {step}", flush=True)
    else:
        print(f"rank {cfg.rank}: done, {step} steps, loss {loss:.6f}", flush=True)
    return 0


def main() -> int:
    return train(_Config.from_env(os.environ))


if __name__ == "__main__":
    sys.exit(main())
