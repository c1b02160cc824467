"""Running model-written code in a separate, limited process; never in this one.

Each run is a fresh ``python -I -S`` (no environment variables, user site or site-packages
read) in an empty temporary folder, with no inherited environment, in a session of its own.
:mod:`tasks.problems.harness` limits CPU time, address space, file size, open files and
processes (so no fork bomb or thread gets going) before the code runs, and drops root to
``nobody`` where it starts as root. The parent kills the whole session at the wall-clock
limit or when the run ends, and deletes the folder.

Where the kernel has Landlock the code may touch files only in its folder and the
standard library, open no TCP connection and signal nothing outside. What it guards
against: loops, bombs, huge files, reading this process's secrets, and slow or hostile
answers from a small policy during RL. It is not a container: without Landlock and run as
a non-root user, the code can read what that user reads (:attr:`Run.isolation` says which
confinement applied; for more, run the checker in its own pod).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HARNESS = (Path(__file__).with_name("harness.py")).read_text(encoding="utf-8")
NOBODY = 65534
RESULT_LIMIT_MB = 4
# Interpreter start-up is not the code's time; without this slack a loaded machine would fail correct answers.
STARTUP_S = 1.0


@dataclass(frozen=True)
class Run:
    outputs: list[dict[str, Any]]  # per call: {"value": ...} or {"error": "..."}
    elapsed_s: float
    timed_out: bool
    returncode: int | None
    isolation: tuple[str, ...] = ()  # what confined it beyond the limits: "nobody", "landlock"


def _env(folder: str) -> dict[str, str]:
    return {"HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin"}


def _kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_code(code: str, entry: str, calls: list[list[Any]], time_limit_s: float = 2.0, memory_mb: int = 256) -> Run:
    """Call ``entry(*args)`` for each ``args`` in ``calls`` within one limited process."""
    request = json.dumps({
        "code": code, "entry": entry, "calls": calls,
        "cpu_s": max(1, int(time_limit_s + 0.999)), "memory_mb": memory_mb, "file_mb": RESULT_LIMIT_MB,
    })
    with tempfile.TemporaryDirectory(prefix="herd-sandbox-") as work, \
            tempfile.TemporaryDirectory(prefix="herd-result-") as own:
        if os.getuid() == 0:
            os.chown(work, NOBODY, NOBODY)
        result_path = Path(own) / "result"
        start = time.monotonic()
        with result_path.open("wb") as result:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", HARNESS],
                stdin=subprocess.PIPE, stdout=result, stderr=subprocess.DEVNULL,
                cwd=work, env=_env(work), start_new_session=True, close_fds=True,
            )
            timed_out = False
            try:
                process.communicate(request.encode(), timeout=time_limit_s + STARTUP_S)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Whatever the code started in its session goes too, finished or not.
                _kill_session(process.pid)
                process.wait()
        elapsed = time.monotonic() - start
        result = {} if timed_out else _result(result_path, len(calls))
    failed = {"error": "timed out" if timed_out else f"no result (exit {process.returncode})"}
    outputs = result.get("outputs") or [failed] * len(calls)
    return Run(outputs, round(elapsed, 3), timed_out, process.returncode, tuple(result.get("isolation", ())))


def _result(path: Path, calls: int) -> dict[str, Any]:
    lines = path.read_bytes().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except ValueError:
        return {}
    ok = isinstance(result, dict) and isinstance(result.get("outputs"), list) and len(result["outputs"]) == calls
    return result if ok else {}
