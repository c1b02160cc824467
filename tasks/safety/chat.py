"""The models a safety evaluation talks to, behind one interface: :class:`ChatModel`.

    target = load_chat_model("s3://bucket/artifacts/dpo/<hash>", scratch, config)     # a herd checkpoint
    judge = load_chat_model("openai:http://localhost:8000/v1#meta-llama/Llama-3.3-70B-Instruct", scratch,
                            config, api_key_env="VLLM_API_KEY")
    answers = respond_all(target, [[{"role": "system", "content": ...}, {"role": "user", "content": ...}]])

A model spec is either

- a herd model folder, as a path, ``file://`` or ``s3://`` URI (``herd:`` in front is allowed): the
  output of a model stage (``model.safetensors``, ``model_config.json`` and the tokenizer that
  :func:`tasks.model.artifacts.write_model` puts in ``hf/``); it answers through the tokenizer
  stage's chat template and the key/value-cached sampler of :mod:`tasks.model.generate`; or
- ``openai:BASE_URL#MODEL``: any OpenAI-compatible server (vLLM, TGI, llama.cpp, a hosted API),
  ``POST BASE_URL/chat/completions`` with ``{"model": MODEL, ...}``. ``BASE_URL`` is written as the
  OpenAI client takes it, usually ending in ``/v1``. An API key, if the server wants one, is read
  from the environment variable whose *name* is given (``api_key_env``); the key itself is never
  an argument, never logged and never written anywhere.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, runtime_checkable

from herd.stages.safety import CyberSecEvalConfig

log = logging.getLogger(__name__)

OPENAI_PREFIX = "openai:"
PROGRESS_EVERY = 64  # herd models: conversations generated between two progress lines
HERD_PREFIX = "herd:"
Message = dict[str, str]


class ModelSpecError(ValueError):
    """A model spec that names nothing usable; the message says what was expected."""


class ChatError(RuntimeError):
    """A model that failed to answer one conversation (after retries)."""


@runtime_checkable
class ChatModel(Protocol):
    """Answers a conversation (``[{"role": "system"|"user"|"assistant", "content": str}, ...]``) with text.

    A model may also have ``chat_batch(conversations) -> list[str]``; :func:`respond_all` uses it.
    """

    name: str

    def chat(self, messages: list[Message]) -> str: ...


def respond_all(model: ChatModel, conversations: list[list[Message]]) -> list[str | ChatError]:
    """One answer per conversation, in order; a conversation the model failed on gives its :class:`ChatError`."""
    batch = getattr(model, "chat_batch", None)
    if batch is not None:
        return list(batch(conversations))
    answers: list[str | ChatError] = []
    for messages in conversations:
        try:
            answers.append(model.chat(messages))
        except ChatError as err:
            answers.append(err)
    return answers


class HerdChatModel:
    """A herd checkpoint answering through the tokenizer stage's chat template (Llama 4's turn format)."""

    def __init__(self, model, tokenizer, name: str, max_new_tokens: int = 256, temperature: float = 0.0,
                 seed: int = 0, batch_size: int = 16, precision: str = "auto") -> None:
        from tasks.tokenizer.special_tokens import EOT

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.eot_id = tokenizer.convert_tokens_to_ids(EOT)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self.batch_size = batch_size
        self.precision = precision

    @classmethod
    def load(cls, uri: str, scratch: Path, tokenizer_uri: str | None = None, **settings) -> HerdChatModel:
        """A model stage's output; its tokenizer from ``hf/`` beside the weights, or from a tokenizer stage's output."""
        from tasks.model.artifacts import TOKENIZER_FILES, load_model, model_files
        from tasks.problems.chat import load_tokenizer
        from tasks.runtime import storage

        tokenizer_in_model = {f"hf/{name}" for name in TOKENIZER_FILES}
        folder = storage.localize(uri, scratch / "model",
                                  lambda relative: model_files(relative) or relative in tokenizer_in_model)
        missing = [name for name in ("model.safetensors", "model_config.json") if not (folder / name).is_file()]
        if missing:
            raise ModelSpecError(f"{uri} is not a herd model folder (no {', '.join(missing)}): give a model "
                                 f"stage's output, or openai:BASE_URL#MODEL for an endpoint")
        if tokenizer_uri:
            tokenizer_folder = storage.localize(tokenizer_uri, scratch / "tokenizer",
                                                lambda relative: relative in TOKENIZER_FILES)
        else:
            tokenizer_folder = folder / "hf"
        if not (tokenizer_folder / "tokenizer_config.json").is_file():
            raise ModelSpecError(f"no tokenizer for {uri}: expected {tokenizer_folder}/tokenizer_config.json "
                                 f"(the tokenizer stage's files, with its chat template)")
        tokenizer = load_tokenizer(tokenizer_folder)
        if not tokenizer.chat_template:
            raise ModelSpecError(f"the tokenizer in {tokenizer_folder} has no chat template: use the tokenizer "
                                 f"stage's output, which carries Llama 4's")
        return cls(load_model(folder), tokenizer, uri, **settings)

    def chat(self, messages: list[Message]) -> str:
        return self.chat_batch([messages])[0]

    def chat_batch(self, conversations: list[list[Message]]) -> list[str]:
        from herd.stages.training import TrainingConfig
        from tasks.model.generate import generate
        from tasks.training.precision import placed

        prompts = [list(self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                           return_dict=True)["input_ids"])
                   for messages in conversations]
        completions: list[list[int]] = []
        step = PROGRESS_EVERY
        with placed(self.model, TrainingConfig(precision=self.precision)):
            for start in range(0, len(prompts), step):
                completions += generate(self.model, prompts[start : start + step], self.max_new_tokens,
                                        self.eot_id, self.temperature, self.seed + start, self.batch_size)
                if len(prompts) > step:
                    log.info("%s: answered %d of %d", self.name, len(completions), len(prompts))
        return [self.tokenizer.decode([t for t in ids if t != self.eot_id], skip_special_tokens=True).strip()
                for ids in completions]


class OpenAIChatModel:
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint, with retries on failures."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, max_new_tokens: int = 256,
                 temperature: float = 0.0, seed: int = 0, timeout_s: float = 120.0, retries: int = 3,
                 workers: int = 4) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ModelSpecError(f"openai: base URL must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ModelSpecError("openai: spec needs a model name after '#', e.g. openai:http://host:8000/v1#llama")
        if api_key_env and api_key_env not in os.environ:
            raise ModelSpecError(f"the API key variable {api_key_env} is not set in the environment")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"{OPENAI_PREFIX}{self.base_url}#{model}"
        self.api_key_env = api_key_env
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self.timeout_s = timeout_s
        self.retries = retries
        self.workers = workers

    def __repr__(self) -> str:
        return f"OpenAIChatModel({self.name!r}, api_key_env={self.api_key_env!r})"

    def _request(self, messages: list[Message]) -> urllib.request.Request:
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_new_tokens,
                "temperature": self.temperature, "seed": self.seed}
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        return urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                      headers=headers, method="POST")

    def chat(self, messages: list[Message]) -> str:
        url = f"{self.base_url}/chat/completions"
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0 ** (attempt - 1), 30.0))
            try:
                with urllib.request.urlopen(self._request(messages), timeout=self.timeout_s) as reply:
                    payload = json.loads(reply.read())
                content = payload["choices"][0]["message"]["content"]
                return content if isinstance(content, str) else ""
            except urllib.error.HTTPError as err:
                problem = f"HTTP {err.code}: {err.read()[:300].decode('utf-8', 'replace')}"
                if err.code < 500 and err.code not in (408, 409, 429):
                    break  # a request the server refuses will be refused again
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                problem = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
                problem = f"not a chat completion ({type(err).__name__}: {err})"
        raise ChatError(f"{url} for model {self.model}: {problem}")

    def chat_batch(self, conversations: list[list[Message]]) -> list[str | ChatError]:
        def one(messages: list[Message]) -> str | ChatError:
            try:
                return self.chat(messages)
            except ChatError as err:
                log.warning("%s", err)
                return err

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(one, conversations))


def as_judge(model: ChatModel, config: CyberSecEvalConfig) -> ChatModel:
    """The same model (weights shared) answering as a judge: greedy, at most ``judge_max_new_tokens``."""
    judge = copy.copy(model)
    if hasattr(judge, "max_new_tokens"):
        judge.max_new_tokens = config.judge_max_new_tokens
    if hasattr(judge, "temperature"):
        judge.temperature = 0.0
    return judge


def parse_openai_spec(spec: str) -> tuple[str, str]:
    """``openai:BASE_URL#MODEL`` -> ``(BASE_URL, MODEL)``."""
    base_url, sep, model = spec[len(OPENAI_PREFIX):].partition("#")
    if not sep or not base_url or not model:
        raise ModelSpecError(f"{spec!r}: expected openai:BASE_URL#MODEL, e.g. openai:http://localhost:8000/v1#llama")
    return base_url, model


def load_chat_model(spec: str, scratch: Path, config: CyberSecEvalConfig, judge: bool = False,
                    api_key_env: str | None = None, tokenizer_uri: str | None = None) -> ChatModel:
    """The model a spec names (see the module docstring), generating as ``config`` says for a target or a judge."""
    max_new_tokens = config.judge_max_new_tokens if judge else config.max_new_tokens
    # A judge answers greedily: its verdict should not depend on a draw.
    temperature = 0.0 if judge else config.temperature
    if spec.startswith(OPENAI_PREFIX):
        base_url, model = parse_openai_spec(spec)
        return OpenAIChatModel(base_url, model, api_key_env, max_new_tokens, temperature, config.seed,
                               config.request_timeout_s, config.request_retries, config.request_workers)
    if api_key_env:
        raise ModelSpecError(f"an API key variable was given for {spec!r}, which is not an openai: endpoint")
    uri = spec.removeprefix(HERD_PREFIX)
    if not uri:
        raise ModelSpecError("empty model spec: give a herd model folder or openai:BASE_URL#MODEL")
    return HerdChatModel.load(uri, scratch / ("judge" if judge else "target"), tokenizer_uri,
                              max_new_tokens=max_new_tokens, temperature=temperature, seed=config.seed,
                              batch_size=config.batch_size, precision=config.precision)
