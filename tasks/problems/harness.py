"""Runs inside the sandbox process (``python -I -S -c <this file>``); stdlib only.

Reads ``{"code", "entry", "calls", "cpu_s", "memory_mb", "file_mb", "allow_unconfined"}`` as
JSON on stdin, confines itself, runs the code and prints one line, ``{"outputs": [...],
"isolation": [...], "missing": [...]}``, with the entry function's result (or an error) for each
call. The expected values never enter this process: the parent compares, so printing a
made-up result line wins nothing.

Confinement, in order, each layer named in ``isolation`` when it took hold:

- ``nobody``: root drops to ``nobody`` (another user cannot read the parent's ``/proc`` files);
- ``rlimits``: CPU time, address space, file size, open files, no new processes or threads;
- ``seccomp``: ``socket`` fails for every family, UNIX sockets included, and ``io_uring`` (which
  could open sockets past the filter) is refused, so no network and no local service;
- ``landlock``: files only under the working folder (read-write) and the standard library
  (read-only), no ptrace or signals out of the sandbox, so ``/proc/<ppid>/environ`` is shut
  even to the same user.

Each requirement (:data:`REQUIREMENTS`) needs one of its layers. Where one is missing the code
does not run and the line says ``refused`` with what is missing, unless the request allows
running unconfined (the operator's explicit setting, which the parent logs and records).
"""

import ctypes
import io
import json
import os
import platform
import resource
import sys

NOBODY = 65534
# Imported before root is dropped: where the interpreter lives in a root-only folder
# (a pyenv under /root), ``nobody`` could not import them afterwards.
PRELOAD = ("bisect", "collections", "dataclasses", "decimal", "fractions", "functools", "heapq", "itertools",
           "math", "operator", "random", "re", "statistics", "string", "typing")
# What must hold before model-written code runs: the layers that give it, and what supplies them.
REQUIREMENTS = (
    ("no network", ("seccomp",), "a seccomp filter (Linux on x86_64 or aarch64)"),
    ("the parent's environment unreadable", ("nobody", "landlock"), "root (to drop to nobody) or Landlock"),
    ("CPU, memory, file-size and process limits", ("rlimits",), "setrlimit"),
    ("writes only in the temporary folder", ("landlock",), "Landlock (Linux 5.13+, enabled in the LSM list)"),
)

# Landlock (linux/landlock.h): syscalls 444-446 on every architecture, and its access bits.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_RULE_PATH_BENEATH = 1
_FS_EXECUTE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 2, 1 << 3
_FS_ABI1 = (1 << 13) - 1  # execute .. make_sym: every file right of the first ABI
_FS_TRUNCATE = 1 << 14  # ABI 3
_NET_TCP = (1 << 0) | (1 << 1)  # bind, connect; ABI 4
_SCOPE = (1 << 0) | (1 << 1)  # abstract unix sockets, signals; ABI 6
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2

# seccomp (linux/seccomp.h, linux/filter.h): the audit arch and the syscall numbers per machine.
_ARCH = {"x86_64": (0xC000003E, {"socket": 41, "io_uring_setup": 425}),
         "aarch64": (0xC00000B7, {"socket": 198, "io_uring_setup": 425})}
_LD_ABS, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06
_ALLOW, _KILL, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_X32 = 0x40000000  # x86_64's x32 syscall numbers: another way to reach socket
_EPERM = 1


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


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
    try:
        for kind, value in limits.items():
            hard = resource.getrlimit(kind)[1]
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(kind, (value, value))
    except (OSError, ValueError):
        return False
    return all(resource.getrlimit(kind)[1] <= value for kind, value in limits.items())


def _no_network(libc):
    """A seccomp filter: no ``socket`` of any family, no ``io_uring``; False where it cannot be installed.

    AF_UNIX too: a local service's socket (a database that trusts local users) leads out of the
    sandbox as surely as the network does. ``socketpair`` stays: it reaches nothing outside.
    """
    arch = _ARCH.get(platform.machine())
    if arch is None:
        return False
    audit_arch, numbers = arch
    program = [
        (_LD_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ, 1, 0, audit_arch),
        (_RET, 0, 0, _KILL),  # a foreign ABI (i386's socketcall) is not filtered here, so not allowed
        (_LD_ABS, 0, 0, 0),  # seccomp_data.nr
        (_JGE, 0, 1, _X32),
        (_RET, 0, 0, _ERRNO | _EPERM),
        (_JEQ, 0, 1, numbers["io_uring_setup"]),
        (_RET, 0, 0, _ERRNO | _EPERM),
        (_JEQ, 0, 1, numbers["socket"]),
        (_RET, 0, 0, _ERRNO | _EPERM),
        (_RET, 0, 0, _ALLOW),
    ]
    filters = (_SockFilter * len(program))(*[_SockFilter(*row) for row in program])
    fprog = _SockFprog(len(program), filters)
    return libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0


def _landlock(libc, workdir, readable):
    """Confine the files this process may touch; False where the kernel has no Landlock."""
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
    restricted = libc.syscall(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0
    os.close(ruleset)
    return restricted


def missing(isolation):
    """What :data:`REQUIREMENTS` asks and ``isolation`` lacks, each with what would supply it."""
    return [f"{need} (needs {supply})" for need, layers, supply in REQUIREMENTS
            if not any(layer in isolation for layer in layers)]


def _confine(request):
    for name in PRELOAD:
        __import__(name)
    libc = _libc()
    isolation = ["nobody"] if _drop_root() else []
    if _limit(request["cpu_s"], request["memory_mb"], request["file_mb"]):
        isolation.append("rlimits")
    # Both filters need no_new_privs when not root; without it neither can be installed.
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        if _no_network(libc):
            isolation.append("seccomp")
        if _landlock(libc, os.getcwd(), [p for p in sys.path if p]):
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
    lacking = missing(isolation)
    refused = bool(lacking) and not request.get("allow_unconfined", False)
    # The report goes out before the code runs, so nothing the code writes later can change it.
    report = {"isolation": isolation, "missing": lacking, "refused": refused}
    os.write(result_fd, (json.dumps(report) + "\n").encode())
    if refused:
        os._exit(0)
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
    os.write(result_fd, (json.dumps({"outputs": outputs}) + "\n").encode())
    os._exit(0)


if __name__ == "__main__":  # as ``python -c``; importing this module runs nothing
    main()
