"""A registry version is an MLflow model: ``mlflow.pyfunc`` loads ``models:/herd-<variant>@candidate`` and generates
the text herd's own model generates, and ``mlflow models serve`` answers ``/invocations`` with it.

The version is registered by a real gate run (test_gate's fixtures: a tiny Llama 4 with a real
BPE tokenizer, sqlite MLflow under a shared HERD_HOME).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pytest
import torch
from live_airflow import free_port
from test_gate import GOOD, export, gates  # noqa: F401 (fixtures shared with the gate tests)

from conftest import REPO, descendants, tiny_model

PROMPTS = ["What is 12 + 3?", "Everyone has the right to"]


@pytest.fixture
def candidate(gates) -> Iterator[str]:
    """``models:/<name>@candidate`` after a real gate registered it, with mlflow's global tracking URI (what such
    URIs resolve against) set to herd's store, as MLFLOW_TRACKING_URI sets it for a user."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from tasks.runtime.tracking import tracking_uri

    gates.run(GOOD)  # first: herd's store chooses its artifact folder by whether MLFLOW_TRACKING_URI is set
    with _use_tracking_uri(tracking_uri()):
        yield f"models:/{gates.name}@candidate"


def test_registering_leaves_mlflow_tracking_uri_as_it_was(gates, monkeypatch, tmp_path):
    """Registration sets mlflow's global tracking URI only while its database registry needs it, and never unsets
    the MLFLOW_TRACKING_URI a deployment gives (later MLflow calls of the stage would go to a local file)."""
    from test_gate import Gates

    from tasks.registry import versions
    from tasks.runtime import tracking

    gates.run(GOOD)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.chdir(tmp_path)  # with the variable set, the experiment's artifacts go to mlflow's ./mlruns
    monkeypatch.setenv("HERD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.tracking_uri())
    given = Gates(tmp_path / "home", gates.export)
    given.run(GOOD)
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/home/mlflow/mlflow.db"
    assert versions.by_alias(tracking.client(), given.name, versions.CANDIDATE).source.startswith("models:/m-")


def herds_own_answers(export: Path, prompts: list[str], max_new_tokens: int, chat: bool = True) -> list[str]:
    """What herd's model, loaded from the stage's weights, answers greedily: the reference for the served model."""
    from tasks.model.artifacts import load_model
    from tasks.model.generate import generate
    from tasks.problems.chat import load_tokenizer

    model = load_model(export).eval()
    tokenizer = load_tokenizer(export / "hf")
    eot = tokenizer.convert_tokens_to_ids("<|eot|>")
    if chat:
        turns = [[{"role": "user", "content": p}] for p in prompts]
        ids = [tokenizer.apply_chat_template(turn, tokenize=True, add_generation_prompt=True,
                                             return_dict=True)["input_ids"] for turn in turns]
    else:
        bos = tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
        ids = [[bos, *tokenizer(p, add_special_tokens=False)["input_ids"]] for p in prompts]
    answers = generate(model, ids, max_new_tokens, eot, temperature=0.0)
    return [tokenizer.decode([t for t in a if t != eot], skip_special_tokens=True).strip() for a in answers]


def test_the_candidate_loads_with_pyfunc_and_generates_herds_text(candidate, export):
    import mlflow
    from mlflow.exceptions import MlflowException

    info = mlflow.models.get_model_info(candidate)
    assert info.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # nothing pickled
    assert [c.type.name for c in info.signature.inputs.inputs] == ["string"]
    assert {p.name: p.default for p in info.signature.params.params} == {
        "max_new_tokens": 64, "temperature": 0.0, "seed": 0, "chat": True}
    assert info.saved_input_example_info is not None

    model = mlflow.pyfunc.load_model(candidate)
    answers = model.predict(PROMPTS, params={"max_new_tokens": 12})
    assert answers == herds_own_answers(export, PROMPTS, 12)
    assert all(isinstance(a, str) for a in answers) and any(answers), answers
    plain = model.predict(pd.DataFrame({"prompt": ["Everyone has the right to"]}),
                          params={"max_new_tokens": 12, "chat": False})
    assert plain == herds_own_answers(export, ["Everyone has the right to"], 12, chat=False)
    sampling = {"max_new_tokens": 12, "temperature": 1.0, "seed": 3}
    assert model.predict(PROMPTS, params=sampling) == model.predict(PROMPTS, params=sampling)
    with pytest.raises(MlflowException, match="trained on 256"):
        model.predict(PROMPTS, params={"max_new_tokens": 1000})


def biased_export(folder: Path) -> Path:
    """A tiny MoE Llama 4 whose routers carry a selection bias far from zero, exported with a BPE tokenizer."""
    from herd.stages.tokenizer import TokenizerConfig
    from tasks.model import hf
    from tasks.tokenizer.train import Sample, save_for_transformers, train_tokenizer

    sample = Sample()
    sample.train["eng"] = [f"Everyone has the right to life {i}." for i in range(50)]
    bpe = train_tokenizer(sample, TokenizerConfig(vocab_size=512, num_reserved_special_tokens=8, min_frequency=1))
    model = tiny_model(bpe.get_vocab_size(with_added_tokens=True))
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("selection_bias"):
                buffer.copy_(torch.linspace(-2.0, 2.0, buffer.numel()))
    export = hf.export(model, folder)
    save_for_transformers(bpe, export)
    return export


def test_the_served_model_routes_with_the_selection_bias(tmp_path):
    """transformers' router has no selection bias: the MLflow model loads through herd's loader, which applies it."""
    import mlflow
    from safetensors.torch import load_file

    from tasks.model import hf
    from tasks.registry import serving

    folder = biased_export(tmp_path / "hf")
    loaded = mlflow.pyfunc.load_model(str(serving.save(folder, tmp_path / "model")))
    served = loaded.unwrap_python_model().model
    biases = load_file(str(folder / hf.SELECTION_BIAS))
    assert biases and all(torch.equal(served.get_buffer(name), bias) for name, bias in biases.items())
    assert [type(text) for text in loaded.predict(["life"], params={"max_new_tokens": 2})] == [str]

    (folder / hf.SELECTION_BIAS).unlink()
    with pytest.raises(FileNotFoundError, match="selection_bias"):
        mlflow.pyfunc.load_model(str(serving.save(folder, tmp_path / "model-without-bias")))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_model_generates_there_under_bf16_autocast(tmp_path):
    import mlflow

    from tasks.registry import serving

    loaded = mlflow.pyfunc.load_model(str(serving.save(biased_export(tmp_path / "hf"), tmp_path / "model")))
    generator = loaded.unwrap_python_model()
    assert next(generator.model.parameters()).device.type == "cuda" and generator.dtype == torch.bfloat16
    answers = loaded.predict(PROMPTS, params={"max_new_tokens": 8, "temperature": 1.0})
    assert len(answers) == len(PROMPTS) and all(isinstance(text, str) for text in answers)


@contextmanager
def mlflow_models_serve(model_uri: str, tracking_uri: str, workdir: Path) -> Iterator[str]:
    """``mlflow models serve --env-manager local`` on a free port, as a user starts it; yields its base URL."""
    # As from an activated virtual environment: mlflow starts the server as `uvicorn` found on the PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if shutil.which("uvicorn", path=path) is None:
        pytest.skip("mlflow models serve runs uvicorn (an mlflow dependency), which is not installed here")
    port = free_port()
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1"}
    log_path = workdir / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
            while not _answers(f"{url}/ping"):
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow models serve did not start (exit code {server.poll()}):\n"
                                f"{log_path.read_text()[-4000:]}")
                time.sleep(1)
            yield url
        finally:
            for pid in [server.pid, *descendants(server.pid)]:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            server.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_mlflow_models_serve_answers_invocations_with_generated_text(candidate, export, tmp_path):
    import mlflow

    with mlflow_models_serve(candidate, mlflow.get_tracking_uri(), tmp_path) as url:
        frame = {"dataframe_split": {"columns": ["prompt"], "data": [[p] for p in PROMPTS]},
                 "params": {"max_new_tokens": 12}}
        response = httpx.post(f"{url}/invocations", json=frame, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": herds_own_answers(export, PROMPTS, 12)}
        short = httpx.post(f"{url}/invocations", timeout=120,
                           json={"inputs": ["Everyone has the right to"], "params": {"max_new_tokens": 3}})
        assert short.status_code == 200, short.text
        assert short.json() == {"predictions": herds_own_answers(export, ["Everyone has the right to"], 3)}
        refused = httpx.post(f"{url}/invocations", timeout=120,
                             json={"inputs": ["x"], "params": {"max_new_tokens": "many"}})
        assert refused.status_code == 400 and "max_new_tokens" in refused.text
        too_long = httpx.post(f"{url}/invocations", timeout=120,
                              json={"inputs": ["x"], "params": {"max_new_tokens": 1000}})
        assert too_long.status_code == 400 and "the model was trained on 256" in too_long.json()["message"]
