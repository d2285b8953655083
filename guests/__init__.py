"""The bundled P32 software (programs, the guest kernel, demos), installed as ``popek.guests``."""

from pathlib import Path

DIR = Path(__file__).resolve().parent


def path(rel: str) -> Path:
    """The path of a bundled guest file, e.g. ``path("programs/primes.s")``."""
    return DIR / rel
