"""Reading a user's config file: YAML or JSON into a dict, with the line of every top-level key
(provenance names ``file:line key``), and the one error a malformed file gives (file and line)."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path

from refplan.errors import PlanError


class Origin(str, enum.Enum):
    """Where a resolved setting came from."""

    FILE = "file"  # a key of the user's file
    FLAG = "flag"  # a refplan command-line flag (wins over the file)
    FRAMEWORK = "framework default"  # the framework's own default for a key the file leaves out
    DERIVED = "derived"  # computed from other settings as the framework computes it
    REFPLAN = "refplan default"  # nothing said it; refplan's default


@dataclass(frozen=True)
class Source:
    origin: Origin
    detail: str  # e.g. "dpo.yaml:12 per_device_train_batch_size", "TRL 1.16 DPOConfig.max_length = 1024"

    def record(self) -> dict:
        return {"origin": self.origin.value, "detail": self.detail}

    def __str__(self) -> str:
        if self.origin in (Origin.FILE, Origin.FLAG) or self.detail == self.origin.value:
            return self.detail
        return f"{self.origin.value}: {self.detail}"


@dataclass(frozen=True)
class ConfigFile:
    """One parsed file: its top-level mapping and the line each top-level key starts on."""

    path: Path
    data: dict
    lines: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    def where(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.name}:{line} {key}" if line else f"{self.name} {key}"

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def source(self, key: str) -> Source:
        return Source(Origin.FILE, self.where(key))

    def error(self, key: str, message: str) -> PlanError:
        line = self.lines.get(key)
        return PlanError(f"{self.path}:{line}" if line else str(self.path), f"{key}: {message}")

    def resolve_path(self, value: str) -> Path:
        """A path the file names, relative to the file's folder when not found as given."""
        p = Path(value).expanduser()
        if p.is_absolute() or p.exists():
            return p
        return self.path.parent / p


def read_file(path: str | Path, what: str = "config") -> ConfigFile:
    """Parse ``path`` (YAML, or JSON -- which YAML also reads) into a :class:`ConfigFile`."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(str(p), f"no such {what} file") from None
    except IsADirectoryError:
        raise PlanError(str(p), f"is a directory, not a {what} file") from None
    except OSError as err:
        raise PlanError(str(p), f"cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise PlanError(str(p), "not UTF-8 text") from None
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PlanError(f"{p}:{err.lineno}", f"not valid JSON (column {err.colno}: {err.msg})") from None
        return ConfigFile(p, _mapping(data, p), {})
    return _read_yaml(p, text)


def _read_yaml(p: Path, text: str) -> ConfigFile:
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise PlanError(where, f"not valid YAML ({problem})") from None
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                lines[key_node.value] = key_node.start_mark.line + 1
    return ConfigFile(p, _mapping(data, p), lines)


def _mapping(data, p: Path) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PlanError(str(p), f"expected a mapping of settings at the top level, got {type(data).__name__}")
    return data
