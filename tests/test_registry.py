"""The registry after the gate: champion only on a pass or an audited override, judged against today's champion;
the registered version is the model (transformers loads it); on-demand evaluation; retraining from the champion.

Same real MLflow store as test_gate (sqlite and artifacts under a shared HERD_HOME).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_gate import GOOD, _with, export, gates  # noqa: F401, F811 (fixtures shared with the gate tests)

from herd.config import ConfigError
from tasks.registry import versions
from tasks.registry.promote import promote




@pytest.fixture
def client(gates):
    from tasks.runtime import tracking

    return tracking.client()


def _champion(client, gates) -> str | None:
    found = versions.by_alias(client, gates.name, versions.CHAMPION)
    return str(found.version) if found is not None else None


WORSE = _with(GOOD, {("sft", "pruned_hard_pass1"): 0.3, ("rl", "last_pass@1"): 0.2})
BETTER = _with(GOOD, {("sft", "pruned_hard_pass1"): 0.6, ("rl", "last_pass@1"): 0.5})


def test_champion_moves_on_a_pass_and_a_failed_gate_moves_it_only_by_an_audited_override(gates, client):
    first, _ = gates.run(GOOD, run_id="week-1")
    decision = promote(client, first["output"], "week-1")
    assert decision.promoted and decision.how == "gate" and _champion(client, gates) == "1"
    tags = client.get_model_version(gates.name, "1").tags
    assert tags["herd.promotion"] == "gate" and tags["herd.replaced_champion"] == "none"
    assert "herd.override.by" not in tags
    assert promote(client, first["output"], "week-1-again").how == "already champion"

    second, _ = gates.run(WORSE, run_id="week-2")
    assert second["metrics"]["verdict"] == "fail" and _champion(client, gates) == "1"
    refused = promote(client, second["output"], "week-2")
    assert not refused.promoted and refused.how == "refused" and refused.champion == "1"
    assert refused.failed == ("sft.pruned_hard_pass1", "rl.last_pass_at_1")
    assert _champion(client, gates) == "1"
    assert versions.by_alias(client, gates.name, versions.CANDIDATE).version in (2, "2")

    with pytest.raises(ConfigError, match="reason"):
        promote(client, second["output"], "week-2", override=True, reason="  ", by="ana")
    with pytest.raises(ConfigError, match="who"):
        promote(client, second["output"], "week-2", override=True, reason="accepted for the demo", by="")
    assert _champion(client, gates) == "1"

    forced = promote(client, second["output"], "week-2-override", override=True, reason="accepted: ticket 42", by="ana")
    assert forced.promoted and forced.how == "override" and _champion(client, gates) == "2"
    audit = client.get_model_version(gates.name, "2").tags
    assert audit["herd.promotion"] == "override"
    assert audit["herd.override.by"] == "ana" and audit["herd.override.reason"] == "accepted: ticket 42"
    assert audit["herd.override.dag_run_id"] == "week-2-override" and audit["herd.override.at"]
    assert "sft.pruned_hard_pass1=0.3 (worse than the champion's 0.4 by 0.1" in audit["herd.override.failed_figures"]
    assert audit["herd.replaced_champion"] == "1"


def test_a_cached_gate_is_judged_again_against_todays_champion(gates, client):
    old, _ = gates.run(GOOD, run_id="week-1")  # judged against no champion: pass
    new, _ = gates.run(BETTER, run_id="week-3")
    assert promote(client, new["output"], "week-3").promoted and _champion(client, gates) == "2"
    # A rerun of week 1's config finds its gate output cached: promoting it would roll the champion back.
    again = promote(client, old["output"], "week-1-rerun")
    assert not again.promoted and again.verdict == "fail" and _champion(client, gates) == "2"
    assert client.get_model_version(gates.name, "1").tags["herd.gate.rejudged_against"] == "2"


def test_the_registered_version_is_the_model_with_its_tokenizer(gates, client, export, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.model.artifacts import load_model

    step, _ = gates.run(GOOD)
    version = versions.resolve(client, gates.name, "candidate")
    assert str(version.version) == step["metrics"]["model_version"]
    folder = versions.download(client, version, tmp_path / "download")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    hf_model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer("Everyone has the right to life, 12 + 3 = 15.", return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 5 and tokenizer.decode(ids[0]) == "Everyone has the right to life, 12 + 3 = 15."
    ours = load_model(export).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf_model(ids).logits, ours(ids).logits, atol=1e-4, rtol=1e-4)


def test_resolve_names_what_is_missing(gates, client):
    gates.run(GOOD)
    with pytest.raises(versions.RegistryError, match="no registered model 'nope-scout'"):
        versions.resolve(client, "nope-scout", "1")
    with pytest.raises(versions.RegistryError, match="has no version 7"):
        versions.resolve(client, gates.name, "7")
    with pytest.raises(versions.RegistryError, match=r"no alias 'champion' \(aliases: candidate\)"):
        versions.resolve(client, gates.name, "champion")


def test_evaluate_a_registered_version_by_alias(gates, client, tmp_path):
    from herd.pipeline import load_config
    from tasks.problems.item import make_problem
    from tasks.registry.evaluate import evaluate_version

    step, _ = gates.run(GOOD)
    promote(client, step["output"], "r1")
    # By default the version is evaluated on the problems it was post-trained with (its herd.input.problems tag).
    problems = Path(client.get_model_version(gates.name, "1").tags["herd.input.problems"])
    problems.mkdir(parents=True, exist_ok=True)
    items = [make_problem("arithmetic", 1, f"What is {a} + {a}?", str(2 * a), "exact", {"answer": str(2 * a)})
             for a in range(3)] + [make_problem("strings", 1, f"Repeat {w}", w, "exact", {"answer": w})
                                   for w in ("life", "liberty")]
    (problems / "eval.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in items))
    config = load_config("nano", {"sft.eval_max_items": 4, "sft.max_new_tokens": 4})
    result = evaluate_version(client, gates.name, "champion", "eval-1", config)
    assert result["version"] in (1, "1") and result["items"] == 4  # the first 4 of 5
    assert [r["capability"] for r in result["by_capability"]] == ["arithmetic", "strings"]
    assert [r["items"] for r in result["by_capability"]] == [3, 1]
    assert 0.0 <= result["pass1"] <= 1.0 and result["loss"] > 0
    run = client.get_run(result["mlflow_run"])
    assert run.data.tags["herd.registered_model"] == gates.name and run.data.metrics["eval/items"] == 4
    assert run.data.metrics["eval/arithmetic/loss"] > 0 and run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(result["mlflow_run"], "reports")} == {"reports/evaluation.csv"}
    tags = client.get_model_version(gates.name, "1").tags
    assert tags["herd.eval.items"] == "4" and tags["herd.eval.mlflow_run"] == result["mlflow_run"]
    assert tags["herd.eval.problems"] == str(problems)


def test_retraining_starts_from_the_champions_weights_and_tokenizer(gates, client, export, tmp_path):
    from conftest import tiny_model

    from tasks.model.artifacts import load_model
    from tasks.pretrain.stage import _start_from
    from tasks.registry.cli import champion_output
    from tasks.runtime.step import InputError
    from tasks.tokenizer.stage import _base_tokenizer

    config = gates.config()
    assert champion_output(client, config, ["scout"]) == ""  # no champion yet: pretraining starts from scratch
    step, report = gates.run(GOOD)
    promote(client, step["output"], "r1")
    init = champion_output(client, config, ["behemoth", "scout"])  # the first variant that has a champion
    assert init == report["inputs"]["model"]

    tokenizer = _base_tokenizer(init, tmp_path / "base")  # the tokenizer stage keeps the champion's
    assert tokenizer.get_vocab_size(with_added_tokens=True) == load_model(export).config.vocab_size
    fresh = tiny_model(tokenizer.get_vocab_size(with_added_tokens=True), seed=7)
    _start_from(fresh, init, export / "tokenizer", tmp_path / "init")
    for name, tensor in load_model(export).state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name

    other = tmp_path / "other-tokenizer"
    other.mkdir()
    raw = json.loads((export / "tokenizer" / "tokenizer.json").read_text())
    raw["added_tokens"] = raw["added_tokens"][:-1]
    (other / "tokenizer.json").write_text(json.dumps(raw))
    with pytest.raises(InputError, match="another tokenizer"):
        _start_from(fresh, init, other, tmp_path / "init2")
    with pytest.raises(InputError, match="does not fit"):
        _start_from(tiny_model(fresh.config.vocab_size, dim=64), init, export / "tokenizer", tmp_path / "init3")
