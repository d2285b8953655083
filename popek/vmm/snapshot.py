"""Snapshots of a virtual machine: save one VM to bytes, and build a running VM back from them (docs/snapshots.md).

A snapshot holds everything the guest can observe and everything the host needs to go on: the virtual CPU,
guest memory (zero pages cost nothing, the rest is compressed), the console and the network card with the
messages it holds, the monitor's name and its own state, the profile and the identity of the image. It is read
completely and checked (magic, version, checksum, every field) before anything is built, so a bad file gives a
``SnapshotError`` and never a half-restored VM.

File layout (little-endian): ``MAGIC`` (8 bytes), version (u32), body length (u64), sha256 of the body (32
bytes), body. The body is the header length (u32), the header (zlib-compressed JSON), then the memory (zlib of
the non-zero pages, in order; the header's page map says which they are).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from popek.cores import CoreRun
from popek.isa import state as S
from popek.isa.devices.console import Output
from popek.isa.devices.nic import MAX_RING, Message
from popek.isa.profiles import Profile, load_profile
from popek.isa.spec import PROFILE_KEYS
from popek.vmm.host import DEFAULT_CORE, GuestSpec, Host, parse_size
from popek.vmm.monitors import MONITORS
from popek.vmm.monitors.base import Monitor
from popek.vmm.vm import VM, VMStats

MAGIC = b"POPEKSNP"
VERSION = 1
PAGE = 4096  # bytes per page of the memory map: an all-zero page is stored as one clear bit
_PREFIX = struct.Struct("<8sIQ32s")
_NIC_WORDS = ("ctrl", "rx", "tx", "urx", "status", "error", "size", "rx_i", "tx_i", "urx_i", "next_tag", "line")
M32 = S.MASK32
T = TypeVar("T")


class SnapshotError(ValueError):
    """A snapshot that cannot be read or used: truncated, corrupt, of another format, image or profile."""


@dataclass
class Snapshot:
    """One VM as saved: enough to rebuild it exactly."""

    name: str
    memsize: int
    image_sha256: str
    profile: Profile
    monitor: str
    monitor_state: dict
    vstate: np.ndarray
    mem: np.ndarray
    console: dict
    nic: dict
    vm: dict = field(default_factory=dict)  # halted, error, waiting, host_io
    stats: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Guest steps run before the snapshot was taken."""
        return int(self.vstate[S.STEPS])


# --- memory pages -------------------------------------------------------------------------------------------
def page_count(memsize: int) -> int:
    """Pages of ``PAGE`` bytes that cover ``memsize`` bytes (the last one may be short)."""
    return -(-memsize // PAGE)


def nonzero_pages(mem: np.ndarray) -> np.ndarray:
    """A bool per page of ``mem``: True where the page holds a byte that is not zero."""
    n = page_count(len(mem))
    full = len(mem) // PAGE
    out = np.zeros(n, dtype=bool)
    out[:full] = mem[: full * PAGE].reshape(full, PAGE).any(axis=1)
    if n > full:
        out[full] = mem[full * PAGE :].any()
    return out


def pack_pages(mem: np.ndarray, pages: np.ndarray) -> bytes:
    """The bytes of the pages listed in ``pages`` (indexes, in order), one after the other, compressed."""
    z = zlib.compressobj(6)
    parts = [z.compress(mem[p * PAGE : (p + 1) * PAGE].tobytes()) for p in pages.tolist()]
    return b"".join(parts) + z.flush()


def unpack_pages(blob: bytes, mem: np.ndarray, pages: np.ndarray) -> None:
    """Write the pages ``pack_pages`` packed back into ``mem``; SnapshotError when the data does not fit."""
    sizes = [min(PAGE, len(mem) - p * PAGE) for p in pages.tolist()]
    expected = sum(sizes)
    try:
        z = zlib.decompressobj()
        data = z.decompress(blob, expected + 1)  # never inflate more than the pages can hold
    except zlib.error as e:
        raise SnapshotError(f"memory does not decompress: {e}") from None
    if len(data) != expected or not z.eof:
        raise SnapshotError(f"memory holds {len(data)} bytes where its page map needs {expected}")
    pos = 0
    for p, size in zip(pages.tolist(), sizes, strict=True):
        mem[p * PAGE : p * PAGE + size] = np.frombuffer(data, dtype=np.uint8, count=size, offset=pos)
        pos += size


# --- capture and encoding -----------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _message(m: Message) -> list:
    return [m.tag, m.port, _b64(m.payload), m.urgent]


def capture(vm: VM, monitor: Monitor) -> Snapshot:
    """A snapshot of ``vm`` as it is now (between two of its time slices), under ``monitor``."""
    nic = vm.nic
    nic_state = {k: int(getattr(nic, k)) for k in _NIC_WORDS}
    nic_state |= {"inbox": [_message(m) for m in nic.inbox], "urgent_inbox": [_message(m) for m in nic.urgent_inbox],
                  "replies": [_message(m) for m in nic.replies]}  # fmt: skip
    st = vm.stats
    return Snapshot(
        name=vm.name,
        memsize=vm.memsize,
        image_sha256=vm.image_sha256,
        profile=vm.profile,
        monitor=monitor.name,
        monitor_state=monitor.save_vm(vm),
        vstate=vm.vstate.copy(),
        mem=vm.mem.copy(),
        console={
            "output": _b64(vm.console.output),
            "dropped": vm.console.output.dropped,
            "cap": vm.console.output.cap,
            "input": _b64(vm.console.input),
        },  # fmt: skip
        nic=nic_state,
        vm={"halted": vm.halted, "error": vm.error, "waiting": vm.waiting, "host_io": [list(x) for x in vm.host_io]},
        stats={
            "exits": dict(st.exits),
            "emulated": st.emulated,
            "reflected": st.reflected,
            "injected": st.injected,
            "monitor_seconds": st.monitor_seconds,
            "extra": dict(st.extra),
        },  # fmt: skip
    )


def frame(header: dict, blob: bytes) -> bytes:
    """A checksummed message: the prefix, then the header (compressed JSON) and ``blob``."""
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 6)
    body = struct.pack("<I", len(head)) + head + blob
    return _PREFIX.pack(MAGIC, VERSION, len(body), hashlib.sha256(body).digest()) + body


def _memory_header(memsize: int, pages: np.ndarray) -> dict:
    used = np.zeros(page_count(memsize), dtype=bool)
    used[pages] = True
    return {"page": PAGE, "map": _b64(np.packbits(used).tobytes()), "pages": len(pages)}


def encode(snap: Snapshot, pages: np.ndarray | None = None) -> bytes:
    """The bytes of a snapshot file; with ``pages`` (indexes), a migration's delta holding only those pages."""
    delta = pages is not None
    if pages is None:
        pages = np.flatnonzero(nonzero_pages(snap.mem))
    header = {
        "kind": "delta" if delta else "snapshot", "name": snap.name, "memsize": snap.memsize,
        "image_sha256": snap.image_sha256,
        "profile": {"name": snap.profile.name, "behaviour": dict(snap.profile.behaviour)},
        "monitor": snap.monitor, "monitor_state": snap.monitor_state, "vstate": [int(x) for x in snap.vstate],
        "console": snap.console, "nic": snap.nic, "vm": snap.vm, "stats": snap.stats,
        "memory": _memory_header(snap.memsize, pages),
    }  # fmt: skip
    return frame(header, pack_pages(snap.mem, pages))


def pages_message(mem: np.ndarray, pages: np.ndarray, memsize: int) -> bytes:
    """A migration round: the pages ``pages`` (indexes) of ``mem``, framed as a snapshot is."""
    return frame(
        {"kind": "pages", "memsize": memsize, "memory": _memory_header(memsize, pages)}, pack_pages(mem, pages)
    )


def apply_pages_message(data: bytes, mem: np.ndarray) -> None:
    """Write the pages of a migration round into ``mem``; SnapshotError for a bad message."""
    h, blob = _guarded(unframe, split(data))
    if h.get("kind") != "pages" or h.get("memsize") != len(mem):
        raise SnapshotError("not a migration round for this VM")
    _guarded(_memory, h["memory"], blob, mem)


def dumps(host: Host, which: int | str = 0) -> bytes:
    """The snapshot of one VM of ``host`` (by index or name), as the bytes of a file."""
    vm = host.vm(which)
    return encode(capture(vm, host.monitors[host.vms.index(vm)]))


def save(host: Host, path: str | Path, which: int | str = 0) -> int:
    """Write the snapshot of one VM of ``host`` to ``path``; return its size in bytes."""
    data = dumps(host, which)
    Path(path).write_bytes(data)
    return len(data)


# --- decoding -----------------------------------------------------------------------------------------------
def _u32(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= M32:
        raise SnapshotError(f"{what} is not a 32-bit value: {value!r}")
    return value


def _bytes(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise SnapshotError(f"{what} is not base64 text")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeError):
        raise SnapshotError(f"{what} is not valid base64") from None


def _messages(items: object, what: str) -> list[Message]:
    if not isinstance(items, list):
        raise SnapshotError(f"{what} is not a list")
    out = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 4):
            raise SnapshotError(f"{what}: a message is not [tag, port, payload, urgent]")
        out.append(Message(_u32(item[0], f"{what} tag"), _u32(item[1], f"{what} port") & 0xFFFF,
                           _bytes(item[2], f"{what} payload"), bool(item[3])))  # fmt: skip
    return out


def _profile(data: object) -> Profile:
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("name"), str)
        or not isinstance(data.get("behaviour"), dict)
    ):
        raise SnapshotError("the profile is not a name and a behaviour table")
    b = data["behaviour"]
    if set(b) != set(PROFILE_KEYS) or not all(isinstance(v, int) and 0 <= v <= 2 for v in b.values()):
        raise SnapshotError("the profile's behaviour table does not match this popek's instruction set")
    return Profile(data["name"], {k: int(b[k]) for k in PROFILE_KEYS})


def split(data: bytes) -> bytes:
    """Check a snapshot file's magic, version, length and checksum; return its body."""
    if len(data) < _PREFIX.size:
        if not MAGIC.startswith(bytes(data[: len(MAGIC)])):
            raise SnapshotError("not a popek snapshot (wrong magic)")
        raise SnapshotError(f"truncated: {len(data)} bytes, shorter than a snapshot's {_PREFIX.size}-byte prefix")
    magic, version, length, digest = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError("not a popek snapshot (wrong magic)")
    if version != VERSION:
        raise SnapshotError(f"snapshot format version {version}; this popek reads version {VERSION}")
    body = bytes(data[_PREFIX.size :])
    if len(body) < length:
        raise SnapshotError(f"truncated: the body has {len(body)} of its {length} bytes")
    if len(body) > length:
        raise SnapshotError(f"{len(body) - length} bytes after the end of the snapshot")
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError("corrupt: the checksum does not match the contents")
    return body


def _guarded(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``, with any malformed field of a checksummed message turned into a SnapshotError."""
    try:
        return fn(*args)
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, zlib.error) as e:
        # The checksum passed, so the writer made it so: still a clear error, not a traceback.
        raise SnapshotError(f"malformed contents: {type(e).__name__}: {e}") from None


def decode(data: bytes, base: np.ndarray | None = None) -> Snapshot:
    """Read and check a snapshot completely; SnapshotError says what is wrong with it.

    ``base`` is the memory a migration's rounds built up: a delta's pages are written into it.
    """
    return _guarded(_decode_body, split(data), base)


def unframe(body: bytes) -> tuple[dict, bytes]:
    """The header (a JSON object) and the blob after it, from a checked body."""
    (head_len,) = struct.unpack_from("<I", body)
    head = body[4 : 4 + head_len]
    if len(head) != head_len:
        raise SnapshotError("the header runs past the end of the snapshot")
    z = zlib.decompressobj()
    text = z.decompress(head, 1 << 28)  # a header is small; refuse to inflate a bomb
    if not z.eof:
        raise SnapshotError("the header does not decompress")
    h = json.loads(text)
    if not isinstance(h, dict):
        raise SnapshotError("the header is not an object")
    return h, body[4 + head_len :]


def _memory(info: dict, blob: bytes, mem: np.ndarray) -> None:
    """Write the pages a header's memory map names into ``mem``."""
    if info["page"] != PAGE:
        raise SnapshotError(f"pages of {info['page']} bytes; this popek uses {PAGE}")
    npages = page_count(len(mem))
    bits = np.frombuffer(_bytes(info["map"], "the page map"), dtype=np.uint8)
    if len(bits) != -(-npages // 8):
        raise SnapshotError("the page map does not match the memory size")
    unpack_pages(blob, mem, np.flatnonzero(np.unpackbits(bits)[:npages]))


def _decode_body(body: bytes, base: np.ndarray | None = None) -> Snapshot:
    h, blob = unframe(body)
    kind = h["kind"]
    if kind == "pages":
        raise SnapshotError("a round of a migration's memory, not a snapshot")
    if kind not in ("snapshot", "delta"):
        raise SnapshotError(f"unknown kind of message '{kind}'")
    if kind == "delta" and base is None:
        raise SnapshotError("a migration's last delta, not a snapshot: it needs the pages sent before it")
    memsize = h["memsize"]
    if not isinstance(memsize, int):
        raise SnapshotError("memsize is not a number")
    try:
        parse_size(str(memsize))
    except ValueError as e:
        raise SnapshotError(str(e)) from None
    vstate = h["vstate"]
    if not (isinstance(vstate, list) and len(vstate) == S.NSLOTS and all(isinstance(x, int) for x in vstate)):
        raise SnapshotError(f"the virtual CPU is not {S.NSLOTS} integers")
    monitor = h["monitor"]
    if monitor not in MONITORS:
        raise SnapshotError(f"unknown monitor '{monitor}' in the snapshot")
    if not isinstance(h["monitor_state"], dict) or not isinstance(h["name"], str):
        raise SnapshotError("the monitor's state or the VM's name is malformed")
    if kind == "delta":
        if len(base) != memsize:
            raise SnapshotError(f"the delta is of a VM of {memsize} bytes, the pages sent before of {len(base)}")
        mem = base  # in place: the rounds built it for this VM alone, and copying it would lengthen the downtime
    else:
        mem = np.zeros(memsize, dtype=np.uint8)
    _memory(h["memory"], blob, mem)
    c = h["console"]
    console = {"output": _bytes(c["output"], "console output"), "dropped": int(c["dropped"]), "cap": int(c["cap"]),
               "input": _bytes(c["input"], "console input")}  # fmt: skip
    n = h["nic"]
    nic = {k: _u32(n[k], f"the card's {k}") for k in _NIC_WORDS}
    if not 1 <= nic["size"] or (nic["ctrl"] & 1 and nic["size"] > MAX_RING):
        raise SnapshotError(f"the card's ring size {nic['size']} is out of range")
    for k in ("rx_i", "tx_i", "urx_i"):
        if nic["ctrl"] & 1 and nic[k] >= nic["size"]:
            raise SnapshotError(f"the card's {k} is past its ring")
    for k in ("inbox", "urgent_inbox", "replies"):
        nic[k] = _messages(n[k], f"the card's {k}")
    vm = h["vm"]
    vm = {"halted": bool(vm["halted"]), "error": str(vm["error"]), "waiting": bool(vm["waiting"]),
          "host_io": [(int(a), bool(b), int(c)) for a, b, c in vm["host_io"]]}  # fmt: skip
    st = h["stats"]
    stats = {"exits": {str(k): int(v) for k, v in st["exits"].items()}, "emulated": int(st["emulated"]),
             "reflected": int(st["reflected"]), "injected": int(st["injected"]),
             "monitor_seconds": float(st["monitor_seconds"]),
             "extra": {str(k): int(v) for k, v in st["extra"].items()}}  # fmt: skip
    return Snapshot(
        name=h["name"], memsize=memsize, image_sha256=str(h["image_sha256"]), profile=_profile(h["profile"]),
        monitor=monitor, monitor_state=h["monitor_state"], vstate=np.array(vstate, dtype=np.int64), mem=mem,
        console=console, nic=nic, vm=vm, stats=stats,
    )  # fmt: skip


def read(path: str | Path) -> Snapshot:
    """Read and check the snapshot file at ``path``."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SnapshotError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return decode(data)
    except SnapshotError as e:
        raise SnapshotError(f"{path}: {e}") from None


def check(snap: Snapshot, image: bytes | None = None, profile: str | Profile | None = None) -> None:
    """Refuse a snapshot of another image or profile than the ones given (None: not checked)."""
    if image is not None and hashlib.sha256(bytes(image)).hexdigest() != snap.image_sha256:
        raise SnapshotError("the snapshot was taken of another image (its sha256 differs)")
    if profile is not None:
        want = load_profile(profile)
        if dict(want.behaviour) != dict(snap.profile.behaviour):
            raise SnapshotError(f"the snapshot was taken under profile '{snap.profile.name}', not '{want.name}'")


# --- restore ------------------------------------------------------------------------------------------------
def _pv_guest(snap: Snapshot) -> bool:
    """True when the snapshot holds a paravirtual guest started under its monitor (its state is that monitor's)."""
    return snap.monitor.startswith("pv") and snap.monitor_state.get("guest") is not None


def resume_monitor(snap: Snapshot, monitor: str | None) -> str:
    """The monitor to resume under: the snapshot's, or ``monitor`` when the guest can move to it."""
    if monitor is None or monitor == snap.monitor:
        return snap.monitor
    if monitor not in MONITORS:
        raise SnapshotError(f"unknown monitor '{monitor}' (choose from {', '.join(MONITORS)})")
    if _pv_guest(snap):
        raise SnapshotError(
            f"a paravirtual guest saved under '{snap.monitor}' keeps its kernel's state with that monitor: "
            f"resume it under '{snap.monitor}', not '{monitor}'"
        )
    return monitor


def apply(snap: Snapshot, vm: VM, monitor: Monitor) -> None:
    """Load a decoded snapshot into ``vm`` (of the same memory size), run by ``monitor``."""
    if vm.memsize != snap.memsize:
        raise SnapshotError(f"the snapshot's VM has {snap.memsize} bytes of memory, this one {vm.memsize}")
    if not np.shares_memory(vm.mem, snap.mem):  # a migration target received its pages in place
        vm.mem[:] = snap.mem
    vm.vstate[:] = snap.vstate
    vm.profile = snap.profile
    vm.rstate[S.PROFILE : S.PROFILE + len(PROFILE_KEYS)] = snap.profile.array()  # what the real CPU enforces
    vm.image_sha256 = snap.image_sha256
    vm.halted, vm.error, vm.waiting = snap.vm["halted"], snap.vm["error"], snap.vm["waiting"]
    vm.host_io = list(snap.vm["host_io"])
    out = Output(snap.console["cap"])
    out += snap.console["output"]
    out.dropped = snap.console["dropped"]
    out.sink = vm.console.output.sink
    vm.console.output, vm.console.input = out, bytearray(snap.console["input"])
    nic = vm.nic
    for k in _NIC_WORDS:
        setattr(nic, k, snap.nic[k])
    nic.inbox.clear()
    nic.inbox.extend(snap.nic["inbox"])
    nic.urgent_inbox.clear()
    nic.urgent_inbox.extend(snap.nic["urgent_inbox"])
    nic.replies = list(snap.nic["replies"])
    st = snap.stats
    vm.stats = VMStats(Counter(st["exits"]), st["emulated"], st["reflected"], st["injected"], st["monitor_seconds"],
                       Counter(st["extra"]))  # fmt: skip
    vm.counters[:] = 0
    state = snap.monitor_state if monitor.name == snap.monitor else {}
    try:
        monitor.restore_vm(vm, state)
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"the {snap.monitor} monitor's state is malformed: {e}") from None


def restore(snap: Snapshot | bytes, core: str | CoreRun = DEFAULT_CORE, monitor: str | None = None) -> Host:
    """A host of one VM, the snapshot's, ready to run on ``core`` (under ``monitor`` when it may change)."""
    if not isinstance(snap, Snapshot):
        snap = decode(snap)
    name = resume_monitor(snap, monitor)
    host = Host([GuestSpec(snap.name, b"", name, snap.profile, snap.memsize)], core)
    apply(snap, host.vms[0], host.monitors[0])
    return host


def restore_into(host: Host, which: int | str, snap: Snapshot | bytes) -> VM:
    """Replace one VM of an existing host (same memory size) by the snapshot's; its monitor stays the host's."""
    if not isinstance(snap, Snapshot):
        snap = decode(snap)
    vm = host.vm(which)
    mon = host.monitors[host.vms.index(vm)]
    resume_monitor(snap, mon.name)
    apply(snap, vm, mon)
    return vm
