"""Running model-written code in a separate, confined process; never in this one.

Each run is a fresh ``python -I -S`` (no environment variables, user site or site-packages
read) in an empty temporary folder, with no inherited environment, in a session of its own.
:mod:`tasks.problems.harness` confines itself before the code runs: resource limits (CPU
time, address space, file size, open files, no new processes or threads), a seccomp filter
that allows no socket (UNIX ones included), Landlock (files only in its folder and the standard library,
no ptrace or signals out), and the drop from root to ``nobody`` where it starts as root. The
parent kills the whole session at the wall-clock limit or when the run ends, and deletes the
folder.

Where a requirement cannot be met (no Landlock, no seccomp), the code does not run:
:func:`run_code` raises :class:`Unconfined` naming what is missing, unless the caller passes
``allow_unconfined`` (the operator's ``problems.allow_unconfined``, carried in each code item),
in which case it logs a warning and runs. :attr:`Run.isolation` says which layers held and
:attr:`Run.missing` what did not; stages put :func:`confinement` in their record. It is not a
container: for more, run the checker in its own pod.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
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
    isolation: tuple[str, ...] = ()  # layers that held: "nobody", "rlimits", "seccomp", "landlock"
    missing: tuple[str, ...] = ()  # requirements not met (only where the run was allowed unconfined)


class Unconfined(RuntimeError):
    """The sandbox cannot confine code here and running unconfined was not allowed."""


def _env(folder: str) -> dict[str, str]:
    return {"HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin"}


def _kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_code(code: str, entry: str, calls: list[list[Any]], time_limit_s: float = 2.0, memory_mb: int = 256,
             allow_unconfined: bool = False) -> Run:
    """Call ``entry(*args)`` for each ``args`` in ``calls`` within one confined process.

    Raises :class:`Unconfined` where a requirement of confinement cannot be met, unless
    ``allow_unconfined``.
    """
    request = json.dumps({
        "code": code, "entry": entry, "calls": calls, "allow_unconfined": allow_unconfined,
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
        lines = result_path.read_bytes().splitlines()
    report = _line(lines[:1])
    if report.get("refused"):
        raise Unconfined("code checks need confinement this machine cannot give: " + "; ".join(report["missing"])
                         + ". Set problems.allow_unconfined (logged and recorded) to run them anyway.")
    if report.get("missing"):
        _warn_unconfined(tuple(report["missing"]))
    result = {} if timed_out else _line(lines[1:])
    outputs = result.get("outputs")
    if not (isinstance(outputs, list) and len(outputs) == len(calls)):
        outputs = [{"error": "timed out" if timed_out else f"no result (exit {process.returncode})"}] * len(calls)
    return Run(outputs, round(elapsed, 3), timed_out, process.returncode, tuple(report.get("isolation", ())),
               tuple(report.get("missing", ())))


def _line(lines: list[bytes]) -> dict[str, Any]:
    """The last of ``lines`` as a JSON object, or {}."""
    try:
        value = json.loads(lines[-1]) if lines else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


_warned: set[tuple[str, ...]] = set()


def _warn_unconfined(lacking: tuple[str, ...]) -> None:
    if lacking not in _warned:
        _warned.add(lacking)
        log.warning("running model-written code UNCONFINED (problems.allow_unconfined): missing %s", "; ".join(lacking))


def confinement(allow_unconfined: bool = False) -> dict[str, Any]:
    """What confines code checks on this machine, for a stage's record; raises :class:`Unconfined` as run_code does.

    One trivial run (tens of milliseconds), so a stage fails at its start rather than at its first code answer.
    """
    run = run_code("def f():\n    return 1\n", "f", [[]], allow_unconfined=allow_unconfined)
    if run.outputs != [{"value": 1}]:
        raise RuntimeError(f"the sandbox could not run a trivial function: {run}")
    return {"code_isolation": list(run.isolation), "code_missing": list(run.missing)}
