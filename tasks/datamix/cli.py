"""``herd datamix``: the sharded data mix's steps, one command each, for an orchestrator's mapped tasks.

    herd datamix shards --run RUN --in corpus=URI [--config nano --overrides JSON]
    herd datamix map --shard URI [--config nano --overrides JSON]
    herd datamix reduce --maps URI,URI,... --partition P [--config nano --overrides JSON]

``shards`` prints ``{"shards": [...], "partitions": P}``, with no shards when the stage's
output exists already or the stage is not selected (``--reuse-only``): the mapped tasks then
expand to nothing. ``map`` and ``reduce`` print the URI they wrote. Each result is the last
line, after the ``HERD_OUTPUT=`` prefix (the XCom).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from herd.stage import OUTPUT_LINE_PREFIX

log = logging.getLogger(__name__)


def add_datamix_parser(sub, add_config_args) -> None:
    datamix = sub.add_parser("datamix", help="the sharded data mix's steps (map per shard, reduce per partition)")
    steps = datamix.add_subparsers(dest="datamix_command", required=True)
    shards = steps.add_parser("shards", help="the input files to map, as JSON")
    shards.add_argument("--run", default="")
    shards.add_argument("--in", dest="inputs", action="append", default=[], metavar="corpus=URI")
    shards.add_argument("--reuse-only", default="false", help="true: the stage is not selected, map nothing")
    one = steps.add_parser("map", help="map one input file")
    one.add_argument("--shard", required=True)
    reduce = steps.add_parser("reduce", help="reduce one key partition")
    reduce.add_argument("--maps", required=True, help="comma-separated map output URIs, in shard order")
    reduce.add_argument("--partition", type=int, required=True)
    for step in (shards, one, reduce):
        add_config_args(step)
        step.add_argument("--xcom-file", default="", help="also write the result here as JSON (Kubernetes pods)")


def run_datamix(args: argparse.Namespace, load_config, artifact_root) -> int:
    from tasks.datamix.mapreduce import map_shard, reduce_band
    from tasks.datamix.sharded import partitions_of

    pipeline, root = load_config(args), artifact_root(args)
    config = pipeline.datamix
    partitions = partitions_of(config)
    if args.datamix_command == "shards":
        result = {"shards": _shards_to_map(args, pipeline, root), "partitions": partitions}
    elif args.datamix_command == "map":
        mapped = map_shard(args.shard, config, root, partitions)
        log.info("datamix map: %s -> %s (%s)", args.shard, mapped.uri, "reused" if mapped.reused else "written")
        result = mapped.uri
    else:
        result = reduce_band(args.maps.split(","), args.partition, partitions, root)
    if args.xcom_file:
        Path(args.xcom_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.xcom_file).write_text(json.dumps(result))
    print(f"{OUTPUT_LINE_PREFIX}{json.dumps(result) if isinstance(result, dict) else result}", flush=True)
    return 0


def _shards_to_map(args: argparse.Namespace, pipeline, root: str) -> list[str]:
    from tasks.datamix.documents import input_files
    from tasks.runtime import step

    inputs = dict(item.split("=", 1) for item in args.inputs)
    corpus = inputs.get("corpus") or step.default_input("corpus")
    if args.reuse_only.lower() == "true":
        return []
    datamix = next(p for p in step.plan(pipeline, root, {"corpus": corpus}) if p.spec.id == "datamix")
    if datamix.complete:
        log.info("datamix: output complete at %s; nothing to map", datamix.uri)
        return []
    return [entry.uri for entry in input_files(corpus)]
