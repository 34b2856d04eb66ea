"""Pictures and the HTML page: real PNG files, a self-contained page, rendered by headless Chromium
(from the system packages; skipped where it is not installed) with no console errors."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import EXAMPLES, run_refplan

PNG = b"\x89PNG\r\n\x1a\n"


def test_estimate_plot_timeline_and_fit_plot_are_pngs(tmp_path):
    r = run_refplan("estimate", "--model", "meta-llama/Llama-3.1-8B", "--method", "dpo", "--gpu", "A100-80GB",
                    "--plot", tmp_path / "bars.png", "--timeline", tmp_path / "time.png")
    assert r.returncode == 0, r.stderr
    r = run_refplan("fit", "--model", "meta-llama/Llama-3.1-8B", "--method", "dpo", "--finetune", "lora",
                    "--gpu", "A100-40GB", "--seq", "2048", "--plot", tmp_path / "fit.png")
    assert r.returncode == 0, r.stderr
    for name in ("bars.png", "time.png", "fit.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name


def test_plain_table_path_does_not_import_matplotlib():
    import sys

    code = ("import sys; from refplan.cli import main; main(['estimate', '--model', 'gpt2', '--format', 'json']);"
            "print('matplotlib' in sys.modules, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip().endswith("False")


def _pages(tmp_path):
    est, fit = tmp_path / "estimate.html", tmp_path / "fit.html"
    r = run_refplan("estimate", "--config", EXAMPLES / "trl-dpo-lora.yaml", "--method", "dpo", "--gpu", "A100-80GB",
                    "--html", est)
    assert r.returncode == 0, r.stderr
    r = run_refplan("fit", "--config", EXAMPLES / "axolotl-qlora-dpo.yaml", "--gpu", "L4", "--html", fit)
    assert r.returncode == 0, r.stderr
    return est, fit


def test_html_pages_are_self_contained(tmp_path):
    for page in _pages(tmp_path):
        text = page.read_text()
        assert text.startswith("<!DOCTYPE html>") and "<table>" in text
        assert len(re.findall(r'src="data:image/png;base64,', text)) >= 1
        assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing fetched from the network
        assert "<script" not in text
        assert "Settings and where they came from" in text and "file" in text


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_html_pages_render_in_headless_chromium_without_console_errors(tmp_path):
    for page in _pages(tmp_path):
        shot = tmp_path / (page.stem + ".png")
        r = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                            "--window-size=1200,2000", f"--screenshot={shot}", page.as_uri()],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 20_000
        console = [l for l in r.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l]
        assert not console, console
