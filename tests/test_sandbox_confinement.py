"""Model-written code cannot escape the code checker's sandbox, as root and as an ordinary user.

Each attack runs through :func:`run_code` in a checker process started with a secret in its
environment (its ``/proc/<pid>/environ``), once as this user and, where this is root, once as
uid 1000 (the trainer image's user), where there is no drop to ``nobody``. Where the machine
cannot confine, :func:`run_code` raises :class:`Unconfined` and these tests fail: they never skip.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tasks.problems import harness
from tasks.problems.sandbox import Unconfined, confinement, run_code

REPO = Path(__file__).resolve().parent.parent
SECRET = "herd-secret-" + uuid.uuid4().hex
POSTGRES = ("127.0.0.1", 5432)
POSTGRES_SOCKET = "/var/run/postgresql/.s.PGSQL.5432"  # trusts local users: as good as a network for an attacker
ORDINARY_UID = 1000
ESCAPED = Path("/tmp") / f"herd-escape-{uuid.uuid4().hex}"  # world-writable: only the sandbox stands in the way

ATTACKS = {
    "socket": (
        "import ctypes, struct\n"
        "def f(host, port):\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    fd = libc.socket(2, 1, 0)\n"  # AF_INET, SOCK_STREAM
        "    if fd < 0:\n        return 'socket refused, errno %d' % ctypes.get_errno()\n"
        "    addr = struct.pack('!HH4s8x', 2, port, bytes(map(int, host.split('.'))))\n"
        "    addr = struct.pack('=H', 2) + addr[2:]\n"  # sa_family is host-endian
        "    if libc.connect(fd, addr, len(addr)) == 0:\n        return 'connected'\n"
        "    return 'connect refused, errno %d' % ctypes.get_errno()\n",
        list(POSTGRES),
    ),
    "unix_socket": (
        "import ctypes\n"
        "def f(path):\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    fd = libc.socket(1, 1, 0)\n"  # AF_UNIX, SOCK_STREAM
        "    if fd < 0:\n        return 'socket refused, errno %d' % ctypes.get_errno()\n"
        "    addr = (1).to_bytes(2, 'little') + path.encode() + bytes(1)\n"
        "    if libc.connect(fd, addr, len(addr)) == 0:\n        return 'connected'\n"
        "    return 'connect refused, errno %d' % ctypes.get_errno()\n",
        [POSTGRES_SOCKET],
    ),
    "environ": (
        "import os\n"
        "def f():\n"
        "    got = []\n"
        "    for path in (f'/proc/{os.getppid()}/environ', f'/proc/{os.getppid()}/cmdline'):\n"
        "        try:\n            got.append(open(path, 'rb').read().decode(errors='replace'))\n"
        "        except OSError as err:\n            got.append(type(err).__name__)\n"
        "    return got + [sorted(os.environ)]\n",
        [],
    ),
    "write_outside": (
        "def f(outside):\n"
        "    try:\n        open(outside, 'w').write('out')\n        return 'wrote outside'\n"
        "    except OSError as err:\n        refused = type(err).__name__\n"
        "    open('inside', 'w').write('in')\n"
        "    return [refused, open('inside').read()]\n",
        [str(ESCAPED)],
    ),
    "fork_bomb": (
        "import os\n"
        "def f():\n"
        "    children = 0\n"
        "    while children < 64:\n"
        "        try:\n            pid = os.fork()\n"
        "        except OSError as err:\n            return ['fork refused', children]\n"
        "        if pid == 0:\n            while True:\n                os.fork()\n"
        "        children += 1\n"
        "    return ['forked', children]\n",
        [],
    ),
    "memory_10gb": (
        "def f():\n"
        "    block = bytearray(10 * 2**30)\n"
        "    return 'allocated %d' % len(block)\n",
        [],
    ),
}

PROBE = f"""
import json, os
from tasks.problems.sandbox import run_code
attacks = json.loads(os.environ["HERD_ATTACKS"])
secret_in_own_environ = {SECRET!r} in open("/proc/self/environ").read()
runs = {{}}
for name, (code, args) in attacks.items():
    run = run_code(code, "f", [args], time_limit_s=2.0)
    runs[name] = {{"output": run.outputs[0], "isolation": run.isolation, "missing": run.missing}}
print(json.dumps({{"uid": os.getuid(), "secret_in_own_environ": secret_in_own_environ, "runs": runs}}))
"""


def _interpreter_for(uid: int) -> str:
    """An interpreter ``uid`` can start (a pyenv under /root is not one)."""
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        try:
            started = subprocess.run([candidate, "-c", "pass"], user=uid, group=uid, extra_groups=[],
                                     capture_output=True).returncode == 0
        except (OSError, TypeError):
            started = False
        if started:
            return candidate
    raise AssertionError(f"no Python interpreter here that uid {uid} can run, so the ordinary-user case is unchecked")


def _probe(uid: int | None) -> dict:
    """Every attack, run by a checker process (this user, or ``uid``) with the secret in its environment."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "TMPDIR": "/tmp", "HERD_SECRET_KEY": SECRET,
           "HERD_ATTACKS": json.dumps(ATTACKS)}
    as_user = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
    python = sys.executable if uid is None else _interpreter_for(uid)
    done = subprocess.run([python, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, cwd="/",
                          **as_user)
    assert done.returncode == 0, done.stderr[-3000:]  # Unconfined ends up here: this machine cannot confine
    return json.loads(done.stdout.splitlines()[-1])


def _users() -> list[int | None]:
    return [None, ORDINARY_UID] if os.getuid() == 0 else [None]


@pytest.fixture(scope="module", params=_users(), ids=lambda uid: "this-user" if uid is None else f"uid-{uid}")
def probed(request) -> dict:
    return _probe(request.param)


def test_the_targets_are_there_to_attack():
    # Positive controls: without the sandbox both sockets connect and /tmp takes a file.
    with socket.create_connection(POSTGRES, timeout=5):
        pass
    with socket.socket(socket.AF_UNIX) as local:
        local.connect(POSTGRES_SOCKET)
    assert os.access("/tmp", os.W_OK)


def test_every_run_is_confined_and_says_how(probed):
    assert probed["secret_in_own_environ"]  # the secret really is in the checker's /proc/<pid>/environ
    for name, run in probed["runs"].items():
        assert {"rlimits", "seccomp", "landlock"} <= set(run["isolation"]), (name, run)
        assert run["missing"] == [], (name, run)
    if probed["uid"] == 0:
        assert all("nobody" in run["isolation"] for run in probed["runs"].values())


def test_code_opens_no_socket(probed):
    for attack in ("socket", "unix_socket"):
        output = probed["runs"][attack]["output"]
        assert output == {"value": "socket refused, errno 1"}, (attack, output)  # EPERM, from the seccomp filter


def test_code_cannot_read_the_checkers_environment(probed):
    output = probed["runs"]["environ"]["output"]
    assert SECRET not in json.dumps(output)
    environ, cmdline, own_env = output["value"]
    assert environ == "PermissionError" and cmdline == "PermissionError"
    assert "HERD_SECRET_KEY" not in own_env


def test_code_writes_only_in_its_folder(probed):
    assert probed["runs"]["write_outside"]["output"] == {"value": ["PermissionError", "in"]}
    assert not ESCAPED.exists()


def test_a_fork_bomb_gets_no_child(probed):
    assert probed["runs"]["fork_bomb"]["output"] == {"value": ["fork refused", 0]}


def test_ten_gigabytes_are_not_allocated(probed):
    output = probed["runs"]["memory_10gb"]["output"]
    assert output["error"].startswith("MemoryError"), output


def test_the_stage_record_names_the_confinement():
    record = confinement()
    assert {"rlimits", "seccomp", "landlock"} <= set(record["code_isolation"]) and record["code_missing"] == []


def test_a_missing_requirement_is_named_and_refused():
    # What the harness decides from the layers that took hold (here every layer holds, so the decision is shown
    # on the layer lists of machines that lack some).
    assert harness.missing(["nobody", "rlimits", "seccomp", "landlock"]) == []
    no_landlock = harness.missing(["rlimits", "seccomp"])
    assert [m.split(" (")[0] for m in no_landlock] == ["the parent's environment unreadable",
                                                        "writes only in the temporary folder"]
    assert all("Landlock" in m for m in no_landlock)
    assert harness.missing(["nobody", "rlimits", "landlock"]) == ["no network (needs a seccomp filter (Linux on "
                                                                  "x86_64 or aarch64))"]


def test_running_unconfined_needs_the_operators_setting(monkeypatch, caplog):
    # A harness whose Landlock never takes hold stands for a kernel without it.
    from tasks.problems import sandbox

    without_landlock = sandbox.HARNESS.replace("def _landlock(libc, workdir, readable):",
                                               "def _landlock(libc, workdir, readable):\n    return False\n")
    assert without_landlock != sandbox.HARNESS
    monkeypatch.setattr(sandbox, "HARNESS", without_landlock)
    monkeypatch.setattr(sandbox, "_warned", set())
    with pytest.raises(Unconfined, match="writes only in the temporary folder.*Landlock.*problems.allow_unconfined"):
        run_code("def f():\n    return 1\n", "f", [[]])
    with caplog.at_level("WARNING", logger="tasks.problems.sandbox"):
        run = run_code("def f():\n    return 1\n", "f", [[]], allow_unconfined=True)
    assert run.outputs == [{"value": 1}] and "landlock" not in run.isolation
    assert any("writes only in the temporary folder" in m for m in run.missing)
    assert "UNCONFINED" in caplog.text


def test_stages_record_the_confinement_only_where_they_check_code():
    from tasks.problems import code
    from tasks.problems.arithmetic import generate as arithmetic
    from tasks.problems.checkers import code_confinement, score

    assert code_confinement(arithmetic(3, seed=0)) == {}
    items = code.generate(2, seed=0) + arithmetic(2, seed=0)
    assert {"rlimits", "seccomp", "landlock"} <= set(code_confinement(items)["code_isolation"])
    # The operator's setting travels in the items it was built with, and only there (other ids do not move).
    allowed = code.generate(2, seed=0, allow_unconfined=True)
    assert all(p.checker_args["allow_unconfined"] for p in allowed)
    assert all("allow_unconfined" not in p.checker_args for p in code.generate(2, seed=0))
    assert score(allowed[0], allowed[0].answer) == 1.0
