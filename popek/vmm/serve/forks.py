"""The fork server VM processes come from: a process that imported popek once and forks one VM per request.

Forking the front-end itself would copy its threads' locks and its clients' sockets into every VM; starting
each VM as a new interpreter would pay popek's imports (about a second) for every boot. So the front-end
starts this server once, a clean single-threaded process, and asks it for each VM: it passes one end of the
VM's socket pair and the VM's arguments, and gets the new process's id back. The server ignores SIGCHLD, so
the kernel reaps the VMs that end; it ends when the front-end closes its socket (or dies).
"""

from __future__ import annotations

import atexit
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading

_LENGTH = struct.Struct("<I")
_PID = struct.Struct("<i")
_server: ForkServer | None = None
_server_lock = threading.Lock()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the other end closed the socket")
        data += chunk
    return bytes(data)


class ForkServer:
    """The front-end's handle on its fork server (one per front-end process, started on first use)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        command = f"from popek.vmm.serve.forks import serve; serve({theirs.fileno()})"
        self.process = subprocess.Popen([sys.executable, "-c", command], pass_fds=[theirs.fileno()],
                                        stdin=subprocess.DEVNULL)  # fmt: skip
        theirs.close()
        self.sock = ours
        self.lock = threading.Lock()

    def alive(self) -> bool:
        """True while the server runs."""
        return self.process.poll() is None

    def fork(self, link: socket.socket, args: tuple) -> int:
        """A new VM process running ``vmproc.main(link, *args)``; its process id."""
        data = pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
        with self.lock:
            socket.send_fds(self.sock, [_LENGTH.pack(len(data))], [link.fileno()])
            self.sock.sendall(data)
            (pid,) = _PID.unpack(_recv_exactly(self.sock, _PID.size))
        if pid <= 0:
            raise OSError(-pid, f"the fork server could not fork: {os.strerror(-pid)}")
        return pid

    def close(self) -> None:
        """End the server (the VMs it started go on until their front-end closes their sockets)."""
        atexit.unregister(self.close)
        self.sock.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _fork_server(failed: ForkServer | None = None) -> ForkServer:
    """This front-end's fork server: started on first use, and again when it died or ``failed`` is it."""
    global _server
    with _server_lock:
        if _server is None or _server is failed or not _server.alive():
            if _server is not None:
                _server.close()
            _server = ForkServer()
            atexit.register(_server.close)
        return _server


def fork_vm(link: socket.socket, args: tuple) -> int:
    """Start a VM process through this front-end's fork server; its pid."""
    server = _fork_server()
    try:
        return server.fork(link, args)
    except (ConnectionError, OSError):  # the server died (killed, out of memory): once more with a new one
        return _fork_server(failed=server).fork(link, args)


def serve(fd: int) -> None:
    """The fork server's loop: for each request, fork a VM process and answer with its pid."""
    from popek.vmm.serve import vmproc  # imported once here, inherited by every VM

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the front-end's to handle
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # ended VMs are reaped by the kernel
    sock = socket.socket(fileno=fd)
    warmed: set[tuple[str, str]] = set()
    while True:
        try:
            header, fds, _, _ = socket.recv_fds(sock, _LENGTH.size, 1)
            if not header or not fds:
                return  # the front-end is gone
            (n,) = _LENGTH.unpack(header + _recv_exactly(sock, _LENGTH.size - len(header)))
            args = pickle.loads(_recv_exactly(sock, n))
        except (ConnectionError, OSError):
            return
        link = socket.socket(fileno=fds[0])
        _, guest, _, settings, _ = args
        if (settings.core, guest.monitor) not in warmed:
            warmed.add((settings.core, guest.monitor))
            vmproc.warm(settings.core, guest.monitor)
        try:
            pid = os.fork()
        except OSError as e:
            link.close()
            sock.sendall(_PID.pack(-(e.errno or 1)))
            continue
        if pid == 0:
            status = 1
            try:
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                vmproc.main(link, *args)
                status = 0
            finally:
                os._exit(status)
        link.close()
        sock.sendall(_PID.pack(pid))
