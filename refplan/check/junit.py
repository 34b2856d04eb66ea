"""JUnit XML for CI test reports: one testcase per scenario."""

from __future__ import annotations

from pathlib import Path

from refplan.check.verdicts import CheckRow
from refplan.units import GIB


def junit_xml(rows: list[CheckRow], suite: str = "refplan check") -> str:
    """JUnit XML (one testcase per scenario) in the dialect GitHub, GitLab and Jenkins render."""
    import xml.etree.ElementTree as ET

    failures = sum(1 for r in rows if r.over_budget or r.regressed)
    errors = sum(1 for r in rows if r.failed)
    skipped = sum(1 for r in rows if r.skipped)
    root = ET.Element("testsuites", name=suite, tests=str(len(rows)), failures=str(failures), errors=str(errors))
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(rows)), failures=str(failures),
                       errors=str(errors), skipped=str(skipped))
    for r in rows:
        tc = ET.SubElement(ts, "testcase", name=r.scenario.name, classname=f"refplan.budgets.{r.scenario.mode}")
        if r.skipped:
            ET.SubElement(tc, "skipped", message=r.error)
        elif r.failed:
            ET.SubElement(tc, "error", message=r.error, type=r.verdict).text = r.error
        elif not r.passed:
            msg = "; ".join(r.reasons)
            ET.SubElement(tc, "failure", message=msg, type=r.verdict).text = msg
        now = "-" if r.now_bytes is None else f"{r.now_bytes / GIB:.3f} GiB"
        base = "-" if r.baseline_bytes is None else f"{r.baseline_bytes / GIB:.3f} GiB"
        ET.SubElement(tc, "system-out").text = (f"{r.scenario.label}: now {now}, baseline {base}, budget "
                                                f"{r.budget_bytes / GIB:.3f} GiB ({r.scenario.budget_text})")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: str | Path, rows: list[CheckRow], suite: str = "refplan check") -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(junit_xml(rows, suite), encoding="utf-8")
