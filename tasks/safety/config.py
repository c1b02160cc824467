"""Settings of a CyberSecEval run: how the target and the judge generate, and how many cases run.

A typed, frozen config like every stage's (unknown keys refused), so the ``safety`` stage can
nest it in its own config as it is.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from herd.config import StageConfig, operational


class CyberSecEvalConfig(StageConfig):
    limit: int = Field(0, ge=0, description="Test cases per benchmark, spread evenly over the file (0: all), "
                                            "as PurpleLlama's --num-test-cases picks them.")
    max_new_tokens: int = Field(256, ge=1, description="Longest answer of the model under test.")
    temperature: float = Field(0.0, ge=0, description="0: greedy, as PurpleLlama queries its models.")
    judge_max_new_tokens: int = Field(64, ge=1, description="Longest answer of the judge.")
    seed: int = 0
    frr_judge: bool = Field(False, description="mitre-frr: also ask the judge whether each answer refuses "
                                               "(reported beside the keyword detector's rate, never instead).")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="herd models: bf16 on a GPU, "
                                                                           "fp32 on the CPU.")
    batch_size: int = operational(16, "herd models: prompts of one length generated together.")
    request_workers: int = operational(4, "OpenAI-compatible endpoints: requests in flight at once.")
    request_timeout_s: float = operational(120.0, "OpenAI-compatible endpoints: seconds per request.")
    request_retries: int = operational(3, "OpenAI-compatible endpoints: retries after a failed request.")
    icd_workers: int = operational(2, "Insecure Code Detector scans (semgrep processes) at once.")
