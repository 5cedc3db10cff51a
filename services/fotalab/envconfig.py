"""The one way a service reads its environment: each config dataclass's `from_env` asks an `Env`.

An `Env` validates every value as it reads it, so a bad setting stops the service before it
does anything, with a message that names the variable, the value given and what is allowed.
Secrets come from NAME itself or from the file NAME_FILE names (a mounted credential, the
convention Docker secrets use). Renamed variables keep working under their old name, with a
deprecation note on stderr.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable and what it accepts."""


class Env:
    """Typed, validated reads of one environment (`os.environ` unless a mapping is given)."""

    def __init__(self, env: Mapping[str, str] | None = None, *, renamed: Mapping[str, str] | None = None) -> None:
        """`renamed` maps a current name to the old name it replaces; the old one is still read."""
        self._env = os.environ if env is None else env
        self._renamed = dict(renamed or {})

    def renaming(self, renamed: Mapping[str, str]) -> Env:
        """The same environment, also reading the old names of renamed variables (current -> old)."""
        return Env(self._env, renamed={**self._renamed, **renamed})

    def raw(self, name: str) -> str | None:
        if name in self._env:
            return self._env[name]
        old = self._renamed.get(name)
        if old is not None and old in self._env:
            print(f"note: {old} is deprecated; set {name} instead", file=sys.stderr)
            return self._env[old]
        return None

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value

    def path(self, name: str, default: Path | str) -> Path:
        return Path(self.text(name, str(default)))

    def optional_path(self, name: str) -> Path | None:
        value = self.raw(name)
        return Path(value) if value else None

    def integer(self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self.raw(name)
        if value is None or value == "":
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not a whole number; {self._range(minimum, maximum)}") from None
        return self._bounded(name, number, minimum, maximum)

    def number(self, name: str, default: float, *, minimum: float | None = None,
               maximum: float | None = None) -> float:
        value = self.raw(name)
        if value is None or value == "":
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not a number; {self._range(minimum, maximum)}") from None
        return self._bounded(name, number, minimum, maximum)

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.strip().lower() in TRUE:
            return True
        if value.strip().lower() in FALSE:
            return False
        raise ConfigError(f"{name}={value!r} is not a yes/no setting; use 1 or 0 (true/false, yes/no, on/off)")

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is not allowed; use one of {', '.join(allowed)}")
        return value

    def secret(self, name: str) -> str:
        """NAME if set and not empty, else the stripped content of NAME_FILE, else ""."""
        if value := self.raw(name):
            return value
        path = self.raw(f"{name}_FILE")
        if not path:
            return ""
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path}: cannot read it ({exc.strerror}); "
                              f"mount the file or set {name} instead") from None

    def parsed(self, name: str, parse, what: str):
        """NAME run through `parse` (None when unset or empty); its ValueError becomes a ConfigError."""
        value = self.raw(name)
        if not value:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            raise ConfigError(f"{name}={value!r} is not {what} ({exc})") from None

    @staticmethod
    def _range(minimum: float | None, maximum: float | None) -> str:
        if minimum is not None and maximum is not None:
            return f"use a value from {minimum:g} to {maximum:g}"
        if minimum is not None:
            return f"use a value of at least {minimum:g}"
        if maximum is not None:
            return f"use a value of at most {maximum:g}"
        return "use a number"

    def _bounded(self, name: str, number, minimum, maximum):
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            raise ConfigError(f"{name}={number!r} is out of range; {self._range(minimum, maximum)}")
        return number
