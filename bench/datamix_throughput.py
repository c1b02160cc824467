"""Throughput of herd's ``datamix`` stage against datatrove doing the same filter + dedup work.

How to run (from the repository root):

    make bench                                    # installs the [bench] extra, then runs this script
    .venv/bin/python bench/datamix_throughput.py  # 1 GiB corpus, both sides
    .venv/bin/python bench/datamix_throughput.py --gb 0.2 --skip-datatrove
    make bench ARGS="--gb 0.2 --datatrove-shingles words --json bench/out/words.json"

``--datatrove-shingles words`` gives datatrove its usual word 5-grams instead of herd's character
5-grams (fewer shingles, so a cheaper signature step): a sensitivity check, not the comparison.

What it does:

1. Generates (once, then reuses) a deterministic corpus of ``--gb`` GiB (2**30 bytes each) in 8
   JSONL files under ``bench/out/corpus-<size>gb/``: documents of ~1-3 KB built from 4-10 random
   paragraphs of one language's UDHR articles (keeping that language's ``lang`` code), ~3% exact
   duplicates, ~3% near duplicates (one word changed) and a few bad lines (truncated JSON, empty
   text). The UDHR source is ``$HERD_HOME/corpus/udhr/udhr.jsonl``, fetched if absent.
2. Runs ``python -m tasks.cli stage datamix`` on it with ``HERD_HOME=bench/out/herd-home``.
   Measured: the stage's wall time (``wall_seconds`` in step.json: all three passes, shards
   written), its first-pass throughput (``docs_per_second``/``mb_per_second``: read, normalise,
   language check, quality filters, exact and MinHash dedup) and docs in/kept.
3. Runs datatrove 0.10.1 on the same files in a child process (``LocalPipelineExecutor``, one
   worker per core): JsonlReader -> herd's own normalize + language rule + quality filters (the
   same functions, so per-document decisions are identical) -> JsonlWriter + MinHash signatures;
   then buckets, clustering, and the dedup filter -> JsonlWriter. Measured: the wall time of all
   four stages together, docs kept.

Peak RSS is measured the same way for both sides: the largest peak resident set of any *single*
process in the run's process tree (the kernel's ``VmHWM`` of every process, read every 0.1 s
while it lives). herd's own ``peak_rss_mb`` from step.json is the same kind of figure and is
reported alongside. The peak of the whole tree's summed RSS is reported too, for information.

CPU seconds (user + system over the whole process tree) are reported too: on a shared machine they
are steadier than wall time. The sampler compares them with the machine's busy time: CPU used by
anything else during a run (other jobs, hypervisor steal) is reported per side, with a warning
under the table, since on a small shared machine it skews the timings more than anything
measured here.

MinHash is made comparable: both sides shingle character 5-grams of the lower-cased,
whitespace-folded text (datatrove gets a one-character "word" tokenizer and a text normalisation
limited to lower-casing and whitespace), 9 bands x 13 rows. They differ in the hash functions,
in herd's exact-dedup pass (datatrove catches exact copies through identical signatures) and in
what a match removes: herd drops a document when one of its band keys came from an earlier
document; datatrove keeps one document per connected cluster of matching pairs, so where matches
chain (A~B, B~C, A and C unlike) it removes a few more. Docs kept agree closely but not exactly.

The ratios compare herd with datatrove measured in the same run, on this machine only (cores,
disk and load all matter); they are not portable numbers. Results are printed as a table and
written to ``bench/out/datamix_throughput.json``.
"""

from __future__ import annotations

import argparse
import bisect
import fcntl
import itertools
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from herd.pipeline import load_config
from herd.stages.datamix import DatamixConfig
from tasks.datamix import documents as herd_documents
from tasks.datamix.filters import normalize, quality_filters

try:  # datatrove is only needed for the comparison; --skip-datatrove works without it.
    from datatrove.pipeline.filters.base_filter import BaseFilter
    from datatrove.utils.word_tokenizers import WordTokenizer
except ImportError:
    BaseFilter = WordTokenizer = object  # type: ignore[misc,assignment]

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
GIB = 1 << 30
MIB = 1 << 20
LOAD_WARNING_CORES = 0.15  # CPU used outside the measured processes beyond this spoils a timing

# ---------------------------------------------------------------------------------------------
# Corpus generation
# ---------------------------------------------------------------------------------------------

GENERATOR_VERSION = 3  # bump when the generator changes, so an old corpus is not reused
CORPUS_FILES = 8
EXACT_DUPLICATE_SHARE = 0.03
NEAR_DUPLICATE_SHARE = 0.03
BAD_LINE_EVERY = 20_000  # one bad line per this many documents: "a few" per GiB
DUPLICATE_POOL = 20_000  # originals a duplicate is drawn from (a uniform sample of all so far)
MIN_DOC_BYTES, MAX_DOC_BYTES = 1_000, 3_000


def udhr_source(herd_home: Path) -> Path:
    from tasks.corpus.udhr import fetch_udhr

    return fetch_udhr(herd_home / "corpus" / "udhr")


def load_paragraphs(udhr_jsonl: Path) -> dict[str, list[str]]:
    """Every non-empty line of every UDHR article, grouped by language code, in a fixed order."""
    paragraphs: dict[str, list[str]] = {}
    with udhr_jsonl.open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            pool = paragraphs.setdefault(record["lang"], [])
            pool.extend(p.strip() for p in record["text"].split("\n") if p.strip())
    return {lang: pool for lang, pool in sorted(paragraphs.items()) if pool}


class DocumentMaker:
    """Deterministic documents, exact and near duplicates from one seeded ``random.Random``."""

    def __init__(self, paragraphs: dict[str, list[str]], seed: int) -> None:
        self.rng = random.Random(seed)
        self.paragraphs = paragraphs
        self.languages = list(paragraphs)
        # A language is picked in proportion to its paragraphs, so the few partial translations
        # do not turn into thousands of near-identical documents.
        self.cumulative = list(itertools.accumulate(len(p) for p in paragraphs.values()))
        self.originals: list[tuple[str, str]] = []
        self.originals_seen = 0

    def original(self) -> tuple[str, str]:
        rng = self.rng
        lang = self.languages[bisect.bisect_right(self.cumulative, rng.randrange(self.cumulative[-1]))]
        pool = self.paragraphs[lang]
        order = rng.sample(range(len(pool)), len(pool)) if len(pool) <= 64 else None
        parts: list[str] = []
        size = 0
        wanted = rng.randint(4, 10)
        # 4-10 paragraphs, extended to at least MIN_DOC_BYTES and stopped before MAX_DOC_BYTES.
        while len(parts) < wanted or size < MIN_DOC_BYTES:
            index = order[len(parts) % len(order)] if order else rng.randrange(len(pool))
            paragraph = pool[index]
            paragraph_bytes = len(paragraph.encode("utf-8")) + 1
            if parts and size + paragraph_bytes > MAX_DOC_BYTES:
                break
            parts.append(paragraph)
            size += paragraph_bytes
        text = "\n".join(parts)
        self._remember(lang, text)
        return lang, text

    def _remember(self, lang: str, text: str) -> None:
        """Reservoir sampling: duplicates come from anywhere earlier in the corpus, in bounded memory."""
        self.originals_seen += 1
        if len(self.originals) < DUPLICATE_POOL:
            self.originals.append((lang, text))
            return
        slot = self.rng.randrange(self.originals_seen)
        if slot < DUPLICATE_POOL:
            self.originals[slot] = (lang, text)

    def exact_duplicate(self) -> tuple[str, str]:
        return self.rng.choice(self.originals)

    def near_duplicate(self) -> tuple[str, str]:
        lang, text = self.rng.choice(self.originals)
        donor = self.rng.choice(self.paragraphs[lang])
        words = text.split(" ")
        inside_lines = [i for i, word in enumerate(words) if "\n" not in word]  # keep the line structure
        if len(inside_lines) > 3:
            index = self.rng.choice(inside_lines)
            replacement = self.rng.choice(donor.split())
            words[index] = replacement if replacement != words[index] else replacement + replacement[:1]
            return lang, " ".join(words)
        # Scripts written without spaces (Chinese, Japanese, Thai): change one character instead.
        index = self.rng.randrange(len(text))
        replacement = self.rng.choice(donor)
        return lang, text[:index] + (replacement if replacement != text[index] else "x") + text[index + 1:]

    def bad_line(self, doc_id: str) -> str:
        """Malformed input the readers must survive: a JSON line cut in half, or a record with empty text."""
        if self.rng.random() < 0.5:
            line = json.dumps({"id": doc_id, "text": self.original()[1], "lang": "eng"}, ensure_ascii=False)
            return line[: len(line) // 2]
        return json.dumps({"id": doc_id, "text": "", "lang": "eng"})


@dataclass
class Corpus:
    folder: str
    target_bytes: int
    seed: int
    version: int = GENERATOR_VERSION
    files: int = 0
    lines: int = 0
    bytes: int = 0
    originals: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    bad_lines: int = 0
    generation_seconds: float = 0.0


def next_line(maker: DocumentMaker, corpus: Corpus) -> str:
    """The next JSONL line (without newline), counted in ``corpus`` by kind."""
    doc_id = f"bench-{corpus.lines:09d}"
    if corpus.lines % BAD_LINE_EVERY == 1_000:  # early enough that a small corpus has one too
        corpus.bad_lines += 1
        return maker.bad_line(doc_id)
    draw = maker.rng.random()
    if maker.originals and draw < EXACT_DUPLICATE_SHARE:
        lang, text = maker.exact_duplicate()
        corpus.exact_duplicates += 1
    elif maker.originals and draw < EXACT_DUPLICATE_SHARE + NEAR_DUPLICATE_SHARE:
        lang, text = maker.near_duplicate()
        corpus.near_duplicates += 1
    else:
        lang, text = maker.original()
        corpus.originals += 1
    return json.dumps({"id": doc_id, "text": text, "lang": lang}, ensure_ascii=False)


def corpus_paths(gb: float) -> tuple[Path, Path]:
    folder = OUT / f"corpus-{gb:g}gb"
    return folder, folder.with_name(folder.name + ".manifest.json")


def generate_corpus(udhr_jsonl: Path, gb: float, seed: int) -> Corpus:
    """Write the corpus, or reuse it when a manifest for the same size, seed and generator exists.

    The manifest lives beside the folder, not in it, since both readers take every file inside.
    """
    folder, manifest_path = corpus_paths(gb)
    target = int(gb * GIB)
    if manifest_path.exists():
        corpus = Corpus(**json.loads(manifest_path.read_text()))
        if (corpus.target_bytes, corpus.seed, corpus.version) == (target, seed, GENERATOR_VERSION):
            return corpus
        manifest_path.unlink()  # written again only once the new corpus is complete
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    clock = time.monotonic()
    corpus = Corpus(str(folder), target, seed, files=CORPUS_FILES)
    maker = DocumentMaker(load_paragraphs(udhr_jsonl), seed)
    for file_index in range(CORPUS_FILES):
        # Files split the target evenly; the last one takes the remainder.
        file_target = target * (file_index + 1) // CORPUS_FILES
        with (folder / f"part-{file_index:05d}.jsonl").open("w", encoding="utf-8", newline="\n") as out:
            while corpus.bytes < file_target:
                data = next_line(maker, corpus) + "\n"
                out.write(data)
                corpus.lines += 1
                corpus.bytes += len(data.encode("utf-8"))
    corpus.generation_seconds = round(time.monotonic() - clock, 2)
    manifest_path.write_text(json.dumps(asdict(corpus), indent=2) + "\n")
    return corpus


# ---------------------------------------------------------------------------------------------
# Measuring a child process: wall time and peak RSS
# ---------------------------------------------------------------------------------------------


@dataclass
class Measured:
    returncode: int
    process_wall_seconds: float
    peak_rss_mb: float  # the largest peak (VmHWM) of any single process of the tree
    peak_tree_rss_mb: float  # the largest sum of current RSS over the tree at one sample
    cpu_seconds: float  # user + system time of the tree's processes
    other_load_cores: float  # CPU used outside the tree (other jobs, this sampler), in cores on average
    steal_cores: float  # CPU the hypervisor took away, in cores on average
    samples: int = 0


def _busy_seconds(times) -> float:
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _high_water_bytes(pid: int) -> int:
    """The kernel's exact peak RSS of one process (VmHWM), so a peak between two samples is not missed."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Polls a process and all its descendants: peak RSS per process, the largest sum, and CPU time.

    Comparing the tree's CPU time with the whole machine's shows whether something else ran
    meanwhile: on a small shared machine that is the first thing that spoils a timing.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.stop = threading.Event()
        self.max_single = 0
        self.max_total = 0
        self.cpu_by_pid: dict[int, float] = {}
        self.samples = 0
        self.machine_start = psutil.cpu_times()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            sizes = []
            for process in processes:
                try:
                    with process.oneshot():
                        sizes.append(process.memory_info().rss)
                        times = process.cpu_times()
                except psutil.Error:  # exited between listing and reading
                    continue
                self.cpu_by_pid[process.pid] = times.user + times.system
                self.max_single = max(self.max_single, _high_water_bytes(process.pid))
            if sizes:
                self.max_total = max(self.max_total, sum(sizes))
                self.samples += 1
            self.stop.wait(self.interval)

    def finish(self) -> tuple[float, float, float]:
        """(tree CPU seconds, machine busy seconds, machine steal seconds) since the start."""
        self.stop.set()
        self.join()
        end = psutil.cpu_times()
        busy = _busy_seconds(end) - _busy_seconds(self.machine_start)
        steal = getattr(end, "steal", 0.0) - getattr(self.machine_start, "steal", 0.0)
        return sum(self.cpu_by_pid.values()), busy, steal


def run_measured(command: list[str], env: dict[str, str], stdout_path: Path, stderr_path: Path) -> Measured:
    clock = time.monotonic()
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr)
        sampler = TreeSampler(process.pid)
        sampler.start()
        # wait4 for the CPU time of the root and every descendant it waited for, exact at exit.
        # Its ru_maxrss is not used: a child started by (v)fork + exec inherits this process's
        # peak RSS there, so it would report this script's memory, not the child's.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - clock
    tree_cpu, machine_busy, steal = sampler.finish()
    tree_cpu = max(tree_cpu, usage.ru_utime + usage.ru_stime)
    return Measured(
        returncode=process.returncode,
        process_wall_seconds=round(wall, 2),
        peak_rss_mb=round(sampler.max_single / MIB, 1),
        peak_tree_rss_mb=round(sampler.max_total / MIB, 1),
        cpu_seconds=round(tree_cpu, 1),
        other_load_cores=round(max(0.0, machine_busy - tree_cpu) / wall, 2),
        steal_cores=round(steal / wall, 2),
        samples=sampler.samples,
    )


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    # Keep tracking and artifacts inside bench/out whatever the caller's shell points at.
    for name in ("MLFLOW_TRACKING_URI", "HERD_ARTIFACT_ROOT", "HERD_CORPUS_URI"):
        env.pop(name, None)
    return env


def fail(what: str, measured: Measured, stderr_path: Path) -> None:
    tail = stderr_path.read_text(errors="replace")[-4000:]
    raise SystemExit(f"{what} failed with exit status {measured.returncode}; end of {stderr_path}:\n{tail}")


# ---------------------------------------------------------------------------------------------
# herd
# ---------------------------------------------------------------------------------------------


@dataclass
class Side:
    """One contender's numbers. ``wall_seconds`` is the one the ratios use."""

    name: str
    wall_seconds: float
    docs_in: int
    docs_kept: int
    peak_rss_mb: float
    cpu_seconds: float  # the whole child process tree, start-up included
    docs_per_second: float = 0.0
    mb_per_second: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def run_herd(corpus: Corpus, preset: str) -> Side:
    home = OUT / "herd-home"
    # A fresh home each time: outputs are ~ the corpus size, and MLflow runs would pile up.
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    command = [
        sys.executable, "-m", "tasks.cli", "stage", "datamix", "--run", "bench", "--config", preset,
        "--in", f"corpus={corpus.folder}", "--out", str(home / "artifacts"), "--force",
    ]
    stdout_path, stderr_path = OUT / "herd.stdout.log", OUT / "herd.stderr.log"
    measured = run_measured(command, child_env(HERD_HOME=str(home)), stdout_path, stderr_path)
    if measured.returncode != 0:
        fail("herd datamix", measured, stderr_path)
    output_lines = [line for line in stdout_path.read_text().splitlines() if line.startswith("HERD_OUTPUT=")]
    step = json.loads((Path(output_lines[-1].split("=", 1)[1]) / "step.json").read_text())
    metrics = step["metrics"]
    wall = step["wall_seconds"]
    return Side(
        name="herd",
        wall_seconds=wall,
        docs_in=metrics["docs_in"],
        docs_kept=metrics["docs_kept"],
        peak_rss_mb=measured.peak_rss_mb,
        cpu_seconds=measured.cpu_seconds,
        docs_per_second=round(metrics["docs_in"] / wall, 1),
        mb_per_second=round(corpus.bytes / 1e6 / wall, 3),
        details={
            "first_pass_docs_per_second": metrics["docs_per_second"],
            "first_pass_mb_per_second": metrics["mb_per_second"],
            "step_json_peak_rss_mb": metrics["peak_rss_mb"],
            "process": asdict(measured),
            "docs_out": metrics.get("docs_out"),
            "drops": {k.removeprefix("dropped_"): v for k, v in metrics.items() if k.startswith("dropped_")},
            "output": step["output"],
        },
    )


# ---------------------------------------------------------------------------------------------
# datatrove: runs in a child process (``--datatrove-child``) so it is measured like herd
# ---------------------------------------------------------------------------------------------

BANDS, ROWS, SHINGLE = 9, 13, 5  # herd's split for threshold 0.8 over 128 permutations


class ShingleTokenizer(WordTokenizer):
    """Splits text into the units datatrove's MinHash joins into n-grams: characters or words.

    ``chars`` (the default) gives one "word" per character, so datatrove's word 5-grams become
    herd's character 5-grams. ``words`` splits on whitespace: datatrove's usual word 5-grams,
    without its spaCy/NLTK tokenizers. Passing an instance keeps datatrove from loading those.
    """

    def __init__(self, unit: str = "chars") -> None:
        self.language = unit
        self.unit = unit

    def word_tokenize(self, text: str) -> list[str]:
        return list(text) if self.unit == "chars" else text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


class HerdDocumentRules(BaseFilter):
    """herd's per-document steps, with herd's own functions: normalise, language rule, quality filters.

    Drop reasons use herd's names, so the two drop tables can be compared line by line.
    """

    name = "herd rules"

    def __init__(self, config: DatamixConfig) -> None:
        super().__init__()
        self.config = config
        self._filters = None

    def filter(self, doc) -> bool | tuple[bool, str]:
        if self._filters is None:  # built in the task process, not pickled from the parent
            herd_documents.init_worker(self.config)
            self._filters = quality_filters(self.config)
        try:
            text = normalize(doc.text, self.config.unicode_form)
            text.encode("utf-8")
        except UnicodeEncodeError:
            return False, "invalid_utf8"
        if not text:
            return False, "empty"
        # herd's language rule exactly as its workers apply it (declared label vs CLD2's verdict).
        verdict = herd_documents.BatchResult()
        lang = herd_documents._language({"lang": doc.metadata.get("lang")}, text, verdict)
        if lang is None:
            return False, next(iter(verdict.drops))
        if self.config.languages and lang not in self.config.languages:
            return False, "language_not_selected"
        failed = next((f.name for f in self._filters if not f.keep(text)), None)
        if failed:
            return False, failed
        doc.text = text
        doc.metadata["lang"] = lang
        return True


def datatrove_minhash_config():
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig

    return MinhashConfig(
        n_grams=SHINGLE,
        num_buckets=BANDS,
        hashes_per_bucket=ROWS,
        # Fold like herd's MinHasher (lower case, whitespace runs to one space) and nothing more.
        norm_config=TextNormConfig(
            lowercase=True, norm_whitespace=True, remove_punctuation=False,
            norm_unicode_diacritics=False, norm_numbers=False,
        ),
        # sha1: datatrove's default xxhash needs the xxhash package, which herd does not install.
        hash_config=HashConfig(precision=64, hash_fc="sha1"),
    )


def _step_totals(logging_dir: Path) -> dict[str, dict[str, float]]:
    """A stage's merged stats.json as {step: {stat: total}}, plus the seconds the step took over all tasks.

    MinhashDedupSignature times its whole loop, so its seconds include the steps that feed it.
    """
    totals: dict[str, dict[str, float]] = {}
    for step in json.loads((logging_dir / "stats.json").read_text()):
        counts = {key: value["total"] if isinstance(value, dict) else value for key, value in step["stats"].items()}
        totals[step["name"]] = {"task_seconds": round(step["time_stats"]["total"], 2), **counts}
    return totals


def datatrove_stages(corpus_folder: str, work: Path, preset: str, shingles: str) -> list[tuple[str, list, int]]:
    """(name, pipeline, tasks) of the four datatrove stages, run one after the other."""
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    config = load_config(preset).datamix
    minhash = datatrove_minhash_config()
    files = len(list(Path(corpus_folder).glob("*.jsonl")))  # one task per input file
    filtered, signatures, buckets, removals, output = (
        str(work / name) for name in ("filtered", "signatures", "buckets", "remove_ids", "output")
    )
    # Stage 1 writes the filtered documents too: stage 4 must see exactly the stream stage 1
    # numbered (MinhashDedupFilter drops by position), and filtering again would double that cost.
    return [
        ("1_read_filter_signatures", [
            JsonlReader(corpus_folder, glob_pattern="*.jsonl"),
            HerdDocumentRules(config),
            JsonlWriter(filtered, output_filename="${rank}.jsonl", compression=None),
            MinhashDedupSignature(output_folder=signatures, config=minhash, language=ShingleTokenizer(shingles)),
        ], files),
        # One task per band at least: datatrove needs tasks to be a multiple of num_buckets.
        ("2_buckets", [MinhashDedupBuckets(input_folder=signatures, output_folder=buckets, config=minhash)], BANDS),
        ("3_cluster", [MinhashDedupCluster(input_folder=buckets, output_folder=removals, config=minhash)], 1),
        ("4_dedup_filter_write", [
            JsonlReader(filtered, glob_pattern="*.jsonl"),
            MinhashDedupFilter(input_folder=removals),
            JsonlWriter(output, output_filename="${rank}.jsonl", compression=None),
        ], files),
    ]


def datatrove_child(corpus_folder: str, work: Path, preset: str, shingles: str) -> None:
    """Runs the four stages, timing each; writes ``work/result.json`` for the parent."""
    from datatrove.executor import LocalPipelineExecutor

    workers = os.cpu_count() or 1
    seconds: dict[str, float] = {}
    totals: dict[str, dict[str, dict[str, float]]] = {}
    clock = time.monotonic()
    for name, pipeline, tasks in datatrove_stages(corpus_folder, work, preset, shingles):
        logs = work / "logs" / name
        executor = LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(logs))
        started = time.monotonic()
        executor.run()
        seconds[name] = round(time.monotonic() - started, 2)
        incomplete = executor.get_incomplete_ranks()
        if incomplete:
            raise SystemExit(f"datatrove stage {name}: tasks {incomplete} did not complete")
        totals[name] = _step_totals(logs)
        if name.startswith("1_") and len(list((work / "filtered").glob("*.jsonl"))) != tasks:
            raise SystemExit("a stage-1 task wrote no documents: stage 4 would number its input differently")
    wall = time.monotonic() - clock
    result = {"wall_seconds": round(wall, 2), "stage_seconds": seconds, "stats": totals}
    (work / "result.json").write_text(json.dumps(result, indent=2))


def _count_lines(folder: Path) -> int:
    count = 0
    for path in sorted(folder.glob("*.jsonl")):
        with path.open("rb") as lines:
            count += sum(1 for _ in lines)
    return count


def _step(stage_stats: dict[str, dict], kind: str, name: str) -> dict:
    """One step's totals; datatrove names steps "<type>: <name>", e.g. "📖 - READER: 🐿 Jsonl"."""
    return next((step for full, step in stage_stats.items() if kind in full and full.endswith(name)), {})


def run_datatrove(corpus: Corpus, preset: str, shingles: str) -> Side:
    work = OUT / "datatrove-work"
    shutil.rmtree(work, ignore_errors=True)  # datatrove skips tasks it finds completed
    work.mkdir(parents=True)
    result_path = work / "result.json"
    command = [
        sys.executable, str(Path(__file__).resolve()), "--datatrove-child", str(work),
        "--corpus-folder", corpus.folder, "--preset", preset, "--datatrove-shingles", shingles,
    ]
    stdout_path, stderr_path = OUT / "datatrove.stdout.log", OUT / "datatrove.stderr.log"
    measured = run_measured(command, child_env(), stdout_path, stderr_path)
    if measured.returncode != 0:
        fail("datatrove", measured, stderr_path)
    result = json.loads(result_path.read_text())
    wall = result["wall_seconds"]
    first_stage = result["stats"]["1_read_filter_signatures"]
    rules = _step(first_stage, "FILTER", HerdDocumentRules.name)
    return Side(
        name="datatrove",
        wall_seconds=wall,
        docs_in=corpus.lines,  # the same files; datatrove's reader does not count the lines it skips
        docs_kept=_count_lines(work / "output"),
        peak_rss_mb=measured.peak_rss_mb,
        cpu_seconds=measured.cpu_seconds,
        docs_per_second=round(corpus.lines / wall, 1),
        mb_per_second=round(corpus.bytes / 1e6 / wall, 3),
        details={
            "shingles": f"{SHINGLE}-grams of {shingles}",
            "stage_seconds": result["stage_seconds"],
            "process": asdict(measured),
            "docs_read": _step(first_stage, "READER", "Jsonl").get("documents"),
            "docs_after_rules": _count_lines(work / "filtered"),
            "drops": {k.removeprefix("dropped_"): v for k, v in rules.items() if k.startswith("dropped_")},
            "step_stats": result["stats"],
        },
    )


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def ratios(herd: Side, baseline: Side) -> dict[str, float]:
    return {
        "throughput (datatrove wall / herd wall)": round(baseline.wall_seconds / herd.wall_seconds, 2),
        "herd first-pass docs/s / datatrove docs/s": round(
            herd.details["first_pass_docs_per_second"] / baseline.docs_per_second, 2
        ),
        "cpu_seconds (datatrove / herd)": round(baseline.cpu_seconds / herd.cpu_seconds, 2),
        "peak_rss (herd / datatrove)": round(herd.peak_rss_mb / baseline.peak_rss_mb, 2),
        "docs_kept (herd / datatrove)": round(herd.docs_kept / baseline.docs_kept, 4),
    }


def print_table(corpus: Corpus, sides: list[Side], ratio: dict[str, float] | None) -> None:
    print(f"\ncorpus: {corpus.folder}  {corpus.bytes / 1e9:.3f} GB ({corpus.bytes / GIB:.3f} GiB), "
          f"{corpus.lines} lines, {corpus.files} files; generated in {corpus.generation_seconds} s")
    print(f"machine: {machine()['cpu']}, {os.cpu_count()} cores; numbers are for this machine in this run\n")
    header = (f"{'':<38}{'wall s':>9}{'CPU s':>9}{'docs/s':>9}{'MB/s':>7}{'peak RSS MB':>13}"
              f"{'docs in':>10}{'docs kept':>11}")
    print(header)
    print("-" * len(header))
    for side in sides:
        label = "herd (whole stage)" if side.name == "herd" else f"datatrove (4 stages, {side.details['shingles']})"
        print(f"{label:<38}{side.wall_seconds:>9.1f}{side.cpu_seconds:>9.0f}{side.docs_per_second:>9.0f}"
              f"{side.mb_per_second:>7.2f}{side.peak_rss_mb:>13.0f}{side.docs_in:>10}{side.docs_kept:>11}")
        if side.name == "herd":
            print(f"{'herd (first pass)':<38}{'':>18}{side.details['first_pass_docs_per_second']:>9.0f}"
                  f"{side.details['first_pass_mb_per_second']:>7.2f}")
    for side in sides:
        measured = side.details["process"]
        if measured["other_load_cores"] > LOAD_WARNING_CORES or measured["steal_cores"] > LOAD_WARNING_CORES:
            print(f"WARNING: during the {side.name} run other processes used {measured['other_load_cores']} "
                  f"cores and the hypervisor stole {measured['steal_cores']} on average: its timing is disturbed")
    if ratio:
        print("\nherd vs datatrove (same corpus, same run):")
        for name, value in ratio.items():
            print(f"  {name:<52}{value:>8}")
    print()


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def git_state() -> dict[str, Any]:
    """The commit measured, and whether herd's code had uncommitted changes (read-only git calls)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "herd", "tasks")
    return {"commit": git("rev-parse", "HEAD") or None, "herd_code_changed": changed.splitlines() if changed else []}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("herd", "datatrove", "datasketch", "pycld2", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def hold_lock():
    """One run at a time: runs share bench/out/herd-home and datatrove-work, and would time each other."""
    handle = (OUT / ".lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit("another datamix_throughput run is using bench/out; wait for it to finish") from None
    return handle  # the lock lasts as long as the handle stays open


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="corpus size in GiB (default 1.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="nano", help="herd config preset (its datamix rules both sides use)")
    parser.add_argument("--skip-datatrove", action="store_true", help="measure herd only")
    parser.add_argument("--datatrove-shingles", choices=["chars", "words"], default="chars",
                        help="datatrove's MinHash n-gram unit: chars (herd's, the default) or its usual words")
    parser.add_argument("--json", type=Path, default=OUT / "datamix_throughput.json", help="where the results go")
    parser.add_argument("--datatrove-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--corpus-folder", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.datatrove_child:
        datatrove_child(args.corpus_folder, args.datatrove_child, args.preset, args.datatrove_shingles)
        return

    from tasks.runtime.home import herd_home

    OUT.mkdir(parents=True, exist_ok=True)
    lock = hold_lock()  # noqa: F841 - kept open for the whole run
    code = git_state()  # before the runs: the code they import
    corpus = generate_corpus(udhr_source(herd_home()), args.gb, args.seed)
    print(f"corpus ready: {corpus.folder} ({corpus.bytes / GIB:.3f} GiB, {corpus.lines} lines, "
          f"generated in {corpus.generation_seconds} s)", flush=True)
    print("running herd datamix ...", flush=True)
    sides = [run_herd(corpus, args.preset)]
    if not args.skip_datatrove:
        print(f"herd done in {sides[0].wall_seconds:.1f} s; running datatrove ...", flush=True)
        sides.append(run_datatrove(corpus, args.preset, args.datatrove_shingles))
    ratio = ratios(*sides) if len(sides) == 2 else None
    print_table(corpus, sides, ratio)
    report = {
        "note": "numbers are for this machine in this run; ratios compare herd with datatrove measured in the same run",
        "command": sys.argv[1:],
        "machine": machine(),
        "versions": versions(),
        "git": code,
        "corpus": asdict(corpus),
        "results": {side.name: asdict(side) for side in sides},
        "ratios": ratio,
    }
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
