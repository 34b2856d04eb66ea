"""``--dataset`` / ``--tokenizer`` on estimate and fit: seq derived from the examples, said in the header and
the JSON provenance, torch never imported, and bad input one line naming the flag (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("tokenizers")
TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from refplan.harness.tiny import build_tokenizer

    d = tmp_path_factory.mktemp("tok")
    build_tokenizer(512, out_dir=d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": TEMPLATE}))
    return d


@pytest.fixture(scope="module")
def words(tok_dir):
    from transformers import AutoTokenizer

    from refplan.harness.tiny import single_token_words

    return single_token_words(AutoTokenizer.from_pretrained(str(tok_dir)))


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _run(*args):
    code = ("import sys, io, contextlib\nfrom refplan.cli import main\nout = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n    rc = main(sys.argv[1:])\n"
            "print(json.dumps({'rc': rc, 'out': out.getvalue(), 'heavy': [m for m in ('torch', 'trl', 'datasets') "
            "if m in sys.modules]}))")
    r = subprocess.run([sys.executable, "-c", "import json\n" + code, *args], capture_output=True, text=True,
                       cwd=ROOT, env={"CI": "1", "PATH": "/usr/bin:/bin", "HOME": str(ROOT)})
    if r.returncode == 2:
        return {"rc": 2, "err": r.stderr}
    assert r.returncode == 0, r.stderr[-2000:]
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "err": r.stderr}


def test_estimate_derives_seq_without_torch(tok_dir, words, tmp_path):
    text = lambda n: " ".join(words[:n])  # noqa: E731 -- one token a word
    rows = [{"prompt": text(10), "chosen": " " + text(30), "rejected": " " + text(5)}] * 3  # 10 + 30 + EOS = 41
    data = _jsonl(tmp_path / "d.jsonl", rows)
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text("model_name_or_path: meta-llama/Llama-3.1-8B\nmax_length: 40\npad_to_multiple_of: 16\n")
    res = _run("estimate", "--config", str(cfg), "--tokenizer", str(tok_dir), "--dataset", data, "--method", "dpo",
               "--format", "json")
    assert res["rc"] == 0 and res["heavy"] == [], res
    doc = json.loads(res["out"])
    assert doc["settings"]["seq"] == 48  # min(40, longest 41) rounded up to 16
    assert doc["provenance"]["seq"]["detail"] == (f"derived from {data} (longest example 41 tokens, truncated to "
                                                  "max_length 40, rounded to multiple 16)")
    assert doc["provenance"]["pad_to_multiple_of"]["value"] == 16
    table = _run("estimate", "--config", str(cfg), "--tokenizer", str(tok_dir), "--dataset", data, "--method", "dpo")
    assert "seq 48: derived from" in table["out"].replace("\n", " ")


def test_conversational_dataset_goes_through_the_chat_template_without_torch(tok_dir, words, tmp_path):
    rows = [{"prompt": [{"role": "user", "content": words[0]}], "chosen": [{"role": "assistant", "content": words[1]}],
             "rejected": [{"role": "assistant", "content": words[2]}]}]
    res = _run("fit", "--model", "meta-llama/Llama-3.1-8B", "--gpu", "A100-40GB", "--tokenizer", str(tok_dir),
               "--dataset", _jsonl(tmp_path / "c.jsonl", rows), "--method", "dpo", "--format", "json")
    assert res["rc"] == 0 and res["heavy"] == []
    assert json.loads(res["out"])["provenance"]["seq"]["origin"] == "derived"


@pytest.mark.parametrize("args, flag", [
    (["--dataset", "/nonexistent.jsonl", "--tokenizer", "TOK"], "--dataset: /nonexistent.jsonl: no such file"),
    (["--dataset", "BAD", "--tokenizer", "TOK"], "needs columns prompt/chosen/rejected"),
    (["--dataset", "DATA"], "--tokenizer: --dataset needs the model's tokenizer"),
    (["--dataset", "DATA", "--tokenizer", "/"], "--tokenizer: /: no tokenizer.json"),
    (["--dataset", "DATA", "--tokenizer", "TOK", "--seq", "64"], "--seq: give --seq or --dataset"),
    (["--tokenizer", "TOK"], "--tokenizer: reads --dataset"),
])
def test_bad_dataset_input_is_one_line_naming_the_flag(tok_dir, tmp_path, args, flag):
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "chosen": " b", "rejected": " c"}])
    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "answer": " b"}])
    subs = {"TOK": str(tok_dir), "DATA": data, "BAD": bad}
    res = _run("estimate", "--model", "meta-llama/Llama-3.1-8B", "--method", "dpo", *[subs.get(a, a) for a in args])
    assert res["rc"] == 2
    lines = res["err"].strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], res["err"]
