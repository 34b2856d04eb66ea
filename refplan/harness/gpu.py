"""NVML device-memory sampling on a background thread, and the environment record.

``NvmlSampler`` polls ``nvmlDeviceGetMemoryInfo(handle).used`` every ``interval_s`` (<= 5 ms) and
keeps the maximum since the last :meth:`take_peak`. NVML's "used" is device-wide: it includes the
CUDA context, other processes and allocator caches, so it is >= torch's ``max_memory_reserved``.
pynvml (package ``nvidia-ml-py``) is optional: without it, or without a driver, the sampler is None.
"""

from __future__ import annotations

import platform
import threading
import time


class NvmlSampler:
    """Background thread sampling NVML used bytes of one device."""

    def __init__(self, nvml_index: int = 0, interval_s: float = 0.002):
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
        self.interval_s = min(interval_s, 0.005)
        self._peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="refplan-nvml", daemon=True)

    def used_bytes(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def _run(self) -> None:
        while not self._stop.is_set():
            used = self.used_bytes()
            with self._lock:
                if used > self._peak:
                    self._peak = used
                self.samples += 1
            time.sleep(self.interval_s)

    def start(self) -> NvmlSampler:
        self._peak = self.used_bytes()
        self._thread.start()
        return self

    def take_peak(self) -> int:
        """The maximum since the previous call (one more sample is taken now), then restart the window."""
        now = self.used_bytes()
        with self._lock:
            peak, self._peak = max(self._peak, now), now
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass


def start_sampler(device_index: int = 0) -> NvmlSampler | None:
    """An NVML sampler for torch's CUDA device ``device_index``, or None where NVML is unavailable."""
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return None
    try:
        import torch

        nvml_index = torch.cuda._get_nvml_device_index(device_index)  # honours CUDA_VISIBLE_DEVICES
    except Exception:
        nvml_index = device_index
    try:
        return NvmlSampler(nvml_index).start()
    except Exception:
        return None


def environment(device: str = "cpu") -> dict:
    """Versions and device facts recorded with every run (strings; missing ones are empty)."""
    import importlib.metadata as md

    env = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = ""
    import torch

    env["device_name"] = platform.processor() or platform.machine()
    env["driver"] = ""
    env["cuda"] = torch.version.cuda or ""
    env["cpu_threads"] = str(torch.get_num_threads())
    if device == "cuda" and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
        try:
            import pynvml

            pynvml.nvmlInit()
            drv = pynvml.nvmlSystemGetDriverVersion()
            env["driver"] = drv.decode() if isinstance(drv, bytes) else str(drv)
            pynvml.nvmlShutdown()
        except Exception:
            pass
    else:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        env["device_name"] = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return env
