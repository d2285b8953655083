"""Starting and stopping ``popek serve``: the cluster boots, then the HTTP server listens; a signal ends both.

``Server`` runs inside an asyncio loop; ``serve_forever`` is the command (banner, one-line logging, Ctrl-C);
``BackgroundServer`` runs a server in a thread of its own, for tests and programs that drive one.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
import signal
import sys
import threading
from collections.abc import Callable

from aiohttp import web

from popek.vmm.serve.app import Frontend, make_app, make_frontend
from popek.vmm.serve.cluster import Cluster
from popek.vmm.serve.config import ConfigError, ServeConfig

# A longer request line or header is 400; after an error answer, unread body bytes are drained for at most
# lingering_time seconds before the connection closes.
HTTP_LIMITS = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 64, "lingering_time": 1.0}


class Server:
    """The front-end and its cluster in the running asyncio loop."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.admin_token = config.admin_token or secrets.token_urlsafe(18)
        self.frontend: Frontend | None = None
        self.port = config.port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The base URL clients use."""
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Boot every VM, then listen (``port`` 0 picks a free one; ``self.port`` tells which)."""
        setup_logging()  # aiohttp logs a malformed request with its traceback otherwise
        cluster = Cluster(self.config, asyncio.get_running_loop())
        await cluster.start()
        self.frontend = make_frontend(self.config, cluster, self.admin_token)
        self._runner = web.AppRunner(make_app(self.frontend), access_log=None, handle_signals=False,
                                     keepalive_timeout=self.config.idle_timeout, shutdown_timeout=2.0,
                                     **HTTP_LIMITS)  # fmt: skip
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self.stop()
            raise ConfigError(f"cannot listen on {self.config.host}:{self.config.port}: {e.strerror or e}") from None
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop the VM threads (requests they hold are answered 503), then close every connection."""
        if self.frontend is not None:
            await self.frontend.cluster.shutdown()
            await self.frontend.migrations.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def banner(self) -> str:
        """What ``popek serve`` prints once it listens: the VMs, the address, the policy, the admin token."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title="popek serve: VMs")
        for col in ("vm", "services", "shard", "guest", "monitor", "profile", "state"):
            table.add_column(col)
        for r in self.frontend.cluster.replicas:
            shard = str(r.spec.shard) if "kv" in r.spec.services else ""
            table.add_row(r.id, ",".join(r.spec.services), shard, r.spec.design, r.spec.monitor, r.spec.profile,
                          r.state + (f" ({r.reason})" if r.reason else ""))  # fmt: skip
        text = io.StringIO()
        Console(file=text, width=120).print(table)
        token = "from the configuration" if self.config.admin_token else self.admin_token
        return (text.getvalue() + f"listening on {self.url} (policy {self.config.policy}, core "
                f"{self.config.core})\nadmin token: {token}\n")  # fmt: skip


class _OneLine(logging.Formatter):
    """Log records in one line: an exception is named, its traceback left out."""

    def format(self, record: logging.LogRecord) -> str:
        """The record's message, with ': Type: message' for an attached exception."""
        exc = record.exc_info[1] if record.exc_info else None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        text = super().format(record)
        if exc is not None:
            text = f"{text}: {type(exc).__name__}: {exc}"
        return " ".join(text.split())  # one line, whatever the message held


def setup_logging() -> None:
    """Log the front-end's and aiohttp's warnings to stderr, one line each, without tracebacks."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine("popek serve: %(message)s"))
    for name in ("popek.serve", "aiohttp", "asyncio"):
        logger = logging.getLogger(name)
        if any(isinstance(h.formatter, _OneLine) for h in logger.handlers):
            continue
        logger.handlers[:] = [handler]
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def serve_forever(config: ServeConfig, out: Callable[[str], None] = print) -> int:
    """Run ``popek serve`` until SIGINT or SIGTERM; return the exit status."""

    async def main() -> None:
        server = Server(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # no signal handlers on this platform
                loop.add_signal_handler(sig, stop.set)
        await server.start()
        try:
            out(server.banner())
            sys.stdout.flush()
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(main())
    return 0


class BackgroundServer:
    """A ``Server`` in a thread with its own event loop: ``with BackgroundServer(config) as s: s.url``."""

    def __init__(self, config: ServeConfig) -> None:
        self.server = Server(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="popek-serve", daemon=True)

    @property
    def url(self) -> str:
        """The base URL clients use."""
        return self.server.url

    @property
    def admin_token(self) -> str:
        """The admin token (generated unless the configuration has one)."""
        return self.server.admin_token

    def run(self, coro_fn: Callable, *args: object, timeout: float = 60) -> object:
        """Run ``coro_fn(*args)`` in the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro_fn(*args), self._loop).result(timeout)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        try:
            self.run(self.server.start)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self.server.stop)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
