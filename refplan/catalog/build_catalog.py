"""Regenerate ``refplan/catalog/models.json`` from the model-facts file.

    python -m refplan.catalog.build_catalog /work/shared/reference/model-facts.json

Each facts record normalizes one ``config.json`` into fixed fields plus ``other_config_fields``
and lists the keys the original file lacks (``absent_from_config``). This script turns a record
back into a config dict as transformers would read it: a field that is null or listed as absent
stays absent, so the config-class default applies exactly as it would for the real file. A null in
``other_config_fields`` is kept only for keys whose null is meaningful (``_NULLABLE``) and that the
notes do not call unknown.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: normalized fields of a facts record that are config.json keys of the same name
_CONFIG_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
    "tie_word_embeddings", "torch_dtype", "hidden_act", "attention_bias", "mlp_bias",
)

#: facts fields a family's config.json spells differently (the native key is in other_config_fields)
_NATIVE_NAMES = {
    "gpt2": {"hidden_act": "activation_function"},
}

#: bookkeeping inside other_config_fields or moe that is not a config key
_NOT_CONFIG = {"class_defaults_used", "note"}

#: other_config_fields whose null is a real config.json value (transformers reads null as "off");
#: any other null in the facts means "not known" and is left out so the class default applies
_NULLABLE = {"rope_scaling", "sliding_window", "q_lora_rank"}

#: keys of the gemma3 multimodal wrapper's text decoder (everything else is top level)
_GEMMA3_TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers")


def _absent(record: dict) -> set[str]:
    """Key names listed as absent; entries read like "hidden_size (named n_embd)"."""
    return {entry.split(" ", 1)[0] for entry in record.get("absent_from_config", [])}


def _unknown_nulls(record: dict) -> set[str]:
    """other_config_fields the facts left null because sources disagreed (named in the notes)."""
    notes = record.get("notes", "")
    if "left null" not in notes:
        return set()
    return {k for k, v in record.get("other_config_fields", {}).items() if v is None and k in notes}


def config_from_facts(record: dict) -> dict:
    """The config.json-like dict for one facts record."""
    family = record["model_type"]
    absent = _absent(record)
    renamed = _NATIVE_NAMES.get(family, {})
    other = {
        k: v for k, v in record.get("other_config_fields", {}).items()
        if k not in _NOT_CONFIG and not (v is None and (k not in _NULLABLE or k in _unknown_nulls(record)))
    }
    config: dict = {"architectures": [record["architecture"]], "model_type": family}

    if family == "gemma3":
        text = {"model_type": "gemma3_text"}
        text.update({k: record[k] for k in _GEMMA3_TEXT_FIELDS})
        text.update(other.pop("text_config", {}))
        config["text_config"] = text
        if record.get("torch_dtype") is not None:
            config["torch_dtype"] = record["torch_dtype"]
        config.update(other)
        return config

    for key in _CONFIG_FIELDS:
        value = record.get(key)
        if value is None or key in absent or key in renamed:
            continue
        config[key] = value
    for key, value in (record.get("moe") or {}).items():
        if key not in _NOT_CONFIG and value is not None:
            config[key] = value
    config.update(other)
    return config


def build(facts: list[dict]) -> list[dict]:
    return [
        {
            "model_id": r["model_id"],
            "config": config_from_facts(r),
            "source": r["source"],
            "source_kind": r["source_kind"],
            "verification": r["verification"],
            "notes": r.get("notes", ""),
        }
        for r in facts
    ]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m refplan.catalog.build_catalog MODEL_FACTS_JSON", file=sys.stderr)
        return 2
    facts = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    out = Path(__file__).with_name("models.json")
    built = build(facts)
    # entries added to models.json directly (each with its own cited source) are kept, after the
    # facts' own, in the order they stand
    ids = {e["model_id"] for e in built}
    kept = [e for e in json.loads(out.read_text(encoding="utf-8")) if e["model_id"] not in ids] if out.exists() else []
    out.write_text(json.dumps(built + kept, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(built)} models from the facts and kept {len(kept)} added directly, to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
