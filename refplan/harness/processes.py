"""The processes scenarios run in: a fork server on CPU, a fresh interpreter per scenario on CUDA.

On CPU a server process (``python -m refplan.harness.server``) imports torch, transformers, peft and
trl once and ``fork``s a child per scenario (the ~5 s import is paid once; no torch op has run in the
server, so no thread pool is inherited). On CUDA each scenario is a fresh ``python -m
refplan.harness.child`` (CUDA cannot be used after ``fork`` of a process that touched it). Both
runners answer ``poll`` with None while the scenario runs, then ``{"exit", "signal", "timed_out"}``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path


def child_env() -> dict:
    """The scenario process's environment: offline, quiet, and importing this very copy of refplan."""
    env = dict(os.environ)
    env.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    # OpenMP threads that wait by sleeping, not spinning: a CPU burst's steps are timed in process CPU
    # time, which spinning at barriers inflates whenever another process holds a core (measured on this
    # 2-core box under load ~6: DPO LoRA separate 4.13 s per step, spread 67 %, active; 0.94 s, 14 %, passive)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class ForkServer:
    """A pre-imported process that forks one child per scenario (``refplan.harness.server``)."""

    def __init__(self, log_path: Path):
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "refplan.harness.server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, env=child_env(), start_new_session=False,
        )
        try:
            ready = self._readline(timeout=180)
        except BaseException:  # Ctrl-C while the server imports: do not leave it behind
            self.close()
            raise
        if not ready or json.loads(ready).get("ready") is not True:
            self.close()
            raise RuntimeError(f"bench server failed to start (see {log_path})")

    def _readline(self, timeout: float | None) -> str | None:
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            return None
        line = self.proc.stdout.readline()
        return line.decode() if line else None

    def submit(self, request: dict) -> None:
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()

    def poll(self, timeout: float) -> dict | None:
        line = self._readline(timeout)
        if line is None:
            if self.proc.poll() is not None:
                raise RuntimeError("bench server exited")
            return None
        return json.loads(line)

    def close(self) -> None:
        """End the server; a scenario still in flight (Ctrl-C) is killed with it (the server's SIGTERM
        handler kills its child before it exits)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:  # the server is already gone
                pass
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._log.close()


class SpawnRunner:
    """One fresh interpreter per scenario (CUDA)."""

    def __init__(self, log_path: Path):
        self._log_path = log_path
        self._log = None
        self.proc = None

    def submit(self, request: dict) -> None:
        self._log = open(self._log_path, "ab")
        self._deadline = time.monotonic() + request["timeout_s"]
        self.proc = subprocess.Popen([sys.executable, "-m", "refplan.harness.child", json.dumps(request)],
                                     stdout=self._log, stderr=self._log, env=child_env())

    def poll(self, timeout: float) -> dict | None:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if time.monotonic() < self._deadline:
                return None
            self.proc.kill()
            self.proc.wait()
            self._log.close()
            return {"timed_out": True, "exit": None, "signal": signal.SIGKILL}
        self._log.close()
        return {"timed_out": False, "exit": code if code >= 0 else None, "signal": -code if code < 0 else None}

    def close(self) -> None:
        """Kill the scenario still in flight (Ctrl-C), if any."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._log is not None:
            self._log.close()
