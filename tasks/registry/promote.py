"""Promotion: move a variant's ``champion`` alias to the version its gate registered, or leave it.

    herd registry promote --run r1 --gate .herd/artifacts/gate/scout/<hash>
    herd registry promote --run r1 --gate URI --override --override-reason "FRR regression accepted: ticket 42"

Runs after the gate in every DAG run, cached gate or not. The gate judged its candidate
against the champion of its own moment; when the champion has moved since (another run
promoted, or a cached gate of an older model is reused), the gate's rows are judged again
against today's champion, so an old candidate can never silently replace a newer one.

- verdict pass: ``champion`` moves; the version is tagged ``herd.promotion=gate``.
- verdict fail: ``champion`` stays, and the run says so (the task succeeds: a failed gate
  is a result). With ``--override`` it moves anyway, only if a reason and a person are
  given; the version keeps the audit trail: ``herd.override.by``, ``.reason``, ``.at``,
  ``.dag_run_id`` and ``.failed_figures`` (each failed figure, its value and why).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from herd.config import ConfigError
from tasks.registry import versions
from tasks.registry.verdict import FAIL, PASS, REPORT_JSON, Row, rejudge, verdict
from tasks.runtime import storage
from tasks.runtime.step import STEP_FILE, SUCCESS, InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    registered_model: str
    version: str
    verdict: str
    promoted: bool
    how: str  # "gate", "override", "already champion", "refused"
    champion: str | None  # the champion after this decision
    failed: tuple[str, ...] = ()

    @property
    def champion_uri(self) -> str:
        return f"models:/{self.registered_model}/{self.champion}" if self.champion else ""


def read_gate(gate_uri: str) -> tuple[dict, dict]:
    """The gate output's ``step.json`` and ``gate.json``; an incomplete gate output is refused."""
    if not storage.exists(storage.join(gate_uri, SUCCESS)):
        raise InputError(f"gate output {gate_uri} is incomplete (no {SUCCESS} marker)")
    step = json.loads(storage.read_text(storage.join(gate_uri, STEP_FILE)))
    if step.get("stage") != "gate":
        raise InputError(f"{gate_uri} is the output of stage {step.get('stage')!r}, not of a gate")
    return step, json.loads(storage.read_text(storage.join(gate_uri, REPORT_JSON)))


def _why(rows: list[dict]) -> str:
    return "; ".join(f"{r['figure']}={r['candidate']} ({r['reason']})" for r in rows if r["verdict"] == FAIL)


def promote(client, gate_uri: str, run_id: str, override: bool = False, reason: str = "",
            by: str = "") -> Decision:
    step, report = read_gate(gate_uri)
    name, version = report["registered_model"], str(step["metrics"]["model_version"])
    champion = versions.by_alias(client, name, versions.CHAMPION)
    current = str(champion.version) if champion is not None else None
    if current == version:
        log.info("promote: %s v%s is already the champion", name, version)
        return Decision(name, version, report["verdict"], False, "already champion", version)
    rows = report["rows"]
    compared = (report.get("champion") or {}).get("version")
    if current != compared:
        log.info("promote: the champion moved since the gate ran (v%s then, v%s now): judging again",
                 compared or "none", current or "none")
        rows = [row.as_dict() for row in rejudge(report, versions.figures(champion) if champion else {})]
        outcome = verdict([Row(**row) for row in rows])
        versions.set_tags(client, name, version, {"herd.gate.rejudged_against": current or "none",
                                                  "herd.gate.rejudged_verdict": outcome})
    else:
        outcome = report["verdict"]
    failures = tuple(row["figure"] for row in rows if row["verdict"] == FAIL)
    stamp = {"herd.promoted_at": versions.now(), "herd.promoted_in_run": run_id,
             "herd.replaced_champion": current or "none"}
    if outcome == PASS:
        versions.move_alias(client, name, versions.CHAMPION, version)
        versions.set_tags(client, name, version, {"herd.promotion": "gate", **stamp})
        log.info("promote: %s v%s passed its gate: champion (was %s)", name, version, current or "unset")
        return Decision(name, version, outcome, True, "gate", version)
    if not override:
        log.warning("promote: %s v%s failed its gate (%s): champion stays %s. To promote it anyway, trigger "
                    "again with an override and a reason.", name, version, _why(rows), current or "unset")
        return Decision(name, version, outcome, False, "refused", current, failures)
    if not reason.strip() or not by.strip():
        raise ConfigError("overriding a failed gate needs a reason and the name of who decides "
                          "(--override-reason, --override-by)")
    audit = {
        "herd.promotion": "override",
        "herd.override.by": by.strip(),
        "herd.override.reason": reason.strip(),
        "herd.override.at": versions.now(),
        "herd.override.dag_run_id": run_id,
        "herd.override.failed_figures": _why(rows),
    }
    # The audit trail goes on before the alias moves: a champion by override never lacks it.
    versions.set_tags(client, name, version, {**audit, **stamp})
    versions.move_alias(client, name, versions.CHAMPION, version)
    log.warning("promote: %s v%s failed its gate (%s) and is champion by override of %s: %s", name, version,
                ", ".join(failures), by, reason)
    return Decision(name, version, outcome, True, "override", version, failures)
