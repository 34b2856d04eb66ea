"""Typed reads from one config dict, falling back to the config class's defaults; errors name the file."""

from __future__ import annotations

from refplan.errors import PlanError


class Reader:
    """Reads typed values from one config dict, falling back to class defaults; errors name ``where``."""

    def __init__(self, config: dict, defaults: dict, where: str, aliases: dict | None = None):
        self.config = config
        self.defaults = defaults
        self.where = where
        self.aliases = aliases or {}

    def has(self, key: str) -> bool:
        return any(k in self.config for k in (key, *self.aliases.get(key, ())))

    def get(self, key: str, default=None):
        """The value for ``key`` (config, then class default), or ``default`` when neither has it."""
        return self.raw(key) if self.has(key) or key in self.defaults else default

    def raw(self, key: str):
        for k in (key, *self.aliases.get(key, ())):
            if k in self.config:
                return self.config[k]
        if key in self.defaults:
            return self.defaults[key]
        raise PlanError(self.where, f"missing key '{key}'")

    def int(self, key: str, *, minimum: int = 1) -> int:
        value = self.raw(key)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise PlanError(self.where, f"key '{key}' must be {need} (got {value!r})")
        return value

    def opt_int(self, key: str, *, minimum: int = 1) -> int | None:
        return None if self.raw(key) is None else self.int(key, minimum=minimum)

    def bool(self, key: str) -> bool:
        value = self.raw(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise PlanError(self.where, f"key '{key}' must be true or false (got {value!r})")
        return value

    def str(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str):
            raise PlanError(self.where, f"key '{key}' must be a string (got {value!r})")
        return value

    def opt_float(self, key: str) -> float | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise PlanError(self.where, f"key '{key}' must be a number (got {value!r})")
        return float(value)

    def int_list(self, key: str) -> list[int]:
        value = self.raw(key) or []
        if not isinstance(value, list) or not all(isinstance(i, int) for i in value):
            raise PlanError(self.where, f"key '{key}' must be a list of layer indices (got {value!r})")
        return value
