"""llama4_pipeline: the Llama 4 recipe, one task per stage, triggered from the form in the UI.

Model stages run once per variant, each variant in its own task group: ``behemoth.pretrain``,
``scout.pretrain`` -> ``scout.midtrain``, ``maverick.pretrain`` -> ``maverick.midtrain``.

Each variant ends in its ``gate`` (figures against thresholds and the champion; the model is
registered in MLflow as ``candidate``) and ``promote`` (the ``champion`` alias moves if the gate
passed, or if the ``gate_override`` parameter names the variant, with a reason).

Each task runs ``herd stage NAME`` locally or as a Kubernetes pod (``HERD_BACKEND``). A stage
whose output for the same inputs, config and code exists is skipped by the stage itself;
a stage left out of ``stages`` only reuses such an output. Every run has a parent MLflow
run; each stage logs a nested one. Only output URIs cross XCom.
"""

from __future__ import annotations

from herd_airflow.builder import begin_task, herd_dag, recipe_params, recipe_tasks, run_end_tasks

with herd_dag(
    "llama4_pipeline",
    description="Llama 4 recipe: data mix, tokenizer, and the stages that follow",
    schedule=None,
    max_active_runs=1,
    tags=["herd", "llama4"],
    doc_md=__doc__,
    params=recipe_params(overrides_example='{"datamix.min_chars": 60}'),
) as dag:
    begin = begin_task()
    run_end_tasks(recipe_tasks(begin), always=[begin])
