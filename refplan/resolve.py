"""Turn a ``--model`` argument into a :class:`ModelSpec`: local file, HF cache, catalog, then the Hub.

Pure standard library. Lookup order for ``name``:

1. a directory holding ``config.json``, or a path to a JSON config file;
2. a Hub id (``org/name`` or a bare legacy id such as ``gpt2``), tried in turn against
   a. the local Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
      ``~/.cache/huggingface/hub``): ``models--org--name/refs/main`` names the snapshot, else the
      newest snapshot holding a ``config.json``;
   b. the bundled catalog (``refplan/catalog/models.json``), case-insensitive, also by bare name
      (``Llama-3.1-8B``); it comes before the network so the usual run is instant and offline;
   c. the Hub itself, ``config.json`` only, over ``urllib`` with a short timeout and ``HF_TOKEN``
      if set -- skipped when ``offline`` is true, or, with ``offline=None``, when
      ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set or ``CI`` is.

``ModelSpec.source`` records which one answered: the path, ``hf-cache:<path>``, ``catalog: <provenance>``
or ``hub:<url>``.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import os
import re
from pathlib import Path

from refplan.errors import PlanError
from refplan.families import spec_from_config
from refplan.model import ModelSpec

CATALOG_PATH = Path(__file__).with_name("catalog") / "models.json"
HUB_URL = "https://huggingface.co/{model_id}/resolve/main/config.json"
HUB_TIMEOUT_S = 5.0
FLAG = "--model"

_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_TRUE = {"1", "true", "yes", "on"}


# -- catalog ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _catalog() -> tuple[dict, ...]:
    entries = _read_json(CATALOG_PATH)
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "model_id" in e for e in entries):
        raise PlanError(str(CATALOG_PATH), "expected a list of entries with a 'model_id'")
    return tuple(entries)


def catalog_entries() -> list[dict]:
    """The bundled catalog: one dict per model (model_id, config, source, source_kind, verification, notes)."""
    return copy.deepcopy(list(_catalog()))


def _catalog_lookup(name: str) -> dict | None:
    key = name.lower()
    entries = _catalog()
    for entry in entries:
        if entry["model_id"].lower() == key:
            return entry
    if "/" not in key:
        bare = [e for e in entries if e["model_id"].rsplit("/", 1)[-1].lower() == key]
        if len(bare) == 1:
            return bare[0]
        if len(bare) > 1:
            ids = ", ".join(e["model_id"] for e in bare)
            raise PlanError(FLAG, f"'{name}' matches several catalog models: {ids}; give the full id")
    return None


def _closest(name: str, n: int = 3) -> list[str]:
    ids = [e["model_id"] for e in _catalog()]
    by_key = {}
    for model_id in ids:
        by_key.setdefault(model_id.lower(), model_id)
        by_key.setdefault(model_id.rsplit("/", 1)[-1].lower(), model_id)
    out: list[str] = []
    for key in difflib.get_close_matches(name.lower(), list(by_key), n=2 * n, cutoff=0.0):
        if by_key[key] not in out:
            out.append(by_key[key])
    return out[:n]


def _unknown(name: str, why: str = "") -> PlanError:
    return PlanError(FLAG, f"unknown model '{name}'{why}; closest catalog names: {', '.join(_closest(name))}")


# -- files -----------------------------------------------------------------------------------------


def _read_json(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PlanError(str(path), f"cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise PlanError(str(path), "not UTF-8 text") from None
    return _parse_json(text, str(path))


def _parse_json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise PlanError(where, f"not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None


def _load_config(path: Path) -> dict:
    config = _read_json(path)
    if not isinstance(config, dict):
        raise PlanError(str(path), f"expected a JSON object, got {type(config).__name__}")
    return config


def _local_path(name: str) -> Path | None:
    """The config file ``name`` points at on disk, or None when ``name`` is not a path."""
    path = Path(name).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise PlanError(str(path), "directory has no config.json")
        return config
    if path.is_file():
        return path
    looks_like_path = name.startswith((".", "/", "~")) or name.endswith(".json") or (os.sep != "/" and os.sep in name)
    if looks_like_path:
        raise PlanError(FLAG, f"no such file or directory: '{name}'")
    return None


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _cached_config(model_id: str) -> Path | None:
    repo = hf_cache_dir() / ("models--" + model_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        try:
            rev = ref.read_text(encoding="utf-8").strip()
        except OSError:
            rev = ""
        candidate = snapshots / rev / "config.json"
        if rev and candidate.is_file():
            return candidate
    found = [p for p in snapshots.glob("*/config.json") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


# -- network ---------------------------------------------------------------------------------------


def _offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    env = os.environ
    if any(env.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    ci = env.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no", "off")


def _download_config(model_id: str) -> tuple[dict, str] | None:
    """config.json from the Hub; None when the repo does not exist (HTTP 404)."""
    import urllib.error
    import urllib.request

    url = HUB_URL.format(model_id=model_id)
    headers = {"User-Agent": "refplan"}
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=HUB_TIMEOUT_S) as resp:
            body = resp.read()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        if err.code in (401, 403):
            hint = "set HF_TOKEN to a token with access" if not token else "the HF_TOKEN given has no access"
            raise PlanError(FLAG, f"'{model_id}' is gated or private on the Hub ({err.code}); {hint}, "
                                  "or pass a local config.json") from None
        raise PlanError(FLAG, f"the Hub answered HTTP {err.code} for '{model_id}'; pass a local config.json") from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise PlanError(FLAG, f"could not reach the Hub for '{model_id}' ({reason}); pass a local config.json, "
                              f"or pick a catalog model: {', '.join(_closest(model_id))}") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PlanError(url, "not UTF-8 text") from None
    config = _parse_json(text, url)
    if not isinstance(config, dict):
        raise PlanError(url, f"expected a JSON object, got {type(config).__name__}")
    return config, url


# -- entry point -----------------------------------------------------------------------------------


def resolve_model(name: str, *, offline: bool | None = None) -> ModelSpec:
    """The :class:`ModelSpec` for a ``--model`` value (see the module docstring for the lookup order)."""
    if not isinstance(name, str) or not name.strip():
        raise PlanError(FLAG, "empty model name")
    name = name.strip()

    path = _local_path(name)
    if path is not None:
        return spec_from_config(_load_config(path), str(path.parent if path.name == "config.json" else path), str(path))

    if not _HUB_ID.match(name):
        raise _unknown(name)

    cached = _cached_config(name)
    if cached is not None:
        return spec_from_config(_load_config(cached), name, f"hf-cache:{cached}")

    entry = _catalog_lookup(name)
    if entry is not None:
        return spec_from_config(copy.deepcopy(entry["config"]), entry["model_id"], f"catalog: {entry['source']}")

    if _offline(offline):
        raise _unknown(name, " (not in the HF cache or the catalog; offline, so the Hub was not asked -- "
                             "download its config.json and pass --model path/to/config.json)")
    downloaded = _download_config(name)
    if downloaded is None:
        raise _unknown(name, " (not on the Hub either)")
    config, url = downloaded
    return spec_from_config(config, name, f"hub:{url}")
