"""`refplan check`: budgets, baselines, verdicts and exit codes; estimate mode stays torch-free.

Fast tests use catalog models (estimate mode, milliseconds) and hand-written CSVs; the two tests that
run real TRL bursts on the harness's tiny model are marked slow.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from refplan import check as chk
from refplan.cli import main
from refplan.errors import PlanError
from refplan.methods import Method, Strategy
from refplan.spec import TrainSpec
from refplan.units import GIB, MIB

REPO = Path(__file__).resolve().parents[2]
MODEL = "meta-llama/Llama-3.2-1B"  # catalog entry: resolves offline


@pytest.fixture(autouse=True)
def offline_env(tmp_path, monkeypatch):
    """An empty HF cache and the CI switch: models resolve from the catalog, never the network."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("CI", "true")
    monkeypatch.chdir(tmp_path)


def _scenario(name: str, budget: str = '"40 GiB"', **extra) -> str:
    body = {"model": f'"{MODEL}"', "method": '"dpo"', "strategy": '"separate"', "finetune": '"lora"',
            "batch": "2", "seq": "1024", "gpu": '"H100-80GB"', "budget": budget}
    body.update(extra)
    body = {k: v for k, v in body.items() if v is not None}  # None drops a key
    return f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in body.items())


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _peak(name: str, budgets: Path) -> int:
    return next(r.now_bytes for r in chk.check(chk.load_budgets(budgets), {}) if r.scenario.name == name)


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["check", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _json(capsys, *argv) -> tuple[int, dict]:
    rc, out, _ = _run(capsys, *argv, "--format", "json")
    return rc, json.loads(out)


# -- units -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [("40 GiB", 40 * GIB), ("0.5GiB", GIB // 2), ("512 MiB", 512 * MIB),
                                           ("1 TiB", 1024 * GIB), ("1024 B", 1024), (" 2 gib ", 2 * GIB)])
def test_parse_size(text, expected):
    assert chk.parse_size(text, "k") == expected


@pytest.mark.parametrize("value,needle", [(40, "no unit"), ("40", "no unit"), ("40 GB", "ambiguous"),
                                          ("40 parsecs", "unknown unit"), ("lots", "cannot read"), (True, "size")])
def test_parse_size_refuses(value, needle):
    with pytest.raises(PlanError, match=needle):
        chk.parse_size(value, "k")


def test_tolerance_is_a_fraction_of_the_baseline_or_bytes():
    assert chk.Tolerance.parse("5%", "k").allowed_bytes(100 * GIB) == 5 * GIB
    assert chk.Tolerance.parse("0.5 GiB", "k").allowed_bytes(100 * GIB) == GIB // 2


# -- budgets ---------------------------------------------------------------------------------------


def test_passing_file_exits_0(tmp_path, capsys):
    f = _write(tmp_path / "budgets.toml", _scenario("a") + _scenario("b", budget='"90%"', strategy='"unwrap"'))
    rc, out, _ = _run(capsys, "--budgets", str(f))
    assert rc == 0
    assert "2 of 2 checked scenarios pass" in out
    for col in ("scenario", "budget", "baseline", "now", "delta", "verdict"):
        assert col in out


def test_budget_forms_agree(tmp_path):
    f = _write(tmp_path / "b.toml", _scenario("gib", budget='"72 GiB"') + _scenario("pct", budget='"90%"')
               + _scenario("frac", budget=None, budget_fraction="0.9"))
    by = {s.name: s for s in chk.load_budgets(f)}
    h100 = by["pct"].gpu.memory_bytes
    assert by["pct"].budget_bytes == by["frac"].budget_bytes == int(0.9 * h100)
    assert by["gib"].budget_bytes == 72 * GIB
    assert "90% of H100-80GB" in by["pct"].budget_text


def test_defaults_table_is_inherited_and_overridden(tmp_path):
    f = _write(tmp_path / "b.toml", '[defaults]\nseq = 512\ntolerance = "3%"\n\n' + _scenario("a", seq=None)
               + _scenario("b", seq="256"))
    a, b = chk.load_budgets(f)
    assert (a.train.seq, b.train.seq) == (512, 256)
    assert a.tolerance.fraction == pytest.approx(0.03)


def test_a_scenario_budget_overrides_a_default_of_the_other_form(tmp_path):
    f = _write(tmp_path / "b.toml", '[defaults]\nbudget = "90%"\n\n'
               + _scenario("a", budget=None, budget_fraction="0.5") + _scenario("b", budget='"30 GiB"'))
    a, b = chk.load_budgets(f)
    assert a.budget_bytes == int(0.5 * a.gpu.memory_bytes) and b.budget_bytes == 30 * GIB


def test_reference_free_method_needs_no_strategy(tmp_path):
    f = _write(tmp_path / "b.toml", _scenario("orpo", method='"orpo"', strategy=None))
    (sc,) = chk.load_budgets(f)
    assert sc.train.strategy.value == "none"


def test_over_budget_exits_1_and_marks_the_row(tmp_path, capsys):
    f = _write(tmp_path / "budgets.toml", _scenario("fits") + _scenario("tight"))
    peak = _peak("tight", f)
    f.write_text(_scenario("fits") + _scenario("tight", budget=f'"{(peak - MIB) / GIB:.6f} GiB"'))

    rc, doc = _json(capsys, "--budgets", str(f))
    assert rc == 1 and doc["passed"] is False
    rows = {r["scenario"]: r for r in doc["rows"]}
    assert rows["fits"]["verdict"] == "pass"
    assert rows["tight"]["verdict"] == "over budget" and rows["tight"]["over_budget"]
    assert "exceeds the budget" in rows["tight"]["reasons"][0]

    rc, out, _ = _run(capsys, "--budgets", str(f))
    assert rc == 1
    line = next(ln for ln in out.splitlines() if "tight" in ln and "│" in ln)
    assert "over budget" in line
    assert "1 of 2 checked scenarios pass" in out


def test_a_longer_context_pushes_a_scenario_over_its_budget(tmp_path, capsys):
    f = _write(tmp_path / "budgets.toml", _scenario("a", seq="1024"))
    budget = _peak("a", f) + GIB // 4
    f.write_text(_scenario("a", seq="1024", budget=f'"{budget / GIB} GiB"'))
    assert _run(capsys, "--budgets", str(f))[0] == 0
    f.write_text(_scenario("a", seq="4096", budget=f'"{budget / GIB} GiB"'))
    assert _run(capsys, "--budgets", str(f))[0] == 1


# -- budget keys are TrainSpec's fields -------------------------------------------------------------

#: values for the TrainSpec fields with no default, or a default TOML cannot write (None)
EXAMPLES = {"method": "dpo", "strategy": "separate", "autocast": "fp16", "ref_dtype": "bf16", "precompute_batch": 2,
            "quant_compute_dtype": "fp32"}
BUDGET_FIELDS = [f for f in dataclasses.fields(TrainSpec) if f.name not in chk.NOT_BUDGET_KEYS]


def _toml(value) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)  # an int, or a string in TOML's basic-string syntax


@pytest.mark.parametrize("field", BUDGET_FIELDS, ids=lambda f: f.name)
def test_every_trainspec_field_is_a_budget_key(tmp_path, field):
    value = EXAMPLES.get(field.name, field.default)
    assert value not in (None, dataclasses.MISSING), f"add an example value for TrainSpec.{field.name} to EXAMPLES"
    f = _write(tmp_path / "b.toml", _scenario("a", **{field.name: _toml(value)}))
    (sc,) = chk.load_budgets(f)
    assert getattr(sc.train, field.name) == value


def test_excluded_budget_keys_are_trainspec_fields():
    names = {f.name for f in dataclasses.fields(TrainSpec)}
    assert set(chk.NOT_BUDGET_KEYS) <= names and not set(chk.NOT_BUDGET_KEYS) & set(chk.TRAIN_KEYS)


def test_unset_keys_take_trainspec_defaults(tmp_path):
    f = _write(tmp_path / "b.toml", _scenario("a", finetune=None, batch=None, seq=None))
    (sc,) = chk.load_budgets(f)
    assert sc.train == TrainSpec(method=Method.DPO, strategy=Strategy.SEPARATE)


# -- baseline --------------------------------------------------------------------------------------


def _baseline(path: Path, **peaks: int) -> Path:
    chk.write_baseline(path, {n: chk.BaselineEntry(p, "estimate", "0.0.1", "2026-01-01T00:00:00+00:00")
                              for n, p in peaks.items()})
    return path


def test_regression_beyond_tolerance_exits_1(tmp_path, capsys):
    f = _write(tmp_path / "budgets.toml", _scenario("a", tolerance='"5%"') + _scenario("b", tolerance='"5%"'))
    pa, pb = _peak("a", f), _peak("b", f)
    base = _baseline(tmp_path / "baseline.json", a=int(pa / 1.10), b=int(pb / 1.02))  # +10% and +2%
    rc, doc = _json(capsys, "--budgets", str(f), "--baseline", str(base))
    rows = {r["scenario"]: r for r in doc["rows"]}
    assert rc == 1
    assert rows["a"]["verdict"] == "regressed" and rows["a"]["delta_pct"] == pytest.approx(10, abs=0.01)
    assert rows["b"]["verdict"] == "pass" and rows["b"]["delta_pct"] == pytest.approx(2, abs=0.01)
    rc, out, _ = _run(capsys, "--budgets", str(f), "--baseline", str(base))
    assert "regressed" in next(ln for ln in out.splitlines() if "│ a " in ln)
    assert "tolerance 5%" in out


def test_absolute_tolerance_and_no_tolerance(tmp_path, capsys):
    f = _write(tmp_path / "budgets.toml", _scenario("abs", tolerance='"0.1 GiB"') + _scenario("none"))
    base = _baseline(tmp_path / "baseline.json", abs=_peak("abs", f) - GIB // 5, none=_peak("none", f) - GIB)
    rc, doc = _json(capsys, "--budgets", str(f), "--baseline", str(base))
    rows = {r["scenario"]: r for r in doc["rows"]}
    assert rows["abs"]["regressed"] and not rows["none"]["regressed"]  # no tolerance: delta shown, not judged
    assert rows["none"]["delta_bytes"] == GIB


def test_update_baseline_writes_then_passes(tmp_path, capsys):
    f = _write(tmp_path / "budgets.toml", _scenario("a", tolerance='"1%"') + _scenario("gone", tolerance='"1%"'))
    base = _baseline(tmp_path / "reports" / "baseline.json", a=_peak("a", f) // 2, stale=1)
    assert _run(capsys, "--budgets", str(f), "--baseline", str(base))[0] == 1
    rc, _, err = _run(capsys, "--budgets", str(f), "--baseline", str(base), "--update-baseline")
    assert rc == 0 and "wrote" in err
    doc = json.loads(base.read_text())
    assert set(doc) == {"a", "gone"}  # stale entries dropped
    assert set(doc["a"]) == {"peak_bytes", "mode", "refplan_version", "updated"}
    assert doc["a"]["peak_bytes"] == _peak("a", f) and doc["a"]["mode"] == "estimate"
    assert _run(capsys, "--budgets", str(f), "--baseline", str(base))[0] == 0
    # unchanged peaks keep their entry, so a re-run does not churn the committed file
    before = base.read_text()
    _run(capsys, "--budgets", str(f), "--baseline", str(base), "--update-baseline")
    assert base.read_text() == before


def test_update_baseline_for_some_scenarios_keeps_the_others(tmp_path, capsys):
    f = _write(tmp_path / "budgets.toml", _scenario("a") + _scenario("b"))
    base = _baseline(tmp_path / "baseline.json", a=1, b=2)
    rc, _, _ = _run(capsys, "--budgets", str(f), "--baseline", str(base), "--scenario", "a", "--update-baseline")
    doc = json.loads(base.read_text())
    assert rc == 0 and doc["a"]["peak_bytes"] == _peak("a", f) and doc["b"]["peak_bytes"] == 2


def test_baseline_of_another_mode_is_not_compared(tmp_path, capsys):
    f = _write(tmp_path / "budgets.toml", _scenario("a", tolerance='"1%"'))
    base = tmp_path / "baseline.json"
    chk.write_baseline(base, {"a": chk.BaselineEntry(1, "measured", "0.1.0", "x")})
    rc, doc = _json(capsys, "--budgets", str(f), "--baseline", str(base))
    assert rc == 0 and doc["rows"][0]["baseline_bytes"] is None and "measured" in doc["rows"][0]["note"]


def test_junit_report(tmp_path, capsys):
    f = _write(tmp_path / "budgets.toml", _scenario("ok") + _scenario("tight", budget='"1 GiB"')
               + '[meas]\nmode = "measured"\nmethod = "dpo"\nstrategy = "separate"\nbudget = "1 GiB"\n')
    junit = tmp_path / "out" / "check.xml"
    rc, _, _ = _run(capsys, "--budgets", str(f), "--junit", str(junit))
    assert rc == 1
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("skipped") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["tight"].find("failure").get("type") == "over budget"
    assert cases["ok"].find("failure") is None and cases["meas"].find("skipped") is not None


# -- bad input: one line naming file, scenario and key; exit 2 ---------------------------------------


BAD = [
    ("malformed", "[a]\nmodel = \n", "not valid TOML"),
    ("unknown key", _scenario("a", sequence="1024"), "[a] sequence: unknown key; did you mean 'seq'?"),
    ("unknown model", _scenario("a", model='"acme/NoSuchModel-7B"'), "[a] model: unknown model"),
    ("unknown gpu", _scenario("a", gpu='"H900"'), "[a] gpu: unknown GPU 'H900'"),
    ("no unit (int)", _scenario("a", budget="40"), "[a] budget: expected str, got int 40; a size needs a unit"),
    ("no unit (str)", _scenario("a", budget='"40"'), "[a] budget: '40' has no unit"),
    ("decimal unit", _scenario("a", budget='"40 GB"'), "[a] budget: '40 GB': decimal units are ambiguous"),
    ("tolerance no unit", _scenario("a", tolerance='"5"'), "[a] tolerance: '5' has no unit"),
    ("missing budget", _scenario("a", budget=None), "[a] budget: missing"),
    ("both budgets", _scenario("a") + "budget_fraction = 0.5\n", "[a] budget_fraction: set either"),
    ("pct without gpu", _scenario("a", budget='"90%"', gpu=None), "[a] budget: a fraction needs the gpu"),
    ("over the gpu", _scenario("a", budget='"100 GiB"'), "[a] budget: 100.00 GiB is more than H100-80GB"),
    ("bad method", _scenario("a", method='"ppo"'), "[a] method: unknown value 'ppo'"),
    ("bad combination", _scenario("a", strategy='"sync"'), "[a] strategy: sync (TR-DPO) works with full"),
    ("kto batch", _scenario("a", method='"kto"', strategy='"unwrap"', batch="1"), "[a] batch: KTO needs"),
    ("bad type", _scenario("a", grad_ckpt='"yes"'), "[a] grad_ckpt: expected bool"),
    ("bad mode", _scenario("a", mode='"guess"'), "[a] mode: unknown mode 'guess'"),
    ("bench key in estimate", _scenario("a", steps="3"), "[a] steps: applies to mode = \"measured\" only"),
    ("planner key in measured", '[m]\nmode = "measured"\nmethod = "dpo"\nstrategy = "separate"\nzero = 2\n'
                                'budget = "1 GiB"\n', "[m] zero: the harness cannot measure"),
    ("bad preset", '[m]\nmode = "measured"\nmodel = "random:huge"\nmethod = "dpo"\nstrategy = "separate"\n'
                   'budget = "1 GiB"\n', "[m] model: unknown random preset"),
    ("bad default", '[defaults]\nseqq = 1\n' + _scenario("a"), "[defaults] seqq: unknown key"),
    ("default names its table", '[defaults]\nbatch = -1\n' + _scenario("a", batch=None),
     "[defaults] batch: batch must be positive"),
    ("top-level scalar", 'budget = "1 GiB"\n' + _scenario("a"), "budget: top-level keys must be"),
    ("empty", "", "no scenarios"),
]


@pytest.mark.parametrize("text,needle", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, text, needle):
    f = _write(tmp_path / "budgets.toml", text)
    rc, out, err = _run(capsys, "--budgets", str(f))
    assert rc == 2 and out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"refplan: {f}") and needle in err, err


def test_bad_baseline_and_missing_files_exit_2(tmp_path, capsys):
    f = _write(tmp_path / "budgets.toml", _scenario("a"))
    bad = _write(tmp_path / "baseline.json", "{not json")
    rc, _, err = _run(capsys, "--budgets", str(f), "--baseline", str(bad))
    assert rc == 2 and str(bad) in err and "--update-baseline" in err
    rc, _, err = _run(capsys, "--budgets", str(tmp_path / "nope.toml"))
    assert rc == 2 and "no such budgets file" in err
    rc, _, err = _run(capsys, "--budgets", str(f), "--scenario", "zzz")
    assert rc == 2 and "--scenario" in err


# -- measured mode ---------------------------------------------------------------------------------

MEASURED = """
[tiny]
mode = "measured"
method = "dpo"
strategy = "separate"
budget = "200 MiB"
tolerance = "5%"
"""

CSV_COLUMNS = ["key", "model", "method", "strategy", "finetune", "dtype", "batch", "seq", "grad_ckpt", "device",
               "steps", "status", "error", "peak_bytes", "est_peak_bytes"]


def _csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def _tiny_row(**over) -> dict:
    row = dict(key="dpo-separate-full-fp32-b2-s128-x", model="random:tiny", method="dpo", strategy="separate",
               finetune="full", dtype="fp32", batch=2, seq=128, grad_ckpt=False, device="cpu", steps=5,
               status="ok", error="", peak_bytes=180 * MIB, est_peak_bytes=170 * MIB)
    row.update(over)
    return row


def test_measured_scenarios_are_skipped_without_measurements(tmp_path, capsys):
    f = _write(tmp_path / "budgets.toml", MEASURED + _scenario("est"))
    rc, doc = _json(capsys, "--budgets", str(f))
    rows = {r["scenario"]: r for r in doc["rows"]}
    assert rc == 0 and rows["tiny"]["verdict"] == "skipped" and rows["est"]["verdict"] == "pass"


def test_from_csv_matches_rows_by_scenario_fields(tmp_path, capsys):
    f = _write(tmp_path / "budgets.toml", MEASURED)
    bench = _csv(tmp_path / "bench.csv", [
        _tiny_row(batch=4, peak_bytes=999 * MIB),        # other shape: not this scenario
        _tiny_row(strategy="precompute", peak_bytes=1),   # other strategy
        _tiny_row(peak_bytes=150 * MIB),                 # older run
        _tiny_row(peak_bytes=180 * MIB),                 # newest matching row wins
    ])
    rc, doc = _json(capsys, "--budgets", str(f), "--from-csv", str(bench))
    (row,) = doc["rows"]
    assert rc == 0 and row["now_bytes"] == 180 * MIB and row["source"].endswith("row 4")

    _csv(bench, [_tiny_row(peak_bytes=201 * MIB)])
    rc, doc = _json(capsys, "--budgets", str(f), "--from-csv", str(bench))
    assert rc == 1 and doc["rows"][0]["verdict"] == "over budget"

    base = tmp_path / "baseline.json"
    chk.write_baseline(base, {"tiny": chk.BaselineEntry(160 * MIB, "measured", "0.1.0", "x")})
    _csv(bench, [_tiny_row(peak_bytes=170 * MIB)])  # +6.25% > 5%: a TRL upgrade that costs memory
    rc, doc = _json(capsys, "--budgets", str(f), "--from-csv", str(bench), "--baseline", str(base))
    assert rc == 1 and doc["rows"][0]["verdict"] == "regressed"


def test_from_csv_failed_burst_and_missing_row(tmp_path, capsys):
    f = _write(tmp_path / "budgets.toml", MEASURED)
    bench = _csv(tmp_path / "bench.csv", [_tiny_row(status="oom", error="OutOfMemoryError: CUDA", peak_bytes="")])
    rc, doc = _json(capsys, "--budgets", str(f), "--from-csv", str(bench))
    assert rc == 1 and doc["rows"][0]["verdict"] == "oom"
    _csv(bench, [_tiny_row(seq=256)])
    rc, _, err = _run(capsys, "--budgets", str(f), "--from-csv", str(bench))
    assert rc == 2 and "no row matches scenario [tiny]" in err
    _write(bench, "a,b\n1,2\n")
    assert _run(capsys, "--budgets", str(f), "--from-csv", str(bench))[0] == 2


@pytest.mark.slow
def test_measured_tiny_burst_live_and_from_the_harness_csv(tmp_path, capsys, monkeypatch):
    """A real TRL burst on the harness's default tiny model (``--measured``), then its bench.csv."""
    monkeypatch.delenv("CI")
    f = _write(tmp_path / "budgets.toml", MEASURED.replace('"200 MiB"', '"1 GiB"'))
    base, bursts = tmp_path / "baseline.json", tmp_path / "bursts"
    rc, doc = _json(capsys, "--budgets", str(f), "--measured", "--out", str(bursts), "--baseline", str(base),
                    "--update-baseline")
    (row,) = doc["rows"]
    assert rc == 0 and row["source"] == "burst" and row["verdict"] == "pass", row
    assert 50 * MIB < row["now_bytes"] < GIB  # a 4-layer, 256-wide model in fp32 with AdamW
    assert json.loads(base.read_text())["tiny"]["mode"] == "measured"

    # the CSV the harness wrote for that run checks the same way, against the baseline just written
    rc, doc = _json(capsys, "--budgets", str(f), "--from-csv", str(bursts / "bench.csv"), "--baseline", str(base))
    (again,) = doc["rows"]
    assert rc == 0 and again["now_bytes"] == row["now_bytes"] and again["delta_bytes"] == 0
    assert again["source"].startswith("csv:")


# -- the repository's own budgets, and the estimate path's imports -------------------------------------


def test_repository_budgets_pass_against_the_committed_baseline(capsys):
    budgets, baseline = REPO / "bench" / "budgets.toml", REPO / "reports" / "baseline.json"
    rc, doc = _json(capsys, "--budgets", str(budgets), "--baseline", str(baseline))
    failing = [(r["scenario"], r["reasons"]) for r in doc["rows"] if not r["passed"]]
    assert rc == 0, f"{failing}: if intended, run `refplan check --update-baseline` and commit the baseline"
    modes = {r["mode"] for r in doc["rows"]}
    assert modes == {"estimate", "measured"}
    assert all(r["baseline_bytes"] is not None for r in doc["rows"]), "scenario without a baseline entry"
