"""Runs inside the sandbox process (``python -I -S -c <this file>``); stdlib only.

Reads ``{"code", "entry", "calls", "cpu_s", "memory_mb", "file_mb"}`` as JSON on stdin,
confines itself, runs the code and prints one line, ``{"outputs": [...], "isolation": [...]}``,
with the entry function's result (or an error) for each call. The expected values never
enter this process: the parent compares, so printing a made-up result line wins nothing.

Confinement, in order: drop root to ``nobody``; resource limits; Landlock where the
kernel has it (files only under the working folder and the standard library, no TCP, no
signals or ptrace out of the sandbox). Without Landlock a non-root sandbox still runs as
its parent's user and could read what that user reads; ``isolation`` says which applied.
"""

import ctypes
import io
import json
import os
import resource
import sys

NOBODY = 65534
# Imported before root is dropped: where the interpreter lives in a root-only folder
# (a pyenv under /root), ``nobody`` could not import them afterwards.
PRELOAD = ("bisect", "collections", "dataclasses", "decimal", "fractions", "functools", "heapq", "itertools",
           "math", "operator", "random", "re", "statistics", "string", "typing")

# Landlock (linux/landlock.h): syscalls 444-446 on every architecture, and its access bits.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_RULE_PATH_BENEATH = 1
_FS_EXECUTE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 2, 1 << 3
_FS_ABI1 = (1 << 13) - 1  # execute .. make_sym: every file right of the first ABI
_FS_TRUNCATE = 1 << 14  # ABI 3
_NET_TCP = (1 << 0) | (1 << 1)  # bind, connect; ABI 4
_SCOPE = (1 << 0) | (1 << 1)  # abstract unix sockets, signals; ABI 6
_PR_SET_NO_NEW_PRIVS = 38


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _drop_root():
    # Root ignores RLIMIT_NPROC and can read everything; nobody can do neither.
    if os.getuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        return True
    return False


def _limit(cpu_s, memory_mb, file_mb):
    limits = {
        resource.RLIMIT_CPU: cpu_s,
        resource.RLIMIT_AS: memory_mb << 20,
        resource.RLIMIT_FSIZE: file_mb << 20,
        resource.RLIMIT_NPROC: 0,  # no fork, no threads: a fork bomb fails at its first fork
        resource.RLIMIT_NOFILE: 64,
        resource.RLIMIT_CORE: 0,
    }
    for kind, value in limits.items():
        resource.setrlimit(kind, (value, value))


def _landlock(workdir, readable):
    """Confine the files this process may touch; False where the kernel has no Landlock."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return False
    handled_fs = _FS_ABI1 | (_FS_TRUNCATE if abi >= 3 else 0)
    attr = (ctypes.c_uint64 * 3)(handled_fs, _NET_TCP if abi >= 4 else 0, _SCOPE if abi >= 6 else 0)
    size = 8 * (3 if abi >= 6 else 2 if abi >= 4 else 1)
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return False
    rules = [(workdir, handled_fs)] + [(path, _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR) for path in readable]
    for path, access in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        rule = _PathBeneath(access if os.path.isdir(path) else access & (_FS_EXECUTE | _FS_READ_FILE), fd)
        libc.syscall(_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                     ctypes.c_uint32(0))
        os.close(fd)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    restricted = libc.syscall(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0
    os.close(ruleset)
    return restricted


def _confine(request):
    for name in PRELOAD:
        __import__(name)
    isolation = ["nobody"] if _drop_root() else []
    _limit(request["cpu_s"], request["memory_mb"], request["file_mb"])
    if _landlock(os.getcwd(), [p for p in sys.path if p]):
        isolation.append("landlock")
    return isolation


def _plain(value):
    json.dumps(value)  # raises for what JSON cannot carry, which the parent then scores as wrong
    return value


def main():
    request = json.loads(sys.stdin.read())
    sys.stdin.close()
    result_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    isolation = _confine(request)
    # The code's own prints go nowhere; only this process writes the result line.
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = io.StringIO()
    outputs = []
    namespace = {"__name__": "solution"}
    try:
        exec(compile(request["code"], "<solution>", "exec"), namespace)
        entry = namespace[request["entry"]]
    except BaseException as err:  # noqa: BLE001 - any failure of the code is a wrong answer
        outputs = [{"error": f"{type(err).__name__}: {err}"[:200]}] * len(request["calls"])
    else:
        for args in request["calls"]:
            try:
                outputs.append({"value": _plain(entry(*args))})
            except BaseException as err:  # noqa: BLE001
                outputs.append({"error": f"{type(err).__name__}: {err}"[:200]})
    os.write(result_fd, (json.dumps({"outputs": outputs, "isolation": isolation}) + "\n").encode())
    os._exit(0)


if __name__ == "__main__":  # as ``python -c``; importing this module runs nothing
    main()
