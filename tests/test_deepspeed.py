"""The DeepSpeed engine: 2 ranks under torchrun on the CPU (gloo), ZeRO-sharded, resumable from herd's safetensors,
on a local folder or S3, on the same ranks or others."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from conftest import REPO, descendants, free_port, output_of
from test_s3 import s3  # noqa: F401 - the S3 fixture (its server, s3_server, is in conftest)

pytest.importorskip("deepspeed")

STEPS = ["--set", "codistill.scheme=none",  # the student alone: no teacher cache to read
         "--set", "pretrain.steps=12", "--set", "pretrain.seq_len=64", "--set", "pretrain.batch_size=4",
         "--set", "pretrain.checkpoint_every=3", "--set", "pretrain.log_every=1", "--set", "pretrain.warmup_steps=1",
         "--set", "pretrain.engine=deepspeed"]


@pytest.fixture(scope="module")
def tokens(tokenizer_dir) -> str:
    return str(tokenizer_dir)


def torchrun(home: Path, *args: str) -> list[str]:
    """Two ranks through `herd launch`, the code path every pod of a Kubernetes gang runs."""
    return [sys.executable, "-m", "tasks.cli", "launch", "--nproc", "2", "--", *args]


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(torchrun(home, *args), capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "HERD_HOME": str(home)})
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def fetch(s3, uri: str, dest: Path) -> Path:
    """Every object under ``uri`` (``s3://herd/...``) as files under ``dest``."""
    prefix = uri.removeprefix("s3://herd/")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="herd", Prefix=f"{prefix}/"):
        for obj in page.get("Contents", []):
            target = dest / obj["Key"][len(prefix) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(s3.get_object(Bucket="herd", Key=obj["Key"])["Body"].read())
    return dest


# ZeRO-3 writes to S3, as the Kubernetes chart requires: every rank works in its own scratch folder and uploads
# its own shard. ZeRO-3 on a shared local folder resumes in tests/test_expert_parallel.py.
@pytest.mark.parametrize("zero_stage,root", [(2, "local"), (3, "s3")])
def test_two_ranks_train_and_a_killed_gang_resumes_to_the_same_weights(tokens, tmp_path, zero_stage, root, request):
    args = ["stage", "pretrain", "--variant", "scout", "--run", "ds", "--in", f"tokens={tokens}", *STEPS,
            "--set", f"pretrain.zero_stage={zero_stage}"]
    straight = Path(output_of(run(tmp_path / "straight", *args)))
    step = json.loads((straight / "step.json").read_text())
    assert step["metrics"]["final_loss"] < step["metrics"]["first_loss"]
    checkpoint = straight / "checkpoints" / "step-00000012"
    assert {p.name for p in checkpoint.iterdir()} >= {"model.safetensors", "optimizer-rank0.safetensors",
                                                      "optimizer-rank1.safetensors", "state.json", "_COMPLETE"}
    assert json.loads((checkpoint / "state.json").read_text())["world_size"] == 2

    killed_home = tmp_path / "killed"
    killed_out: str | Path = killed_home / "artifacts" / "pretrain" / "scout" / straight.name
    s3 = None
    if root == "s3":
        s3 = request.getfixturevalue("s3")
        args += ["--out", f"s3://herd/ds{zero_stage}"]
        killed_out = f"s3://herd/ds{zero_stage}/pretrain/scout/{straight.name}"
    process = subprocess.Popen(torchrun(killed_home, *args), cwd=REPO, text=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**os.environ, "HERD_HOME": str(killed_home)},
                               start_new_session=True)
    assert process.stderr is not None
    for line in process.stderr:
        if "checkpoint step-00000003" in line:
            break
    for pid in [process.pid, *descendants(process.pid)]:  # the whole gang: torchrun puts its workers in new sessions
        os.kill(pid, signal.SIGKILL)
    process.wait()
    if s3 is not None:
        # Every rank's shard reached the bucket before the marker: what a retry on other machines reads.
        first = fetch(s3, f"{killed_out}/checkpoints/step-00000003", tmp_path / "first-checkpoint")
        assert {p.name for p in first.iterdir()} >= {"model.safetensors", "optimizer-rank0.safetensors",
                                                     "optimizer-rank1.safetensors", "index.json", "state.json",
                                                     "history.json", "_COMPLETE"}
        killed_out = fetch(s3, killed_out, tmp_path / "killed-output")
    assert not (Path(killed_out) / "_SUCCESS").exists()

    retried = run(killed_home, *args)
    resumed_at = re.search(r"resuming from step-(\d+)", retried.stderr)
    assert resumed_at and 3 <= int(resumed_at.group(1)) < 12, retried.stderr[-2000:]
    if s3 is not None:
        killed_out = fetch(s3, f"s3://herd/ds{zero_stage}/pretrain/scout/{straight.name}", tmp_path / "retried-output")
    killed_out = Path(killed_out)
    expected, resumed = load_file(straight / "model.safetensors"), load_file(killed_out / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    # The reports cover the steps before the resume too: the history came back with the checkpoint.
    metrics = json.loads((killed_out / "step.json").read_text())["metrics"]
    assert (metrics["first_loss"], metrics["final_loss"]) == (step["metrics"]["first_loss"],
                                                              step["metrics"]["final_loss"])
    for report in ("tokens_by_language.csv", "expert_load.csv"):
        assert (killed_out / "reports" / report).read_text() == (straight / "reports" / report).read_text(), report


# In-process runs of the training loop over mp.spawn ranks: a tiny model on random tokens, stopped after a chosen
# checkpoint by an exception, as a killed gang stops.
VOCAB = 64
TINY_RUN = dict(steps=6, seq_len=16, batch_size=4, checkpoint_every=2, log_every=1, warmup_steps=1, engine="deepspeed",
                # Aux-loss-free balance: the balance loss is a per-rank statistic, so one rank and two would train
                # different models; the expert counts that drive the bias are summed over the ranks.
                router_balance="bias")


class RandomTokens:
    """Each step's batch a pure function of the step, its tokens in one of two languages."""

    def __init__(self, batch_size: int, seq_len: int) -> None:
        self.batch_size, self.seq_len = batch_size, seq_len

    def batch(self, step: int):
        from tasks.training.batch import Batch

        tokens = torch.randint(0, VOCAB, (self.batch_size, self.seq_len + 1),
                               generator=torch.Generator().manual_seed(step))
        return Batch(tokens, Counter({("eng", "fra")[step % 2]: tokens.numel()}))


class Stop(Exception):
    pass


def _rank(rank: int, world: int, port: int, out: str, settings: dict, stop_after: int | None, report: str,
          remote: str | None, break_at: int | None) -> None:
    """One rank of a run: train, stop after checkpoint ``stop_after`` (or at the end, writing the history to
    ``report``); with ``remote``, in a folder of its own; rank 1 loses its S3 credentials at ``break_at``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from conftest import tiny_model
    from herd.stages.training import TrainingConfig
    from tasks.runtime import storage
    from tasks.training.loop import train

    config = TrainingConfig(**{**TINY_RUN, **settings})

    def on_metrics(step: int, metrics: dict) -> None:  # before the step's checkpoint
        if stop_after is not None and step > stop_after:
            raise Stop
        if rank == 1 and step == break_at:
            import boto3

            os.environ["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
            boto3.DEFAULT_SESSION = None  # it keeps the credentials it first read
            storage._s3.cache_clear()

    folder = Path(out) / f"rank{rank}" if remote else Path(out)
    model = tiny_model(VOCAB, n_experts=4)
    try:
        history = train(model, config, RandomTokens(config.batch_size, config.seq_len), folder, on_metrics, remote)
    except Stop:
        return
    if rank == 0:
        weights = {name: tensor.tolist() for name, tensor in model.state_dict().items()}
        Path(report).write_text(json.dumps({"history": history.to_json(), "weights": weights}))


def train_ranks(world: int, out: Path, settings: dict, stop_after: int | None = None, remote: str | None = None,
                break_at: int | None = None) -> dict | None:
    report = out.parent / f"{out.name}-report.json"
    mp.spawn(_rank, args=(world, free_port(), str(out), settings, stop_after, str(report), remote, break_at),
             nprocs=world)
    return json.loads(report.read_text()) if stop_after is None else None


def test_a_resume_on_other_ranks_reshards_and_ends_where_an_uninterrupted_run_does(tmp_path):
    straight = train_ranks(1, tmp_path / "straight", {"zero_stage": 2})
    out = tmp_path / "resharded"
    # 1 rank at ZeRO-2, then 2 ranks at ZeRO-3 splitting the experts, then 1 rank at ZeRO-1.
    train_ranks(1, out, {"zero_stage": 2}, stop_after=2)
    train_ranks(2, out, {"zero_stage": 3, "expert_parallel_size": 2}, stop_after=4)
    written = json.loads((out / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert (written["world_size"], written["zero_stage"]) == (2, 3)
    resharded = train_ranks(1, out, {"zero_stage": 1})

    expected, history = straight["history"], resharded["history"]
    # Two ranks sum the gradients in another order than one: observed equal final losses, weights within 1e-6.
    assert history["losses"][-1] == pytest.approx(expected["losses"][-1], abs=1e-6)
    for name, values in straight["weights"].items():
        torch.testing.assert_close(torch.tensor(resharded["weights"][name]), torch.tensor(values), rtol=0, atol=1e-6)
    # The history came back with every checkpoint: the reports cover all six steps.
    assert history["steps"] == list(range(6)) and history["load_count"] == 6
    assert history["losses"][:2] == expected["losses"][:2]  # first_loss: the first segment's, bit for bit
    assert history["tokens_by_language"] == expected["tokens_by_language"] == {"eng": 3 * 4 * 17, "fra": 3 * 4 * 17}


def test_no_marker_until_every_rank_has_uploaded_its_shard(s3, tmp_path):
    from tasks.runtime import storage
    from tasks.training import checkpoint

    storage._s3.cache_clear()  # a client for this test's server
    remote = "s3://herd/marker"
    # Rank 1 cannot upload from step 3 on: its shard of the step-4 checkpoint never arrives and the gang dies.
    with pytest.raises(Exception):
        train_ranks(2, tmp_path / "run", {"zero_stage": 2}, remote=remote, break_at=3)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="herd", Prefix="marker/")["Contents"]}
    assert {f"marker/checkpoints/step-00000002/{name}" for name in
            ("_COMPLETE", "optimizer-rank0.safetensors", "optimizer-rank1.safetensors")} <= keys
    assert "marker/checkpoints/step-00000004/optimizer-rank0.safetensors" in keys  # rank 0 did its part
    assert "marker/checkpoints/step-00000004/_COMPLETE" not in keys
    assert checkpoint.newest(tmp_path / "fresh", remote) == "step-00000002"  # where a retry starts
