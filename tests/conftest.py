"""Shared test settings: a small hypothesis profile for CI, a larger one on demand.

Choose with HYPOTHESIS_PROFILE=ci (default) or HYPOTHESIS_PROFILE=thorough.

- ``ci``: 40 examples per test, derandomized, so that every run (and every CI job) tests the same cases and a
  failure is reproducible from the commit alone.
- ``thorough``: 1000 examples per test from a fresh random seed each run, so repeated runs explore new cases;
  failures are saved in ``.hypothesis/`` and replayed first by the next run, and each prints a
  ``@reproduce_failure`` blob.

Both profiles start from Hypothesis's own ``default`` profile, not from whatever is active at import: when a
``CI`` environment variable is set Hypothesis activates its built-in ``ci`` profile, which derandomizes and
would otherwise leak into ``thorough``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_BASE = settings.get_profile("default")
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("ci", _BASE, max_examples=40, derandomize=True, database=None, **_COMMON)
settings.register_profile("thorough", _BASE, max_examples=1000, derandomize=False, print_blob=True, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
