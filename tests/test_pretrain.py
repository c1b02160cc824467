"""Pretraining on the tokenizer's shards: the loss falls, the export loads, and a killed run resumes bit for bit."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, herd, output_of
from herd.pipeline import load_config
from tasks.training.data import TokenWindows
from tasks.training.optim import lr_factor

TINY = ["--set", "pretrain.seq_len=64", "--set", "pretrain.batch_size=2", "--set", "pretrain.steps=12",
        "--set", "pretrain.checkpoint_every=4", "--set", "pretrain.log_every=2", "--set", "pretrain.warmup_steps=2"]

# A student pretrained alone, without the teacher's cache: plain next-token loss.
LABELS_ONLY = ["--set", "codistill.scheme=none"]


@pytest.fixture(scope="module")
def tokens(tokenizer_dir) -> str:
    return str(tokenizer_dir)


def test_loss_falls_and_the_export_loads_in_transformers(tokens, herd_home):
    out = Path(output_of(herd("stage", "pretrain", "--variant", "scout", "--run", "p", "--in", f"tokens={tokens}",
                              *TINY, *LABELS_ONLY)))
    metrics = json.loads((out / "step.json").read_text())["metrics"]
    assert metrics["final_loss"] < metrics["first_loss"] - 0.3
    assert metrics["languages_seen"] >= 5
    from transformers import Llama4ForCausalLM, PreTrainedTokenizerFast

    model = Llama4ForCausalLM.from_pretrained(out / "hf")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(out / "hf")
    ids = tokenizer("All human beings are born free", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))
    for report in ("tokens_by_language.csv", "expert_load.csv"):
        assert (out / "reports" / report).exists()


def test_killed_run_resumes_to_the_same_weights(tokens, tmp_path):
    args = ["stage", "pretrain", "--variant", "maverick", "--run", "k", "--in", f"tokens={tokens}", *TINY, *LABELS_ONLY]
    straight = Path(output_of(herd(*args, env={"HERD_HOME": str(tmp_path / "straight")})))

    env = {**os.environ, "HERD_HOME": str(tmp_path / "killed")}
    process = subprocess.Popen([sys.executable, "-m", "tasks.cli", *args], cwd=REPO, env=env, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    assert process.stderr is not None
    for line in process.stderr:
        if "checkpoint step-00000004" in line:
            break
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_out = tmp_path / "killed" / "artifacts" / "pretrain" / "maverick" / straight.name
    assert not (killed_out / "_SUCCESS").exists() and (killed_out / "checkpoints").exists()

    retried = herd(*args, env={"HERD_HOME": str(tmp_path / "killed")})
    assert "resuming from step-0000000" in retried.stderr
    expected, resumed = load_file(straight / "model.safetensors"), load_file(killed_out / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    # The reports cover the steps before the resume too: the history came back with the checkpoint.
    first, again = (json.loads((out / "step.json").read_text())["metrics"] for out in (straight, killed_out))
    assert (again["first_loss"], again["final_loss"], again["languages_seen"]) == (
        first["first_loss"], first["final_loss"], first["languages_seen"])
    for report in ("tokens_by_language.csv", "expert_load.csv"):
        assert (killed_out / "reports" / report).read_text() == (straight / "reports" / report).read_text(), report


def test_windows_are_a_function_of_the_step(tokens):
    windows = TokenWindows(Path(tokens) / "tokens", seq_len=32, batch_size=3, seed=7)
    first, languages = windows.batch(5)[:2]
    again = TokenWindows(Path(tokens) / "tokens", seq_len=32, batch_size=3, seed=7).batch(5).tokens
    assert torch.equal(first, again) and first.shape == (3, 33)
    assert sum(languages.values()) == 3 * 33
    assert not torch.equal(first, windows.batch(6).tokens)


def test_schedules():
    cosine = load_config("nano", {"pretrain.steps": 100, "pretrain.warmup_steps": 10}).pretrain
    assert lr_factor(0, cosine) == pytest.approx(0.1) and lr_factor(9, cosine) == 1.0
    assert lr_factor(99, cosine) == pytest.approx(0.1, abs=0.01)
    wsd = load_config("nano", {"pretrain.steps": 100, "pretrain.warmup_steps": 10, "pretrain.schedule": "wsd",
                               "pretrain.decay_fraction": 0.2}).pretrain
    assert lr_factor(50, wsd) == 1.0 and lr_factor(79, wsd) == 1.0
    assert lr_factor(99, wsd) == pytest.approx(0.1)


def test_aux_loss_free_balancing_moves_the_selection_bias_and_warns_on_export(tokens, tmp_path):
    from herd.model import nano
    from tasks.model import hf
    from tasks.training.loop import new_model, train

    index = json.loads((Path(tokens) / "tokens" / "index.json").read_text())
    config = load_config("nano", {"pretrain.router_balance": "bias", "pretrain.steps": 3, "pretrain.seq_len": 32,
                                  "pretrain.batch_size": 2, "pretrain.checkpoint_every": 100}).pretrain
    model = new_model(nano().model_copy(update={"vocab_size": index["vocab_size"]}), config)
    train(model, config, TokenWindows(Path(tokens) / "tokens", 32, 2, 0), tmp_path, lambda step, metrics: None)
    biases = [block.moe.selection_bias for block in model.layers if block.moe is not None]
    assert all(b.abs().sum() > 0 for b in biases)
    exported = json.loads((hf.export(model, tmp_path / "hf") / "config.json").read_text())
    assert "selection bias" in exported["herd_warning"]


class _RandomTokens:
    def batch(self, step: int):
        from collections import Counter

        from tasks.training.batch import Batch

        return Batch(torch.randint(0, 512, (2, 33), generator=torch.Generator().manual_seed(step)), Counter())


@pytest.mark.parametrize("over_capacity, logged", [("drop", "router/dropped_tokens"),
                                                   ("keep", "router/over_capacity_tokens")])
def test_rows_past_the_expert_capacity_are_counted_in_every_logged_step(over_capacity, logged, tmp_path):
    from herd.model import nano
    from tasks.training.loop import new_model, train

    config = load_config("nano", {"pretrain.steps": 2, "pretrain.seq_len": 32, "pretrain.batch_size": 2,
                                  "pretrain.log_every": 1, "pretrain.checkpoint_every": 100}).pretrain
    # 128 rows a layer (64 tokens, top 2) for 4 experts that take 16 each: at least 64 over, in each of 4 layers.
    model_config = nano().model_copy(update={"vocab_size": 512, "top_k": 2, "capacity_factor": 0.5,
                                             "over_capacity": over_capacity})
    steps: dict[int, dict] = {}
    history = train(new_model(model_config, config), config, _RandomTokens(), tmp_path,
                    lambda step, metrics: steps.update({step: metrics}))
    assert sorted(steps) == [1, 2] and all(torch.isfinite(torch.tensor(history.losses)))
    other = ({"router/dropped_tokens", "router/over_capacity_tokens"} - {logged}).pop()
    for metrics in steps.values():
        assert 4 * 64 <= metrics[logged] <= 4 * 128 and other not in metrics


def test_mup_scales_hidden_and_output_learning_rates_and_inits_with_width():
    from herd.model import nano
    from tasks.model.llama4 import Llama4
    from tasks.training.optim import param_groups, width_mult

    config = load_config("nano", {"pretrain.mup_base_dim": 128, "pretrain.lr": 0.01}).pretrain
    wide = nano().model_copy(update={"dim": 512, "vocab_size": 300})
    mult = width_mult(wide, config)
    # Only the model width grew: the attention, expert and dense FFN widths are the proxy's.
    assert mult == {"hidden": 4.0, "output": 4.0, "hidden_attention": 1.0, "hidden_ffn": 1.0, "hidden_dense_ffn": 1.0}
    groups = {g["name"]: g for g in param_groups(Llama4(wide), config, mult)}
    assert groups["embedding"]["lr"] == 0.01 and groups["norms"]["lr"] == 0.01
    assert groups["hidden"]["lr"] == groups["output"]["lr"] == 0.0025
    assert groups["norms"]["weight_decay"] == 0.0

    torch.manual_seed(0)
    model = Llama4(wide)
    model.init_weights(std=0.02, width_mult=mult)
    assert model.tok_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.layers[0].attention.wq.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert model.output.weight.std().item() == pytest.approx(0.005, rel=0.05)


def test_mup_scales_each_hidden_matrix_by_the_growth_of_its_own_fan_in():
    from herd.model import nano_maverick
    from tasks.model.llama4 import Llama4
    from tasks.training.optim import param_groups, width_mult

    # The proxy: width 128, 2 heads of 64, experts 256 wide, dense FFN 512; the model: all four 4x wider but heads 2x.
    config = load_config("nano", {"pretrain.mup_base_dim": 128, "pretrain.mup_base_attention_dim": 128,
                                  "pretrain.mup_base_ffn_dim": 256, "pretrain.mup_base_dense_ffn_dim": 512,
                                  "pretrain.lr": 0.01}).pretrain
    wide = nano_maverick().model_copy(update={"dim": 512, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 1024,
                                              "dense_ffn_dim": 2048, "vocab_size": 300})
    mult = width_mult(wide, config)
    assert mult == {"hidden": 4.0, "output": 4.0, "hidden_attention": 2.0, "hidden_ffn": 4.0, "hidden_dense_ffn": 4.0}
    model = Llama4(wide)
    lr_of = {id(p): g["lr"] for g in param_groups(model, config, mult) for p in g["params"]}
    moe, dense = model.layers[1], model.layers[0]
    assert moe.moe is not None and dense.feed_forward is not None
    assert lr_of[id(moe.attention.wq.weight)] == lr_of[id(moe.moe.experts.gate_up)] == 0.0025
    assert lr_of[id(moe.attention.wo.weight)] == 0.005  # fan-in H*Dh, 2x the proxy's
    assert lr_of[id(moe.moe.experts.down)] == lr_of[id(moe.moe.shared.w2.weight)] == 0.0025  # fan-in F
    assert lr_of[id(dense.feed_forward.w2.weight)] == 0.0025

    torch.manual_seed(0)
    model.init_weights(std=0.02, width_mult=mult)
    assert moe.attention.wo.weight.std().item() == pytest.approx(0.02 / 2**0.5, rel=0.05)
    assert moe.moe.experts.down.std().item() == pytest.approx(0.01, rel=0.05)

    with pytest.raises(ValueError, match="mup_base_ffn_dim"):
        load_config("nano", {"pretrain.mup_base_ffn_dim": 256})  # a proxy without its width


def test_students_codistil_from_the_teachers_cache_and_a_short_cache_is_refused(tokens, herd_home):
    teacher = output_of(herd("stage", "pretrain", "--variant", "behemoth", "--run", "cd", "--in", f"tokens={tokens}",
                             *TINY))
    cache = Path(output_of(herd("stage", "codistill", "--run", "cd", "--in", f"teacher={teacher}",
                                "--in", f"tokens={tokens}", "--set", "codistill.top_k=16", *TINY)))
    index = json.loads((cache / "cache" / "index.json").read_text())
    # Exactly the windows the students' 12 steps of 2 rows read, keyed by window.
    assert index["coverage"] == {"steps": 12, "batch_size": 2, "seed": 0}
    assert index["windows"] == 24 and index["top_k"] == 16 and index["teacher"] == Path(teacher).name
    assert 0 < index["top_k_mass_mean"] <= 1

    student_args = ["stage", "pretrain", "--variant", "scout", "--run", "cd", "--in", f"tokens={tokens}",
                    "--in", f"teacher_cache={cache}", "--set", "codistill.top_k=16", *TINY]
    student = Path(output_of(herd(*student_args)))
    step = json.loads((student / "step.json").read_text())
    assert step["metrics"]["codistill"] == "dynamic/cache"
    assert step["version"]["config"]["codistill.scheme"] == "dynamic"
    # Its loss is the next-token loss, as the teacher's; the mix it minimised is logged apart.
    from tasks.runtime import tracking

    logged = tracking.client().get_run(step["mlflow_run_id"]).data.metrics
    assert logged["loss"] == pytest.approx(logged["codistill/ce"])
    assert logged["loss"] == pytest.approx(step["metrics"]["final_loss"], abs=1e-4)
    assert logged["objective"] == pytest.approx(step["metrics"]["final_objective"], abs=1e-4)
    assert abs(logged["objective"] - logged["loss"]) > 1e-3
    with open(student / "reports" / "codistill_weights.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(0 <= float(row["p50"]) <= 1 for row in rows)

    # A cache built for 12 steps cannot serve a 20-step run: refused before training.
    longer = herd(*student_args, "--set", "pretrain.steps=20", check=False)
    assert longer.returncode != 0 and "the teacher cache lacks" in longer.stderr
    trained = {path.parents[1] for path in (student.parent).glob("*/checkpoints/step-*")}
    assert trained == {student}
    # A student without the cache is told what to give.
    alone = herd("stage", "pretrain", "--variant", "maverick", "--run", "cd", "--in", f"tokens={tokens}", *TINY,
                 check=False)
    assert alone.returncode != 0 and "--in teacher_cache=URI" in alone.stderr
