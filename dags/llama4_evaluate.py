"""llama4_evaluate: evaluate any registered model version on demand, from the trigger form.

Params: the registered model (``herd-scout``, ``herd-maverick``, ``herd-behemoth``), a version
number or an alias (``champion``, ``candidate``), and optionally a problems output to
evaluate on (default: the one the version was post-trained with). The version's ``hf/``
folder is downloaded from the registry and evaluated on the problems' held-out set
(``herd registry evaluate``: loss, greedy pass@1 and reward per capability, with ``sft``'s
evaluation settings, which ``overrides`` can change, e.g. ``{"sft.eval_max_items": 256}``).
Results go to a nested MLflow run of this DAG run and onto the version as ``herd.eval.*``
tags. A malformed parameter is refused at trigger; a model, version or alias that is not
in the registry fails the task at once, without retries, naming what is there.
"""

from __future__ import annotations

from airflow.sdk import Param

from herd.stages.models import VARIANTS
from herd_airflow.builder import begin_task, herd_dag, overrides_param, preset_param, run_end_tasks, uri_param
from herd_airflow.registry import evaluate_task

with herd_dag(
    "llama4_evaluate",
    description="Evaluate a registered Llama 4 model version (number or alias) on the problems' held-out set",
    schedule=None,
    tags=["herd", "llama4", "evaluate"],
    doc_md=__doc__,
    default_args={"retries": 1},
    params={
        "model": Param("herd-scout", type="string", pattern=r"^[A-Za-z0-9][\w.-]{0,254}$", title="Registered model",
                       examples=[f"herd-{variant}" for variant in VARIANTS],
                       description="A registered model in the MLflow Model Registry, e.g. herd-scout."),
        "version": Param("champion", type="string", pattern=r"^([1-9][0-9]*|[A-Za-z_][\w-]{0,254})$",
                         title="Version or alias",
                         description="A version number (3) or an alias (champion, candidate)."),
        "problems": uri_param("", "Problems", "A problems output to evaluate on; empty uses the version's own."),
        "preset": preset_param(description="Evaluation settings come from this preset's sft section."),
        "overrides": overrides_param('{"sft.eval_max_items": 256}'),
    },
) as dag:
    begin = begin_task()
    evaluate = evaluate_task()
    begin >> evaluate
    run_end_tasks([evaluate], always=[begin])
