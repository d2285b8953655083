"""Fuzzing: random images on every core and under every monitor, on both profiles, never raise on the host.

CI runs 2,000 programs; ``POPEK_FUZZ=100000 python -m pytest tests/test_fuzz.py`` runs as many as asked
(docs/reliability.md has the figures of the last long run).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popek.cores import CoreUnavailable, get_core
from popek.vmm.host import GuestSpec, Host
from popek.vmm.monitors import MONITORS
from tests.strategies import translating_after

EXAMPLES = int(os.environ.get("POPEK_FUZZ", "2000"))
EXITS = {"halt", "limit", "idle", "trap-loop", "error"}


def _available(core: str) -> bool:
    try:
        get_core(core)
    except CoreUnavailable:
        return False
    return True


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=EXAMPLES <= 2000)
@given(
    image=st.binary(max_size=1024),
    monitor=st.sampled_from(sorted(MONITORS)),
    profile=st.sampled_from(["classic", "x86like"]),
    core=st.sampled_from(["jit", "c"]),
    memsize=st.sampled_from([4096, 16384]),
)
def test_random_images_never_raise_on_the_host(
    image: bytes, monitor: str, profile: str, core: str, memsize: int
) -> None:
    if not _available(core):
        core = "jit"
    _fuzz(image, monitor, profile, core, memsize)


# The translating core takes the monitors' Python exit path, ~100x slower on exit-bound random code: fewer images.
@settings(max_examples=max(50, EXAMPLES // 10), deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=EXAMPLES <= 2000)  # fmt: skip
@given(
    image=st.binary(max_size=1024),
    monitor=st.sampled_from(sorted(MONITORS)),
    profile=st.sampled_from(["classic", "x86like"]),
    memsize=st.sampled_from([4096, 16384]),
)
def test_random_images_never_raise_on_the_translating_core(
    image: bytes, monitor: str, profile: str, memsize: int
) -> None:
    with translating_after(64):  # a few steps, so random code reaches translated regions
        _fuzz(image, monitor, profile, "dbt", memsize)


def _fuzz(image: bytes, monitor: str, profile: str, core: str, memsize: int) -> None:
    """Run a random image and check the host's result is one of the documented exits."""
    host = Host([GuestSpec("fuzz", image, monitor, profile, memsize)], core)
    result = host.run(max_steps=3000)[0]
    assert result.exit in EXITS and 0 <= result.steps and len(result.regs) == 16
    if result.exit == "error":  # a monitor may refuse what it cannot do, never fail without saying why
        assert result.message
