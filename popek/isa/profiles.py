"""ISA profiles (ISA §5): what each system instruction does in user mode — trap, execute or ignore."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from popek.isa.files import InputError, read_input
from popek.isa.spec import BEHAVIOUR_NAMES, BEHAVIOURS, CR_NAMES, EXECUTE, IGNORE, PROFILE_INDEX, PROFILE_KEYS, TRAP


class ProfileError(ValueError):
    """A profile name, file, key or behaviour that does not exist."""


@dataclass(frozen=True)
class Profile:
    """A named mapping from every profile key to a behaviour code."""

    name: str
    behaviour: dict[str, int] = field(hash=False)

    def array(self) -> np.ndarray:
        """The behaviour codes in ``PROFILE_KEYS`` order, as the cores read them from the state."""
        return np.array([self.behaviour[k] for k in PROFILE_KEYS], dtype=np.int64)

    def describe(self, key: str) -> str:
        """The behaviour of one key as a word: trap, execute or ignore."""
        return BEHAVIOUR_NAMES[self.behaviour[key]]


def _classic() -> Profile:
    return Profile("classic", {k: TRAP for k in PROFILE_KEYS})


def _x86like() -> Profile:
    b = {k: TRAP for k in PROFILE_KEYS}
    b.update(getpsw=EXECUTE, setpsw=IGNORE, getbase=EXECUTE)
    return Profile("x86like", b)


BUILTIN = {"classic": _classic, "x86like": _x86like}
MAX_EXTENDS = 64  # profiles in one extends chain: a deeper one is a mistake, not a design


def apply_overrides(base: Profile, name: str, overrides: dict[str, str], where: str = "") -> Profile:
    """A new profile: ``base`` with user-mode behaviours replaced (bare ``mfcr``/``mtcr`` set every CR)."""
    b = dict(base.behaviour)
    prefix = f"{where}: " if where else ""
    # Bare mfcr/mtcr first, so that a per-CR key overrides the default whatever the order in the file.
    for key in sorted(overrides, key=lambda k: "." in k):
        value = overrides[key]
        if not isinstance(value, str) or value not in BEHAVIOURS:
            raise ProfileError(f"{prefix}key '{key}': unknown behaviour {value!r} (expected trap, execute or ignore)")
        if key in ("mfcr", "mtcr"):
            for cr in CR_NAMES:
                b[f"{key}.{cr}"] = BEHAVIOURS[value]
        elif key in PROFILE_INDEX:
            b[key] = BEHAVIOURS[value]
        else:
            raise ProfileError(f"{prefix}unknown key '{key}' (expected one of: {', '.join(PROFILE_KEYS)}, mfcr, mtcr)")
    return Profile(name, b)


def load_profile(spec: str | Profile | None = None, _seen: tuple[str, ...] = ()) -> Profile:
    """Resolve a profile given as a built-in name, a path to a TOML file, or a Profile (None = classic)."""
    if spec is None:
        return _classic()
    if isinstance(spec, Profile):
        return spec
    if spec in BUILTIN:
        return BUILTIN[spec]()
    path = Path(spec)
    if not (spec.endswith(".toml") or path.is_file()):
        raise ProfileError(f"unknown profile '{spec}' (built-in profiles: {', '.join(BUILTIN)}; or a .toml file)")
    if str(path.resolve()) in _seen:
        raise ProfileError(f"{spec}: profile extends itself")
    if len(_seen) >= MAX_EXTENDS:
        raise ProfileError(f"{spec}: 'extends' chain deeper than {MAX_EXTENDS} profiles")
    try:
        data = tomllib.loads(read_input(path).decode("utf-8"))
    except InputError as e:
        raise ProfileError(f"{spec}: cannot read profile: {e.reason}") from None
    except UnicodeError:
        raise ProfileError(f"{spec}: cannot read profile: not UTF-8 text") from None
    except OSError as e:
        raise ProfileError(f"{spec}: cannot read profile: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{spec}: invalid TOML: {e}") from None
    unknown = set(data) - {"name", "extends", "user"}
    if unknown:
        raise ProfileError(f"{spec}: unknown top-level key(s): {', '.join(sorted(unknown))}")
    parent = data.get("extends", "classic")
    if not isinstance(parent, str):
        raise ProfileError(f"{spec}: 'extends' must be a profile name or file")
    if parent not in BUILTIN and not Path(parent).is_absolute():
        candidate = path.parent / parent
        if candidate.is_file():
            parent = str(candidate)
    base = load_profile(parent, _seen + (str(path.resolve()),))
    user = data.get("user", {})
    if not isinstance(user, dict):
        raise ProfileError(f"{spec}: [user] must be a table")
    name = data.get("name", path.stem)
    return apply_overrides(base, str(name), user, where=spec)
