"""Driving ``popek serve`` from outside, as a deployment does: the command in a process of its own, HAProxy in
front of several of them, wrk for load. Every process started here is stopped by the context that started it.

Used by tests/test_load.py and benchmarks/serve.py. Loopback only: these helpers bind 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

LOOPBACK = "127.0.0.1"
STOP_WAIT = 30.0  # seconds a process gets to end after SIGTERM before it is killed


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (for programs that cannot take port 0)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def which(program: str) -> str | None:
    """The path of ``program``: on PATH, or in /usr/sbin (where Debian puts haproxy, off a user's PATH)."""
    return shutil.which(program, path=os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"]))


def missing(*programs: str) -> list[str]:
    """The programs of ``programs`` that are not installed."""
    return [p for p in programs if which(p) is None]


def get_json(url: str, timeout: float = 10.0) -> dict:
    """GET ``url`` and parse its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def fetch(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One request on a fresh connection: (status, headers with lower-case names, body); never raises on 4xx/5xx."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


class ServeProcess:
    """``popek serve`` in a process of its own, on a free loopback port: ``with ServeProcess([...]) as s: s.url``."""

    def __init__(self, vm_args: Sequence[str] = (), *options: str, admin_token: str = "load-token",
                 boot_timeout: float = 180.0) -> None:  # fmt: skip
        self.args = [sys.executable, "-m", "popek", "serve", "--port", "0", "--admin-token", admin_token,
                     *options, *vm_args]  # fmt: skip
        self.admin_token, self.boot_timeout = admin_token, boot_timeout
        self.url = ""
        self.banner = ""
        self.proc: subprocess.Popen | None = None
        self._err = tempfile.TemporaryFile()

    def start(self) -> ServeProcess:
        """Start the command; return once it listens (its banner names the address)."""
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self._err, start_new_session=True)
        lines: list[str] = []
        timer = threading.Timer(self.boot_timeout, self.proc.kill)  # a server that never comes up ends here
        timer.start()
        try:
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace")
                lines.append(line)
                if line.startswith("listening on "):
                    self.url = line.split()[2]
                if line.startswith("admin token"):
                    break
        finally:
            timer.cancel()
        self.banner = "".join(lines)
        if not self.url:
            self.stop()
            raise RuntimeError(f"popek serve did not start: {self.stderr()[-2000:]}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep its pipe drained
        return self

    def stop(self) -> int:
        """SIGTERM, then wait (SIGKILL after STOP_WAIT seconds); the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stderr(self) -> str:
        """What the process wrote to stderr so far."""
        self._err.seek(0)
        return self._err.read().decode(errors="replace")

    def admin(self, vm: str, action: str) -> tuple[int, dict[str, str], bytes]:
        """POST /admin/vms/<vm>/<action> with the token."""
        return fetch(f"{self.url}/admin/vms/{vm}/{action}", "POST", b"",
                    {"Authorization": f"Bearer {self.admin_token}"})  # fmt: skip

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def serve_processes(*clusters: Sequence[str]) -> Iterator[list[ServeProcess]]:
    """Several ``popek serve`` processes, started together (they boot in parallel), all stopped at the end."""
    procs = [ServeProcess(c) for c in clusters]
    try:
        threads = [threading.Thread(target=p.start, daemon=True) for p in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in procs:
            if not p.url:
                raise RuntimeError(f"popek serve did not start: {p.stderr()[-2000:]}")
        yield procs
    finally:
        for p in procs:
            p.stop()


# --- HAProxy ------------------------------------------------------------------------------------------------
def haproxy_config(mode: str, port: int, backends: Sequence[str]) -> str:
    """An HAProxy configuration in front of ``backends`` (base URLs): ``tcp`` or ``http`` (docs/serve.md)."""
    servers = [(f"b{i}", u.removeprefix("http://")) for i, u in enumerate(backends, 1)]
    head = ["global", "    maxconn 1024", "", "defaults", f"    mode {mode}", "    timeout connect 5s",
            "    timeout client 60s", "    timeout server 60s", ""]  # fmt: skip
    if mode == "tcp":  # the transport-layer switch: a connection goes to one back-end, bytes unread
        return "\n".join([*head, "frontend popek", f"    bind {LOOPBACK}:{port}", "    default_backend servers", "",
                          "backend servers", "    balance roundrobin",
                          *(f"    server {n} {a} check" for n, a in servers), ""])  # fmt: skip
    if mode != "http":
        raise ValueError(f"mode {mode!r}: tcp or http")
    # content-aware: each request is read and sent by its URI (kv keys), its cookie (sessions), or in turn
    return "\n".join([
        *head, "frontend popek", f"    bind {LOOPBACK}:{port}", "    option http-keep-alive",
        "    use_backend kv if { path_beg /kv/ }", "    use_backend sessions if { path /session }",
        "    default_backend compute", "",
        "backend compute", "    balance roundrobin", "    option httpchk GET /status",
        *(f"    server {n} {a} check" for n, a in servers), "",
        "backend kv", "    balance uri", "    hash-type consistent", "    option httpchk GET /status",
        *(f"    server {n} {a} check" for n, a in servers), "",
        "backend sessions", "    balance roundrobin", "    cookie popek-lb insert indirect nocache",
        "    option httpchk GET /status", *(f"    server {n} {a} check cookie {n}" for n, a in servers), "",
    ])  # fmt: skip


@contextmanager
def haproxy(mode: str, backends: Sequence[str], start_timeout: float = 20.0) -> Iterator[str]:
    """HAProxy in front of ``backends`` on a free loopback port; yields its URL; stopped at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(haproxy_config(mode, port, backends))
        binary = which("haproxy") or "haproxy"
        check = subprocess.run([binary, "-c", "-q", "-f", str(cfg)], capture_output=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration: {check.stderr.decode(errors='replace')}")
        proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        try:
            url = f"http://{LOOPBACK}:{port}"
            end = time.monotonic() + start_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"haproxy ended: {proc.stderr.read().decode(errors='replace')[-2000:]}")
                try:
                    if fetch(url + "/status", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > end:
                    raise RuntimeError("haproxy did not answer in time")
                time.sleep(0.05)
            yield url
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_WAIT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            proc.stderr.close()


# --- wrk ------------------------------------------------------------------------------------------------------
def wrk(url: str, script: str | os.PathLike, mix: str = "echo", *, requests: int = 0, duration: float = 10.0,
        threads: int = 2, connections: int = 32, timeout: float = 10.0, limit: float = 300.0,
        during: Callable[[], bool] | None = None) -> dict:  # fmt: skip
    """Run wrk with benchmarks/serve.lua; its POPEK-RESULT figures.

    ``requests`` > 0: at least that many answers (split over the threads), then wrk is interrupted; else a run
    of ``duration`` seconds. ``limit`` bounds the run whatever happens. ``during()`` is called every 10 ms
    while wrk runs (to stop a VM half-way, say) until it returns True.
    """
    quota = -(-requests // threads) if requests > 0 else 0
    with tempfile.TemporaryDirectory() as tmp:
        marker = str(Path(tmp) / "quota")
        seconds = max(1, int(limit if quota else duration))
        args = [which("wrk") or "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
                f"--timeout={timeout:g}s", "-s", str(script), url, "--", mix, str(quota), marker]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        end = time.monotonic() + seconds + 30
        try:
            pending = during
            while proc.poll() is None:
                if quota and len(list(Path(tmp).glob("quota.*"))) >= threads:
                    proc.send_signal(signal.SIGINT)  # every thread has its answers: report now
                    break
                if pending is not None and pending():
                    pending = None
                if time.monotonic() > end:
                    break
                time.sleep(0.01)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("POPEK-RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {text[-1000:]} {err.decode(errors='replace')[-1000:]}")
    result = json.loads(line.removeprefix("POPEK-RESULT "))
    result["lost"] = sum(result["errors"].values())  # connections that failed, answers that never came
    return result
