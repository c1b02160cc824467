"""The S3 path against a real S3 server on loopback (rclone serve s3), through boto3."""

from __future__ import annotations

import json

import pytest

from conftest import herd, output_of


@pytest.fixture()
def s3(s3_server, monkeypatch):
    import boto3
    from botocore.config import Config

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    return boto3.client("s3", config=Config(signature_version="s3v4"))


def test_stages_read_and_write_s3(s3, s3_server, udhr_subset, herd_home):
    lines = udhr_subset.read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    s3.put_object(Bucket="herd", Key="raw/a.jsonl", Body=b"".join(lines[:half]))
    s3.put_object(Bucket="herd", Key="raw/b.jsonl", Body=b"".join(lines[half:]))
    s3.put_object(Bucket="herd", Key="raw2/decoy.jsonl", Body=lines[0])  # a sibling prefix, not part of raw/

    root = "s3://herd/artifacts"
    mix = output_of(herd("stage", "datamix", "--run", "s3", "--in", "corpus=s3://herd/raw", "--out", root,
                         env=s3_server))
    assert mix.startswith("s3://herd/artifacts/datamix/")
    prefix = mix.removeprefix("s3://herd/")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="herd", Prefix=prefix)["Contents"]}
    assert {f"{prefix}/_SUCCESS", f"{prefix}/step.json", f"{prefix}/manifest.json",
            f"{prefix}/reports/languages.csv"} <= keys
    step = json.loads(s3.get_object(Bucket="herd", Key=f"{prefix}/step.json")["Body"].read())
    assert step["metrics"]["docs_in"] == len(lines)

    tok = output_of(herd("stage", "tokenizer", "--run", "s3", "--in", f"mix={mix}", "--out", root,
                         "--set", "tokenizer.vocab_size=1024", env=s3_server))
    tok_prefix = tok.removeprefix("s3://herd/")
    s3.head_object(Bucket="herd", Key=f"{tok_prefix}/tokenizer.json")
    s3.head_object(Bucket="herd", Key=f"{tok_prefix}/tokens/index.json")
    s3.head_object(Bucket="herd", Key=f"{tok_prefix}/_SUCCESS")

    pre = output_of(herd("stage", "pretrain", "--variant", "scout", "--run", "s3", "--in", f"tokens={tok}", "--out", root,
                         "--set", "pretrain.steps=4", "--set", "pretrain.seq_len=32", "--set", "pretrain.batch_size=2",
                         "--set", "pretrain.checkpoint_every=2", "--set", "codistill.scheme=none", env=s3_server))
    pre_prefix = pre.removeprefix("s3://herd/")
    for key in ("_SUCCESS", "hf/config.json", "hf/tokenizer.json", "model.safetensors",
                "checkpoints/step-00000004/_COMPLETE", "checkpoints/step-00000004/optimizer.safetensors"):
        s3.head_object(Bucket="herd", Key=f"{pre_prefix}/{key}")

    # A retry on a fresh machine finds its checkpoints only on S3: it resumes from the last one.
    weights = s3.get_object(Bucket="herd", Key=f"{pre_prefix}/model.safetensors")["Body"].read()
    first_summary = json.loads(s3.get_object(Bucket="herd", Key=f"{pre_prefix}/step.json")["Body"].read())["metrics"]
    s3.delete_object(Bucket="herd", Key=f"{pre_prefix}/_SUCCESS")
    retried = herd("stage", "pretrain", "--variant", "scout", "--run", "s3c", "--in", f"tokens={tok}", "--out", root,
                   "--set", "pretrain.steps=4", "--set", "pretrain.seq_len=32", "--set", "pretrain.batch_size=2",
                   "--set", "pretrain.checkpoint_every=2", "--set", "codistill.scheme=none", env=s3_server)
    assert output_of(retried) == pre and "resuming from step-00000004 at step 4" in retried.stderr
    assert s3.get_object(Bucket="herd", Key=f"{pre_prefix}/model.safetensors")["Body"].read() == weights
    # Nothing left to train, yet the summary covers the run: its history came from the checkpoint.
    summary = json.loads(s3.get_object(Bucket="herd", Key=f"{pre_prefix}/step.json")["Body"].read())["metrics"]
    assert summary["first_loss"] is not None and summary["first_loss"] == first_summary["first_loss"]

    again = herd("stage", "datamix", "--run", "s3b", "--in", "corpus=s3://herd/raw", "--out", root, env=s3_server)
    assert output_of(again) == mix and "skipping" in again.stderr


def test_missing_s3_input_is_a_clear_error(s3, s3_server, herd_home):
    result = herd("stage", "datamix", "--run", "x", "--in", "corpus=s3://herd/absent/", "--out", "s3://herd/a",
                  env=s3_server, check=False)
    assert result.returncode == 2 and "does not exist or is empty" in result.stderr
    assert "Contents" not in s3.list_objects_v2(Bucket="herd", Prefix="a/")
