"""The embedded backend: a stage runs as ``python -m tasks.cli ...`` beside the Airflow worker.

The worker's environment holds Airflow's own secrets (the metadata database URI, the Fernet
key, the JWT and API secrets, connections): a stage process gets only the variables a stage
reads, by an allow-list, plus any names ``HERD_STAGE_ENV`` lists (comma-separated, e.g. the
variable a safety judge's API key is in).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from herd.stage import BAD_INPUT_EXIT, OUTPUT_LINE_PREFIX, SKIP_EXIT

# herd's settings, storage and tracking, then the accelerator, threading and library caches.
STAGE_ENV_PREFIXES = ("HERD_", "MLFLOW_", "AWS_", "CUDA_", "NCCL_", "NVIDIA_", "TORCH", "PYTORCH_", "OMP_",
                      "MKL_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "TRITON_", "DS_", "LC_")
# The process basics: where programs, Python packages, home and temporary files are, locale,
# time zone, proxies and CA bundles.
STAGE_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH", "PYTHONHASHSEED",
    "VIRTUAL_ENV", "MPLCONFIGDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "npm_config_cache",
})


def stage_environment(environ: dict[str, str]) -> dict[str, str]:
    """What a stage process may see of the worker's environment ``environ``."""
    extra = {name.strip() for name in environ.get("HERD_STAGE_ENV", "").split(",") if name.strip()}
    kept = {name: value for name, value in environ.items()
            if name in STAGE_ENV_NAMES or name in extra or name.startswith(STAGE_ENV_PREFIXES)}
    return {**kept, "PYTHONUNBUFFERED": "1"}


class LocalStageOperator(BaseOperator):
    """Runs one herd command as a subprocess, streams its log, and returns the output URI (the XCom)."""

    template_fields = ("arguments",)
    ui_color = "#e8f0fe"

    def __init__(self, *, arguments: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arguments = arguments
        self._process: subprocess.Popen | None = None

    def execute(self, context: Any) -> str | None:
        command = [sys.executable, "-m", "tasks.cli", *self.arguments]
        self.log.info("running %s", " ".join(command))
        env = stage_environment(dict(os.environ))
        output = None
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        assert self._process.stdout is not None
        for line in self._process.stdout:
            line = line.rstrip("\n")
            if line.startswith(OUTPUT_LINE_PREFIX):
                output = line[len(OUTPUT_LINE_PREFIX):]
            self.log.info("%s", line)
        code = self._process.wait()
        if code == SKIP_EXIT:
            raise AirflowSkipException(f"{self.task_id}: not selected, nothing cached, and no selected stage needs it")
        if code == BAD_INPUT_EXIT:
            raise AirflowFailException(f"{self.task_id}: refused its config or input (exit {code}); see the log above")
        if code != 0:
            raise RuntimeError(f"{self.task_id}: stage process failed with exit code {code}")
        return output

    def on_kill(self) -> None:
        if self._process and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
