"""A registry version as an MLflow model: prompts in, generated text out, through herd's own loader.

    model = mlflow.pyfunc.load_model("models:/herd-scout@champion")
    model.predict(["What is 12 + 3?"], params={"max_new_tokens": 32, "temperature": 0.0})   # ["15"]
    mlflow models serve -m models:/herd-scout@champion --env-manager local -p 5001        # POST /invocations

Each version is a pyfunc model whose only artifact is the model's ``hf/`` folder (weights,
``selection_bias.safetensors``, config, tokenizer with its chat template). Its Python model is
:class:`TextGenerator`, given to MLflow as code (``pyfunc_model.py``, MLflow's "models from
code"): nothing is pickled, and loading runs herd's installed code, so the environment that
serves needs herd (its image, or ``pip install -e .``) and ``--env-manager local``.

Loading goes through :func:`tasks.model.hf.load`, not stock ``transformers``: transformers'
Llama 4 router has no place for the aux-loss-free selection bias, so it would route a trained
MoE differently from the model the gate judged; herd's loader applies the bias and refuses a
MoE export that lacks it. Generation is :func:`tasks.model.generate.generate` (key/value
cache, greedy at temperature 0) under the autocast herd evaluates with (bf16 on a GPU, fp32
on the CPU), so a served answer is what ``herd registry evaluate`` generates.

The signature: one string column, the prompts (a list of strings, or a frame of one
column); params ``max_new_tokens``, ``temperature``, ``seed`` and ``chat`` (true: the prompt
is a user turn in the tokenizer's chat template and the answer ends at ``<|eot|>``; false:
plain continuation after ``<|begin_of_text|>``, ending at the model's end-of-text token);
out, one string per prompt.
"""

from __future__ import annotations

import json
import logging
import tempfile
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow

log = logging.getLogger(__name__)

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
HF = "hf"  # the artifact's key in the MLmodel, and its folder under ``artifacts/``
DEFAULTS: dict[str, Any] = {"max_new_tokens": 64, "temperature": 0.0, "seed": 0, "chat": True}
EXAMPLE_PROMPT = "What is 12 + 3?"
# What the model's own code imports; mlflow would otherwise infer this by loading the model in a
# subprocess, which for a Scout means reading every weight once more at registration.
REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "pydantic", "mlflow")


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    types = {bool: DataType.boolean, int: DataType.long, float: DataType.double}
    params = ParamSchema([ParamSpec(name, types[type(default)], default) for name, default in DEFAULTS.items()])
    # Unnamed, as MLflow's own text generators: a plain list of prompts ({"inputs": [...]}) is accepted; a
    # named column would turn {"prompt": [...]} into one row holding a list.
    return ModelSignature(inputs=Schema([ColSpec(DataType.string)]),
                          outputs=Schema([ColSpec(DataType.string)]), params=params)


def input_example():
    return [EXAMPLE_PROMPT], {"max_new_tokens": 16}


def pip_requirements() -> list[str]:
    return [f"{name}=={installed_version(name)}" for name in REQUIREMENTS]


def save(hf_dir: Path, path: Path, mlflow_model=None) -> Path:
    """The MLflow model folder for the ``hf/`` folder ``hf_dir`` (which it copies) at ``path``."""
    mlflow.pyfunc.save_model(
        str(path), python_model=str(MODEL_CODE), artifacts={HF: str(hf_dir)}, signature=signature(),
        input_example=input_example(), pip_requirements=pip_requirements(), mlflow_model=mlflow_model,
        metadata={"herd.loader": "tasks.model.hf.load"},
    )
    return path


def log_model(client, run_id: str, hf_dir: Path, name: str, tags: dict[str, str]):
    """``hf_dir`` as an MLflow logged model (``models:/<model_id>``), an output of run ``run_id``.

    Done with the client rather than ``mlflow.pyfunc.log_model``: that one needs the run to be
    the process's active run, and with an input example it loads the model to try it, which for
    a large model means reading every weight again in the gate's process.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    run = client.get_run(run_id)
    logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id, tags=tags,
                                        model_type="llama4")
    try:
        with tempfile.TemporaryDirectory(prefix="herd-mlflow-model-") as tmp:
            metadata = Model(artifact_path=logged.artifact_location, run_id=run_id, model_id=logged.model_id,
                             model_uuid=logged.model_id)
            folder = save(hf_dir, Path(tmp) / "model", metadata)
            client.log_model_artifacts(logged.model_id, str(folder))
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return logged


def hf_folder(model_dir: Path) -> Path:
    """The ``hf/`` folder of a downloaded version: inside an MLflow model, or the version itself (registered
    before versions were MLflow models)."""
    if (model_dir / "config.json").is_file():
        return model_dir
    return model_dir / "artifacts" / HF


class TextGenerator(mlflow.pyfunc.PythonModel):
    """herd's Llama 4 behind pyfunc's ``predict``: one generated text per prompt."""

    def load_context(self, context) -> None:
        import torch

        from tasks.model import hf
        from tasks.problems.chat import load_tokenizer
        from tasks.tokenizer.special_tokens import BEGIN_OF_TEXT, EOT

        folder = Path(context.artifacts[HF])
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = hf.load(folder).eval().to(self.device)
        self.tokenizer = load_tokenizer(folder)
        self.bos_id = self.tokenizer.convert_tokens_to_ids(BEGIN_OF_TEXT)
        self.eot_id = self.tokenizer.convert_tokens_to_ids(EOT)
        config = json.loads((folder / "config.json").read_text())
        eos = config.get("eos_token_id")
        self.end_of_text_id = self.eot_id if eos is None else eos
        log.info("serving %s on %s (%s)", folder, self.device, self.dtype)

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
        import torch
        from mlflow.exceptions import MlflowException

        from tasks.model.generate import generate

        # MlflowException's invalid-parameter error is what the scoring server answers with 400 and this message.
        settings = {**DEFAULTS, **(params or {})}
        max_new_tokens, temperature = int(settings["max_new_tokens"]), float(settings["temperature"])
        if max_new_tokens < 1 or temperature < 0:
            raise MlflowException.invalid_parameter_value(
                f"max_new_tokens must be at least 1 and temperature at least 0, got {max_new_tokens} and {temperature}")
        chat = bool(settings["chat"])
        prompts = [self._encode(text, chat) for text in _prompts(model_input)]
        longest = max((len(ids) for ids in prompts), default=0) + max_new_tokens
        if longest > self.model.config.max_seq_len:
            raise MlflowException.invalid_parameter_value(
                f"a prompt and its {max_new_tokens} new tokens take {longest} positions; "
                f"the model was trained on {self.model.config.max_seq_len}")
        stop = self.eot_id if chat else self.end_of_text_id
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            completions = generate(self.model, prompts, max_new_tokens, stop, temperature, int(settings["seed"]))
        return [self.tokenizer.decode([t for t in ids if t != stop], skip_special_tokens=True).strip()
                for ids in completions]

    def _encode(self, text: str, chat: bool) -> list[int]:
        if chat:
            turns = [{"role": "user", "content": text}]
            return list(self.tokenizer.apply_chat_template(turns, tokenize=True, add_generation_prompt=True,
                                                           return_dict=True)["input_ids"])
        return [self.bos_id, *self.tokenizer(text, add_special_tokens=False)["input_ids"]]


def _prompts(model_input) -> list[str]:
    """The prompts of what pyfunc hands ``predict``: a frame of one column (what the signature makes of the
    request), a list, or one string."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        return [str(text) for text in model_input.iloc[:, 0]]
    if isinstance(model_input, str):
        return [model_input]
    return [str(text) for text in model_input]
