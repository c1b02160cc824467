"""The step contract: outputs, then step.json, then the marker; skip when complete; never read a partial output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from herd.pipeline import STAGES
from conftest import REPO, herd, output_of


def test_marker_last_skip_and_force(udhr_subset, herd_home):
    args = ("stage", "datamix", "--run", "first", "--in", f"corpus={udhr_subset}")
    out = Path(output_of(herd(*args)))
    step = json.loads((out / "step.json").read_text())
    for key in ("inputs", "input_hashes", "config", "version", "output_hash", "code_version", "host",
                "started_at", "finished_at", "metrics", "mlflow_run_id"):
        assert key in step, key
    assert out.name == step["output_hash"] and out.parent.name == "datamix"
    marker_time = (out / "_SUCCESS").stat().st_mtime_ns
    newest_output = max(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "_SUCCESS")
    assert marker_time >= newest_output

    again = herd("stage", "datamix", "--run", "second", "--in", f"corpus={udhr_subset}")
    assert output_of(again) == str(out)
    assert "skipping" in again.stderr
    assert json.loads((out / "step.json").read_text())["run_id"] == "first"

    forced = herd(*args[:3], "third", *args[4:], "--force")
    assert output_of(forced) == str(out)
    assert json.loads((out / "step.json").read_text())["run_id"] == "third"


def test_reuse_only_needs_a_complete_output(udhr_subset, herd_home):
    result = herd("stage", "datamix", "--run", "r", "--in", f"corpus={udhr_subset}", "--reuse-only=true", check=False)
    assert result.returncode == 2 and "not selected and has no complete output" in result.stderr
    skipped = herd("stage", "datamix", "--run", "r", "--in", f"corpus={udhr_subset}", "--reuse-only=true",
                   "--skip-if-missing", check=False)
    assert skipped.returncode == 99 and "no selected stage needs it: skipped" in skipped.stderr
    assert "HERD_OUTPUT=" not in skipped.stdout
    herd("stage", "datamix", "--run", "r", "--in", f"corpus={udhr_subset}")
    assert herd("stage", "datamix", "--run", "r2", "--in", f"corpus={udhr_subset}", "--reuse-only=true").returncode == 0


def test_killed_stage_leaves_nothing_a_later_stage_reads(udhr_jsonl, herd_home):
    command = [sys.executable, "-m", "tasks.cli", "stage", "datamix", "--run", "killed", "--in", f"corpus={udhr_jsonl}"]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               env=os.environ.copy(), start_new_session=True)
    assert process.stderr is not None
    for line in process.stderr:
        if "datamix: reading" in line:
            break
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    folders = list((herd_home / "artifacts" / "datamix").iterdir())
    assert len(folders) == 1 and not (folders[0] / "_SUCCESS").exists()

    refused = herd("stage", "tokenizer", "--run", "next", "--in", f"mix={folders[0]}", check=False)
    assert refused.returncode == 2 and "incomplete" in refused.stderr

    retried = Path(output_of(herd(*command[3:])))
    assert retried == folders[0] and (retried / "_SUCCESS").exists()
    step = json.loads((retried / "step.json").read_text())
    assert step["metrics"]["languages_in_mix"] >= 200  # the nano mix of the whole UDHR corpus
    manifest = json.loads((retried / "manifest.json").read_text())
    assert sum(1 for s in manifest["shards"] for _ in (retried / s["path"]).open()) == sum(
        s["docs"] for s in manifest["shards"])


def test_plan_explains_what_changed(udhr_subset, herd_home):
    corpus = f"corpus={udhr_subset}"
    fresh = herd("plan", "--in", corpus).stdout
    assert "never run" in fresh
    mix = output_of(herd("stage", "datamix", "--run", "p", "--in", corpus))
    herd("stage", "tokenizer", "--run", "p", "--in", f"mix={mix}")
    planned = json.loads(herd("plan", "--in", corpus, "--json").stdout)
    assert [p["stage"] for p in planned] == [spec.id for spec in STAGES]
    assert [p["stage"] for p in planned if p["complete"]] == ["datamix", "tokenizer"]

    changed = herd("plan", "--in", corpus, "--set", "datamix.min_chars=60", "--set", "datamix.workers=1").stdout
    lines = changed.splitlines()
    assert lines[0].split()[:2] == ["datamix", "run"] and "datamix.min_chars: 40 -> 60" in lines[1]
    assert "workers" not in changed  # operational: not a reason to rerun
    assert lines[2].split()[:2] == ["tokenizer", "run"] and "input mix changed" in lines[3]

    vocab = herd("plan", "--in", corpus, "--set", "tokenizer.vocab_size=1024").stdout.splitlines()
    assert vocab[0].split()[:2] == ["datamix", "skip"]
    assert "tokenizer.vocab_size: 8192 -> 1024" in vocab[3]

    dry = herd("stage", "datamix", "--run", "d", "--in", corpus, "--set", "datamix.min_chars=60", "--dry-run").stdout
    assert "datamix.min_chars: 40 -> 60" in dry
    assert len(list((herd_home / "artifacts" / "datamix").iterdir())) == 1  # the dry run wrote nothing
