"""Fork server: import the heavy stack once, then fork one child per scenario.

Protocol (JSON lines): the server prints ``{"ready": true}`` once imports are done; each request
line on stdin (see :mod:`refplan.harness.child`) is answered, after the child ends, with
``{"exit": code|null, "signal": num|null, "timed_out": bool}``. The child's stdout goes to stderr
(the protocol owns stdout). No torch op runs in the server, so children inherit no thread pools;
CUDA is never touched here (CUDA runs use fresh interpreters instead).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def _preimport() -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import refplan.harness.burst  # noqa: F401
    import refplan.harness.child  # noqa: F401
    import refplan.harness.recipes.dpo  # noqa: F401
    import refplan.harness.recipes.kto  # noqa: F401
    import refplan.harness.recipes.orpo  # noqa: F401
    import refplan.harness.recipes.simpo  # noqa: F401


_CHILD = {"pid": None}


def _terminate(signum, frame) -> None:
    """The runner stops early (Ctrl-C, an error): end the scenario in flight too, then exit."""
    pid = _CHILD["pid"]
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
    os._exit(0)


def _wait(pid: int, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                return {"exit": None, "signal": os.WTERMSIG(status), "timed_out": False}
            return {"exit": os.WEXITSTATUS(status), "signal": None, "timed_out": False}
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"exit": None, "signal": int(signal.SIGKILL), "timed_out": True}
        time.sleep(0.05)


def main() -> int:
    _preimport()
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by libraries goes to the log, not into the protocol
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides; Ctrl-C reaches the child
    signal.signal(signal.SIGTERM, _terminate)
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # child
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 1
            try:
                from refplan.harness.child import run_request

                code = run_request(req)
            except BaseException:  # noqa: BLE001
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _CHILD["pid"] = pid
        reply = _wait(pid, float(req.get("timeout_s", 300)))
        _CHILD["pid"] = None
        protocol.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
