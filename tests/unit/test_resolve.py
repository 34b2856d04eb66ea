"""refplan.resolve: local files, the HF cache layout, the catalog, and the (faked) Hub. No network."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import pytest

from refplan.errors import PlanError
from refplan.resolve import catalog_entries, resolve_model

TINY = dict(model_type="llama", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, vocab_size=100, num_hidden_layers=2)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """An empty HF cache, no offline/CI switches, and a network that fails the test if touched."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    for key in ("HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CI", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(key, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def _fake_cache(root, model_id, config, rev="0123abcd", with_ref=True):
    repo = root / ("models--" + model_id.replace("/", "--"))
    cfg = _write(repo / "snapshots" / rev / "config.json", config)
    if with_ref:
        _write(repo / "refs" / "main", rev)
    return cfg


def test_local_directory(tmp_path):
    _write(tmp_path / "m" / "config.json", TINY)
    spec = resolve_model(str(tmp_path / "m"))
    assert spec.family == "llama" and spec.hidden_size == 64
    assert spec.source == str(tmp_path / "m" / "config.json")


def test_config_json_path(tmp_path):
    path = _write(tmp_path / "custom.json", TINY)
    spec = resolve_model(str(path))
    assert spec.source == str(path) and spec.num_layers == 2


def test_directory_without_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlanError, match="no config.json") as err:
        resolve_model(str(tmp_path / "empty"))
    assert err.value.where == str(tmp_path / "empty")


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(PlanError, match="no such file") as err:
        resolve_model(str(tmp_path / "nope" / "config.json"))
    assert err.value.where == "--model"


def test_malformed_json_names_the_file(tmp_path):
    path = _write(tmp_path / "bad" / "config.json", '{"model_type": "llama",')
    with pytest.raises(PlanError, match="not valid JSON") as err:
        resolve_model(str(path.parent))
    assert err.value.where == str(path)


def test_json_that_is_not_an_object_names_the_file(tmp_path):
    path = _write(tmp_path / "list.json", [1, 2])
    with pytest.raises(PlanError, match="expected a JSON object") as err:
        resolve_model(str(path))
    assert err.value.where == str(path)


def test_hf_cache_refs_main(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    _fake_cache(hub, "acme/tiny", TINY, rev="old")
    cfg = _fake_cache(hub, "acme/tiny", {**TINY, "num_hidden_layers": 3}, rev="new")
    spec = resolve_model("acme/tiny", offline=True)
    assert spec.source == f"hf-cache:{cfg}"
    assert spec.num_layers == 3 and spec.model_id == "acme/tiny"


def test_hf_cache_without_refs_uses_any_snapshot(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    cfg = _fake_cache(tmp_path / "hfhome" / "hub", "acme/tiny", TINY, with_ref=False)
    assert resolve_model("acme/tiny", offline=True).source == f"hf-cache:{cfg}"


def test_hf_cache_comes_before_the_catalog(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    _fake_cache(hub, "gpt2", {**TINY})
    spec = resolve_model("gpt2")
    assert spec.source.startswith("hf-cache:") and spec.family == "llama"


@pytest.mark.parametrize("name", ["meta-llama/Llama-3.1-8B", "META-LLAMA/llama-3.1-8b", "Llama-3.1-8B", "llama-3.1-8b"])
def test_catalog_by_id_and_bare_name(name):
    spec = resolve_model(name)
    assert spec.model_id == "meta-llama/Llama-3.1-8B"
    assert spec.source.startswith("catalog: ")
    assert spec.params == 8030261248


def test_unknown_model_suggests_catalog_names():
    with pytest.raises(PlanError, match=r"unknown model 'Llama-3.1-9B'.*closest catalog names: ") as err:
        resolve_model("Llama-3.1-9B", offline=True)
    assert err.value.where == "--model"
    suggestions = err.value.message.split("closest catalog names: ")[1].split(", ")
    assert len(suggestions) == 3 and "meta-llama/Llama-3.1-8B" in suggestions


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"TRANSFORMERS_OFFLINE": "1"}, {"CI": "true"}])
def test_offline_switches_never_touch_the_network(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(PlanError, match="offline, so the Hub was not asked"):
        resolve_model("acme/not-cached")


def test_explicit_offline_never_touches_the_network():
    with pytest.raises(PlanError, match="unknown model 'acme/not-cached'"):
        resolve_model("acme/not-cached", offline=True)


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_online_download_sends_token_and_records_the_url(monkeypatch):
    seen = {}

    def fake_urlopen(request, timeout):
        seen["url"], seen["auth"], seen["timeout"] = request.full_url, request.get_header("Authorization"), timeout
        return _Response(json.dumps(TINY).encode())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    spec = resolve_model("acme/online-only", offline=False)
    assert seen["url"] == "https://huggingface.co/acme/online-only/resolve/main/config.json"
    assert seen["auth"] == "Bearer hf_secret" and seen["timeout"] <= 10
    assert spec.source == f"hub:{seen['url']}"


def test_online_404_is_an_unknown_model(monkeypatch):
    def not_found(request, timeout):
        raise urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)

    monkeypatch.setattr(urllib.request, "urlopen", not_found)
    with pytest.raises(PlanError, match="unknown model 'acme/missing'.*closest catalog names"):
        resolve_model("acme/missing", offline=False)


def test_online_gated_and_unreachable(monkeypatch):
    def gated(request, timeout):
        raise urllib.error.HTTPError(request.full_url, 401, "Unauthorized", {}, None)

    monkeypatch.setattr(urllib.request, "urlopen", gated)
    with pytest.raises(PlanError, match="gated or private.*HF_TOKEN"):
        resolve_model("acme/gated", offline=False)

    def down(request, timeout):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", down)
    with pytest.raises(PlanError, match="could not reach the Hub"):
        resolve_model("acme/anything", offline=False)


def test_online_malformed_json_names_the_url(monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout: _Response(b"<html>"))
    with pytest.raises(PlanError, match="not valid JSON") as err:
        resolve_model("acme/html", offline=False)
    assert err.value.where.startswith("https://huggingface.co/acme/html/")


def test_catalog_entries_are_copies():
    entries = catalog_entries()
    assert len(entries) == 65
    assert {"model_id", "config", "source", "source_kind", "verification", "notes"} <= set(entries[0])
    entries[0]["config"]["hidden_size"] = 1
    assert catalog_entries()[0]["config"]["hidden_size"] != 1


def test_empty_name_is_refused():
    with pytest.raises(PlanError, match="empty model name"):
        resolve_model("  ")
