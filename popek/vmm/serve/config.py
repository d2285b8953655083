"""What ``popek serve`` runs: the cluster of guest servers and the front-end's settings, from TOML or arguments.

A VM is described by the services it serves, the guest (a bundled server design or a guest file), its monitor,
profile and memory; kv VMs also name their shard. Every mistake is a ``ConfigError`` naming where it is.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from popek.vmm.host import parse_size
from popek.vmm.serve.services import GROUPS, SERVICES

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8023
DEFAULT_MEM = 4 << 20  # holds every service in both designs (guests/servers/README.md)
POLICIES = ("round-robin", "least-outstanding", "content")
DESIGNS = ("iterative", "concurrent")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


class ConfigError(ValueError):
    """A mistake in a serve configuration (file or arguments)."""


@dataclass(frozen=True)
class VMSpec:
    """One VM of the cluster."""

    id: str
    services: tuple[str, ...]  # real service names (echo, crc32, primes, kv, session)
    guest: str = "concurrent"  # iterative, concurrent (the bundled server kernel) or a .s / image file
    monitor: str = "trap"
    profile: str = "classic"
    mem: int = DEFAULT_MEM
    shard: int = 0  # kv only: which shard of the key space this VM holds a replica of

    @property
    def design(self) -> str:
        """The server design: iterative, concurrent, or the guest file's name."""
        return self.guest if self.guest in DESIGNS else Path(self.guest).name


@dataclass
class ServeConfig:
    """Everything ``popek serve`` needs."""

    vms: list[VMSpec] = field(default_factory=list)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    policy: str = "content"
    admin_token: str = ""  # empty: generate one at start and print it
    core: str = "jit"
    request_timeout: float = 30.0  # seconds a guest may take to answer before the client gets 504
    body_timeout: float = 10.0  # seconds a client may take to send its body before it gets 408
    idle_timeout: float = 15.0  # seconds an idle (or never finished) connection is kept open
    boot_steps: int = 50_000_000  # guest steps a VM may take to boot before it is served anyway
    slice_steps: int = 500_000  # guest steps between two looks at a VM's queue of requests

    def check(self) -> ServeConfig:
        """Validate the whole configuration; return it."""
        if not self.vms:
            raise ConfigError("the cluster has no VM")
        ids = [v.id for v in self.vms]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ConfigError(f"VM id {dup[0]} is used twice")
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown policy '{self.policy}' (choose from {', '.join(POLICIES)})")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not in 0..65535")
        for name in ("request_timeout", "body_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
        if self.boot_steps < 1 or self.slice_steps < 1:
            raise ConfigError("boot_steps and slice_steps must be positive")
        return self


def default_cluster() -> list[VMSpec]:
    """The cluster ``popek serve`` runs without arguments: compute under trap and pv, two kv shards of two."""
    compute = ("echo", "crc32", "primes", "session")
    return [
        VMSpec("compute-1", compute, "concurrent", "trap"),
        VMSpec("compute-2", compute, "concurrent", "pv"),
        VMSpec("kv0-a", ("kv",), "iterative", "trap", shard=0),
        VMSpec("kv0-b", ("kv",), "iterative", "hybrid", shard=0),
        VMSpec("kv1-a", ("kv",), "iterative", "pv", shard=1),
        VMSpec("kv1-b", ("kv",), "iterative", "rewrite", shard=1),
    ]


def parse_services(text: str, where: str) -> tuple[tuple[str, ...], int]:
    """``compute+session`` or ``kv.1`` -> (service names, kv shard)."""
    names: list[str] = []
    shard = 0
    for part in text.split("+"):
        part = part.strip()
        base, dot, num = part.partition(".")
        if dot:
            if base != "kv" or not num.isdigit():
                raise ConfigError(f"{where}: '{part}': only kv takes a shard number (kv.0, kv.1, ...)")
            shard = int(num)
        if base in GROUPS:
            names += GROUPS[base]
        elif base in SERVICES:
            names.append(base)
        else:
            known = ", ".join([*GROUPS, *SERVICES])
            raise ConfigError(f"{where}: unknown service '{base}' (choose from {known})")
    return tuple(dict.fromkeys(names)), shard


def _vm(where: str, id_: str, services: tuple[str, ...], shard: int, guest: str, monitor: str, profile: str,
        mem: int) -> VMSpec:  # fmt: skip
    from popek.vmm.monitors import MONITORS

    if not _ID.match(id_):
        raise ConfigError(f"{where}: VM id '{id_}' must be 1-32 letters, digits, '-' or '_'")
    if monitor not in MONITORS:
        raise ConfigError(f"{where}: unknown monitor '{monitor}' (choose from {', '.join(MONITORS)})")
    if guest not in DESIGNS and not Path(guest).is_file():
        raise ConfigError(f"{where}: guest '{guest}' is neither {' nor '.join(DESIGNS)} nor a file")
    if not services:
        raise ConfigError(f"{where}: the VM serves nothing")
    return VMSpec(id_, services, guest, monitor, profile or "classic", mem, shard)


def parse_vm_args(items: list[str]) -> list[VMSpec]:
    """VMs from ``SERVICE=GUEST[:MONITOR[:PROFILE]]`` arguments, named after their services."""
    vms, counts = [], {}
    for item in items:
        left, eq, right = item.partition("=")
        if not eq or not right:
            raise ConfigError(f"'{item}': expected SERVICE=GUEST[:MONITOR[:PROFILE]], e.g. kv.1=iterative:pv")
        services, shard = parse_services(left, f"'{item}'")
        guest, monitor, profile = ([*right.split(":"), "", ""])[:3]
        label = f"kv{shard}" if services == ("kv",) else left.strip().split("+")[0]
        counts[label] = counts.get(label, 0) + 1
        vms.append(_vm(f"'{item}'", f"{label}-{counts[label]}", services, shard, guest, monitor or "trap", profile,
                       DEFAULT_MEM))  # fmt: skip
    return vms


_TOP = {"host", "port", "policy", "admin_token", "core", "request_timeout", "body_timeout", "idle_timeout",
        "boot_steps", "slice_steps", "vm"}  # fmt: skip
_VM_KEYS = {"id", "service", "services", "guest", "monitor", "profile", "mem", "shard"}


def load_toml(path: str) -> ServeConfig:
    """Read a configuration file (docs/serve.md, "Configuration")."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise ConfigError(f"{path}: unknown setting '{unknown[0]}' (known: {', '.join(sorted(_TOP))})")
    config = ServeConfig()
    number = (int, float)
    types = {"host": str, "port": int, "policy": str, "admin_token": str, "core": str, "request_timeout": number,
             "body_timeout": number, "idle_timeout": number, "boot_steps": int, "slice_steps": int}  # fmt: skip
    for key, kind in types.items():
        if key in data:
            if not isinstance(data[key], kind) or isinstance(data[key], bool):
                raise ConfigError(f"{path}: '{key}' has the wrong type")
            setattr(config, key, data[key])
    tables = data.get("vm", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{path}: 'vm' must be an array of tables ([[vm]])")
    for n, t in enumerate(tables, 1):
        where = f"{path}: [[vm]] #{n}"
        if not isinstance(t, dict):
            raise ConfigError(f"{where}: not a table")
        bad = sorted(set(t) - _VM_KEYS)
        if bad:
            raise ConfigError(f"{where}: unknown key '{bad[0]}' (known: {', '.join(sorted(_VM_KEYS))})")
        svc = t.get("services", t.get("service"))
        if isinstance(svc, list) and all(isinstance(s, str) for s in svc):
            svc = "+".join(svc)
        if not isinstance(svc, str):
            raise ConfigError(f"{where}: 'service' (a name) or 'services' (a list of names) is required")
        services, shard = parse_services(svc, where)
        if "shard" in t:
            if not isinstance(t["shard"], int) or t["shard"] < 0:
                raise ConfigError(f"{where}: 'shard' must be a non-negative integer")
            shard = t["shard"]
        try:
            mem = parse_size(str(t.get("mem", DEFAULT_MEM)))
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        values = {k: t.get(k, d) for k, d in (("guest", "concurrent"), ("monitor", "trap"), ("profile", "classic"))}
        if not all(isinstance(v, str) for v in values.values()) or not isinstance(t.get("id", ""), str):
            raise ConfigError(f"{where}: 'id', 'guest', 'monitor' and 'profile' are strings")
        guest = values["guest"]
        if guest not in DESIGNS and not Path(guest).is_absolute():
            guest = str(Path(path).resolve().parent / guest)  # a guest file is found beside the config
        id_ = t.get("id") or f"vm-{n}"
        config.vms.append(_vm(where, id_, services, shard, guest, values["monitor"], values["profile"], mem))
    return config


def build_config(
    config_file: str | None = None,
    vm_args: list[str] | None = None,
    **overrides: object,
) -> ServeConfig:
    """The configuration from a file and/or arguments; ``overrides`` (not None) win; no VMs: the default cluster."""
    config = load_toml(config_file) if config_file else ServeConfig()
    if vm_args:
        config.vms = parse_vm_args(vm_args)
    if not config.vms:
        config.vms = default_cluster()
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    return config.check()
