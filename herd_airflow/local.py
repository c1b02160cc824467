"""The embedded backend: a stage runs as ``python -m tasks.cli ...`` beside the Airflow worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from herd.stage import BAD_INPUT_EXIT, OUTPUT_LINE_PREFIX, SKIP_EXIT


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
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
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
