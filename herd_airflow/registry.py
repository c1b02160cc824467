"""The registry's tasks in the DAGs: promotion after a gate, a variant's champion, an evaluation.

Like :mod:`herd_airflow.factory` (which builds the operators), these only assemble ``herd``
command lines as templates; nothing here talks to MLflow at parse time.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from herd.stage import Resources, StageSpec
from herd.stages.models import VARIANTS
from herd_airflow.factory import command_task, config_arguments

OVERRIDE_PARAM = "gate_override"
# Evaluation generates with the model: one GPU on Kubernetes (the local backend ignores this).
EVALUATION = Resources(cpu="8", memory="64Gi", gpus=1, shm="8Gi")


def gate_override_param() -> Param:
    """Which variants to promote even if their gate fails, and why; refused at trigger without a reason."""
    return Param(
        {"variants": [], "reason": ""},
        type="object",
        title="Override a failed gate",
        description="Promote these variants to champion even if their gate fails. The reason, who triggered the "
                    "run and the failed figures are recorded on the model version.",
        properties={
            "variants": {"type": "array", "items": {"type": "string", "enum": list(VARIANTS)}, "uniqueItems": True},
            "reason": {"type": "string", "maxLength": 2000},
        },
        required=["variants", "reason"],
        additionalProperties=False,
        # JSON schema's conditional: a non-empty list of variants needs a real reason.
        **{"if": {"properties": {"variants": {"minItems": 1}}},
           "then": {"properties": {"reason": {"minLength": 10}}}},
    )


def promote_task(gate: StageSpec, **kwargs: Any):
    """``<variant>.promote``: champion moves to the gate's candidate if it passed, or by override."""
    arguments = [
        "registry", "promote", "--run", "{{ run_id }}",
        f"--gate={{{{ ti.xcom_pull(task_ids='{gate.id}') }}}}",
        f"--override={{{{ '{gate.variant}' in params.{OVERRIDE_PARAM}.variants }}}}",
        f"--override-reason={{{{ params.{OVERRIDE_PARAM}.reason }}}}",
        # Who decides is who triggered the run, as Airflow authenticated them; never a free-text field.
        "--override-by={{ dag_run.triggering_user_name or '' }}",
    ]
    return command_task("promote", arguments, returns_output=True, retries=1,
                        doc_md="Move the champion alias to the gate's candidate if it passed (or by override).",
                        **kwargs)


def champion_task(task_id: str, variants: tuple[str, ...], **kwargs: Any):
    """The model output of the first of ``variants`` that has a champion (XCom; empty when none)."""
    return command_task(task_id, ["registry", "champion", *variants, *config_arguments()], returns_output=True,
                        doc_md=f"The current champion of {' or '.join(variants)}, to continue from.", **kwargs)


def evaluate_task(task_id: str = "evaluate", **kwargs: Any):
    """Evaluate the registered version the run's params name."""
    arguments = ["registry", "evaluate", "--run", "{{ run_id }}", "--model", "{{ params.model }}",
                 "--version", "{{ params.version }}", "--problems={{ params.problems or '' }}", *config_arguments()]
    return command_task(task_id, arguments, EVALUATION, returns_output=True,
                        doc_md="The problems' held-out set through the registered version, per capability.", **kwargs)
