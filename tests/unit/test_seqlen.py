"""The dataset-aware padded length (refplan.seqlen) against TRL 1.16's own tokenization and collators.

Each case runs TRL's code on the same rows -- ``DPOTrainer._prepare_dataset`` and
``DataCollatorForPreference``, ``KTOTrainer._prepare_dataset`` and ``DataCollatorForUnpairedPreference``,
``ORPOTrainer.tokenize_row`` -- and checks refplan's replay gives the same padded width, on a tokenizer
that adds no special tokens, one whose ``tokenizer.json`` adds BOS, and one with a chat template.
"""

from __future__ import annotations

import json
import os
import random
import types

import pytest

from refplan.errors import PlanError
from refplan.methods import Method
from refplan.seqlen import Padding, Tokenizer, derive, round_up

pytest.importorskip("trl")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant:{% endif %}")


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory):
    from refplan.harness.tiny import build_tokenizer

    root = tmp_path_factory.mktemp("toks")
    base = build_tokenizer(512, out_dir=root / "plain")
    dirs = {"plain": root / "plain"}
    for name in ("bos", "chat"):
        d = dirs[name] = root / name
        base.save_pretrained(str(d))
    cfg = json.loads((dirs["chat"] / "tokenizer_config.json").read_text())
    (dirs["chat"] / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": TEMPLATE}))
    tj = json.loads((dirs["bos"] / "tokenizer.json").read_text())
    bos = next(t["id"] for t in tj["added_tokens"] if t["content"] == "<s>")
    tj["post_processor"] = {"type": "TemplateProcessing",  # what a Llama-style tokenizer.json carries
                            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                       {"Sequence": {"id": "A", "type_id": 0}}],
                            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                     {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                            "special_tokens": {"<s>": {"id": "<s>", "ids": [bos], "tokens": ["<s>"]}}}
    (dirs["bos"] / "tokenizer.json").write_text(json.dumps(tj))
    return dirs


def _words(tok_dir):
    from transformers import AutoTokenizer

    from refplan.harness.tiny import single_token_words

    return single_token_words(AutoTokenizer.from_pretrained(str(tok_dir)))


def _rows(tok_dir, n, plens, clens, chat=False, seed=0):
    rng = random.Random(seed)
    words = _words(tok_dir)

    def text(k):
        return " ".join(rng.choice(words) for _ in range(k))

    rows = []
    for i in range(n):
        p, c, r = text(plens[i % len(plens)]), " " + text(clens[i % len(clens)]), " " + text(clens[(i + 1) % len(clens)])
        if chat:
            rows.append({"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
                         "rejected": [{"role": "assistant", "content": r}]})
        else:
            rows.append({"prompt": p, "chosen": c, "rejected": r})
    return rows


def _write(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _trl_dpo(tok_dir, rows, padding, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, max_length=padding.max_length,
                     truncation_mode=padding.truncation_mode, pad_to_multiple_of=padding.pad_to_multiple_of)
    ds = DPOTrainer._prepare_dataset(types.SimpleNamespace(_tokenizer=tok), Dataset.from_list(rows), tok, args,
                                     "train")
    coll = DataCollatorForPreference(pad_token_id=0, max_length=args.max_length, truncation_mode=args.truncation_mode,
                                     pad_to_multiple_of=args.pad_to_multiple_of)
    return coll([ds[i] for i in range(len(ds))])["input_ids"].shape[1], len(ds)


@pytest.mark.parametrize("tok_name", ["plain", "bos", "chat"])
@pytest.mark.parametrize("padding", [Padding(24, "keep_start", None), Padding(24, "keep_start", 16),
                                     Padding(40, "keep_end", None), Padding(200, "keep_start", 8)],
                         ids=["trunc", "trunc-mult16", "keep_end", "pad-mult8"])
def test_dpo_padded_width_matches_trl(tok_dirs, tok_name, padding, tmp_path):
    rows = _rows(tok_dirs[tok_name], 6, [4, 9, 30], [3, 12, 25], chat=tok_name == "chat")
    width, kept = _trl_dpo(tok_dirs[tok_name], rows, padding, tmp_path)
    d = derive(_write(tmp_path, rows), Tokenizer(tok_dirs[tok_name], "--tokenizer"), Method.DPO, padding, 2)
    assert (d.seq, d.kept) == (width, kept)


@pytest.mark.parametrize("tok_name", ["plain", "bos", "chat"])
@pytest.mark.parametrize("max_length", [24, 200])
def test_kto_padded_width_with_kl_matches_trl(tok_dirs, tok_name, max_length, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import KTOConfig, KTOTrainer
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    rows = _rows(tok_dirs[tok_name], 5, [4, 9, 30], [3, 12, 25], chat=tok_name == "chat")
    tok = AutoTokenizer.from_pretrained(str(tok_dirs[tok_name]))
    args = KTOConfig(output_dir=str(tmp_path), use_cpu=True, max_length=max_length, per_device_train_batch_size=3)
    stub = types.SimpleNamespace(_tokenizer=tok, calculate_KL=True, desirable_weight=1.0, undesirable_weight=1.0)
    ds = KTOTrainer._prepare_dataset(stub, Dataset.from_list(rows), tok, args, "train")
    coll = DataCollatorForUnpairedPreference(pad_token_id=0, max_length=max_length)
    width = 0
    for i in range(0, len(ds), 3):  # sequential batches, as KTO requires
        out = coll([ds[j] for j in range(i, min(i + 3, len(ds)))])
        width = max(width, out["input_ids"].shape[1], out["KL_input_ids"].shape[1])
    d = derive(_write(tmp_path, rows), Tokenizer(tok_dirs[tok_name], "--tokenizer"), Method.KTO,
               Padding(max_length, "keep_start", None), 3)
    assert (d.seq, d.kept) == (width, len(ds))


@pytest.mark.parametrize("tok_name", ["plain", "bos", "chat"])
@pytest.mark.parametrize("max_length", [24, 200])
def test_orpo_simpo_lengths_match_tokenize_row(tok_dirs, tok_name, max_length, tmp_path):
    from transformers import AutoTokenizer
    from trl.data_utils import maybe_apply_chat_template
    from trl.experimental.orpo import ORPOTrainer

    rows = _rows(tok_dirs[tok_name], 6, [4, 9, 30], [3, 12, 25], chat=tok_name == "chat")
    tok = AutoTokenizer.from_pretrained(str(tok_dirs[tok_name]))
    stub = types.SimpleNamespace(processing_class=tok, is_encoder_decoder=False, max_length=max_length)
    stub.build_tokenized_answer = types.MethodType(ORPOTrainer.build_tokenized_answer, stub)
    width = 0
    for row in rows:
        out = ORPOTrainer.tokenize_row(stub, maybe_apply_chat_template(row, tok))
        width = max(width, len(out["chosen_input_ids"]), len(out["rejected_input_ids"]))
    for method in (Method.ORPO, Method.SIMPO):
        d = derive(_write(tmp_path, rows), Tokenizer(tok_dirs[tok_name], "--tokenizer"), method,
                   Padding(max_length, "keep_start", None), 2)
        assert d.seq == width


def test_round_up_and_detail(tok_dirs, tmp_path):
    assert (round_up(1000, 64), round_up(1024, 64), round_up(5, None)) == (1024, 1024, 5)
    rows = _rows(tok_dirs["plain"], 4, [5], [40])
    d = derive(_write(tmp_path, rows), Tokenizer(tok_dirs["plain"], "--tokenizer"), Method.DPO,
               Padding(32, "keep_start", 16), 2)
    assert d.seq == 32 and d.longest > 32
    assert d.detail().endswith(f"(longest example {d.longest} tokens, truncated to max_length 32, rounded to "
                               "multiple 16)")


def test_bad_inputs_name_the_flag(tok_dirs, tmp_path):
    tok = Tokenizer(tok_dirs["plain"], "--tokenizer")
    with pytest.raises(PlanError, match="no such file") as e:
        derive(str(tmp_path / "missing.jsonl"), tok, Method.DPO, Padding(), 2)
    assert e.value.where == "--dataset"
    path = _write(tmp_path, [{"prompt": "a", "answer": "b"}])
    with pytest.raises(PlanError, match="needs columns prompt/chosen/rejected") as e:
        derive(path, tok, Method.DPO, Padding(), 2)
    assert e.value.where == "--dataset"
    chat = _write(tmp_path, _rows(tok_dirs["plain"], 2, [3], [3], chat=True))
    with pytest.raises(PlanError, match="no chat template") as e:
        derive(chat, tok, Method.DPO, Padding(), 2)
    assert e.value.where == "--tokenizer"
    with pytest.raises(PlanError, match="no tokenizer.json") as e:
        Tokenizer(tmp_path, "--tokenizer")
