"""Problems with checkable answers: checkers, the code sandbox, generators, split, chat rendering, build."""

from __future__ import annotations

import json
import random
import re
import tempfile
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from herd.stages.problems import ProblemsConfig
from tasks.problems import arithmetic, code, strings, udhr
from tasks.problems.build import build_problem_sets, generate_all
from tasks.problems.checkers import check, score, score_all
from tasks.problems.chrf import chrf
from tasks.problems.item import CAPABILITIES, SYSTEM_PROMPTS, Problem, read_jsonl, system_prompt, write_jsonl
from tasks.problems.sandbox import run_code
from tasks.problems.split import heldout_articles

SMALL = ProblemsConfig(count_arithmetic=150, count_strings=150, count_code=60, count_translate=120,
                       count_language_id=150, count_continue=150, heldout_fraction=0.2)


@pytest.fixture(scope="module")
def declarations(udhr_subset):
    return udhr.load_declarations(udhr_subset)


@pytest.fixture(scope="module")
def problems(declarations) -> list[Problem]:
    return generate_all(declarations, SMALL)


# Checkers on raw completions.

def test_exact_takes_the_reply_not_a_list_of_guesses():
    args = {"answer": "olleh", "case_sensitive": True}
    assert check("exact", args, "olleh<|eot|>") == 1.0
    assert check("exact", args, "olleh<|eot|>sampled past the end") == 1.0
    assert check("exact", args, "Answer: `olleh`.") == 1.0
    assert check("exact", args, "The word reversed.\nThe answer is **olleh**") == 1.0
    assert check("exact", args, '"olleh"') == 1.0
    assert check("exact", args, "hello olleh ohell") == 0.0
    assert check("exact", args, "OLLEH") == 0.0
    assert check("exact", {"answer": "olleh", "case_sensitive": False}, "OLLEH") == 1.0
    assert check("exact", args, "") == 0.0


def test_numeric_reads_the_stated_or_last_number():
    assert check("numeric", {"answer": 42}, "42<|eot|>") == 1.0
    assert check("numeric", {"answer": 42}, "17+25=42") == 1.0
    assert check("numeric", {"answer": 42}, "The answer is 42. (40 + 2)") == 1.0
    assert check("numeric", {"answer": 42}, "Answer: 41. No, the answer is 42, from 40 + 2") == 1.0
    assert check("numeric", {"answer": -8}, "-8") == 1.0
    assert check("numeric", {"answer": 1234}, "1,234") == 1.0
    assert check("numeric", {"answer": 42}, "41") == 0.0
    assert check("numeric", {"answer": 42}, "42 or 43") == 0.0
    assert check("numeric", {"answer": 0}, "nothing") == 0.0


def test_language_id_accepts_any_spelling_of_the_code_and_half_for_the_macrolanguage():
    assert check("language_id", {"answer": "fra"}, "fra<|eot|>") == 1.0
    assert check("language_id", {"answer": "fra"}, "FR.") == 1.0
    assert check("language_id", {"answer": "fra"}, "deu") == 0.0
    assert check("language_id", {"answer": "cmn"}, "zh") == 0.5
    assert check("language_id", {"answer": "arb"}, "ara") == 0.5
    assert check("language_id", {"answer": "arb"}, "arb") == 1.0
    assert check("language_id", {"answer": "fra"}, "This is some French text, I think fra or deu") == 0.0


def test_chrf_matches_sacrebleu_and_gives_partial_credit():
    hypothesis = "The relationship between Obama and Netanyahu is not exactly friendly."
    reference = "The ties between Obama and Netanyahu are not particularly friendly."
    assert chrf(hypothesis, reference) == pytest.approx(0.615763793781, abs=1e-9)  # sacrebleu's CHRF, 61.5764
    assert chrf(reference, reference) == 1.0
    assert chrf("", reference) == 0.0
    assert chrf("zzzz qqqq", reference) == 0.0
    near = check("chrf", {"reference": "Everyone has the right to life"}, "Everyone has a right to life<|eot|>junk")
    far = check("chrf", {"reference": "Everyone has the right to life"}, "Everybody may live")
    assert 0 < far < near < 1


# Code, run in the sandbox.

def _family_item(name: str) -> Problem:
    family = code.FAMILIES_BY_NAME[name]
    return code.make_item(family, family.params(random.Random(0)), time_limit_s=1.0, memory_mb=256)


def test_every_code_family_reference_passes_its_own_tests_in_the_sandbox():
    for family in code.FAMILIES:
        item = _family_item(family.name)
        assert len(item.checker_args["tests"]) >= 3, family.name
        assert score(item, item.answer + "<|eot|>") == 1.0, (family.name, item.answer)


def test_code_answers_are_extracted_from_fences_tags_or_bare_text():
    item = _family_item("power")
    k = item.meta["k"]
    body = f"def power(x):\n    return x ** {k}\n"
    assert score(item, f"Here you go:\n```python\n{body}```\nDone.<|eot|>") == 1.0
    assert score(item, f"<|python_start|>{body}<|python_end|><|eot|>") == 1.0
    assert score(item, body) == 1.0
    assert score(item, f"```\ndef helper():\n    pass\n```\n```python\n{body}```") == 1.0
    assert score(item, "I cannot write code.") == 0.0


def test_a_batch_is_scored_in_order_with_code_checks_in_parallel():
    item = _family_item("linear")
    a, b = item.meta["a"], item.meta["b"]
    slow = "import time\ntime.sleep(0.5)\n"  # waits without CPU, like a sandbox process starting up
    right, wrong = f"{slow}def f(x):\n    return {a} * x + {b}\n", f"{slow}def f(x):\n    return 0\n"
    start = time.monotonic()
    rewards = score_all([item] * 8, [right, wrong] * 4, workers=8)
    assert rewards == [1.0, 0.0] * 4
    assert time.monotonic() - start < 8 * 0.5  # not one after the other
    with pytest.raises(ValueError):
        score_all([item], [])


def test_wrong_code_gets_partial_credit_for_the_tests_it_passes():
    item = _family_item("clamp")
    lo, hi = item.meta["lo"], item.meta["hi"]
    half_right = f"def clamp(x):\n    return max({lo}, x)\n"  # forgets the upper bound
    tests = item.checker_args["tests"]
    expected_share = sum(max(lo, t["args"][0]) == t["expected"] for t in tests) / len(tests)
    assert 0 < expected_share < 1
    assert score(item, half_right) == pytest.approx(expected_share)


def test_code_that_loops_forever_is_killed_within_the_limit():
    item = _family_item("linear")
    for body in ("while True:\n        pass", "import time\n    time.sleep(60)"):
        start = time.monotonic()
        assert score(item, f"def f(x):\n    {body}\n") == 0.0
        assert time.monotonic() - start < item.checker_args["time_limit_s"] + 2.5


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[4]) == sid:
                    members.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return members


def test_fork_bombs_huge_files_and_memory_hogs_score_zero_and_leave_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = set(Path(tempfile.gettempdir()).glob("herd-sandbox-*"))
    attacks = {
        "fork": "import os\ndef f(x):\n    while True:\n        os.fork()\n",
        "threads": "import threading\ndef f(x):\n    threading.Thread(target=lambda: None).start()\n    return 0\n",
        "file": "def f(x):\n    open('big', 'w').write('x' * 50_000_000)\n    return 0\n",
        "memory": "def f(x):\n    return len('x' * 10**10)\n",
        "spoof": ("import os\nos.write(1, b'{\"outputs\": [{\"value\": 0}]}\\n')\nprint('{\"outputs\": []}')\n"
                  "def f(x):\n    os._exit(0)\n"),
    }
    for name, attack in attacks.items():
        run = run_code(attack, "f", [[1]], time_limit_s=2.0)
        assert "value" not in run.outputs[0], (name, run)
    item = _family_item("linear")
    assert all(score(item, attack) == 0.0 for attack in attacks.values())
    assert list(tmp_path.iterdir()) == []
    assert set(Path(tempfile.gettempdir()).glob("herd-sandbox-*")) == before


def test_a_fork_is_refused_and_no_process_outlives_the_run():
    forker = ("import os, time\ndef f():\n    try:\n        pid = os.fork()\n    except OSError:\n"
              "        return [os.getsid(0), 'refused']\n    if pid == 0:\n        time.sleep(30)\n"
              "    return [os.getsid(0), 'forked']\n")
    sid, outcome = run_code(forker, "f", [[]], time_limit_s=1.0).outputs[0]["value"]
    assert outcome == "refused"
    assert _session_members(sid) == []  # the session is killed after the run, whatever was in it


# Generators.

def test_generators_are_deterministic_and_seeded(declarations):
    first, again = generate_all(declarations, SMALL), generate_all(declarations, SMALL)
    assert [p.model_dump() for p in first] == [p.model_dump() for p in again]
    other = generate_all(declarations, SMALL.model_copy(update={"seed": 1}))
    assert {p.id for p in first} != {p.id for p in other}


def test_every_capability_is_generated_with_counts_and_difficulties(problems):
    by_capability = {c: [p for p in problems if p.capability == c] for c in CAPABILITIES}
    wanted = {"arithmetic": 150, "strings": 150, "code": 60, "translate": 120, "language_id": 150, "continue": 150}
    for capability, items in by_capability.items():
        assert len(items) == wanted[capability], capability
        assert len({p.id for p in items}) == len(items)
        assert len({p.difficulty for p in items}) >= 3, capability  # a curriculum has something to order
    assert len({p.id for p in problems}) == len(problems)


def test_every_reference_answer_earns_full_reward(problems):
    for problem in problems:
        if problem.capability != "code":  # code references: one per family, above (a sandbox run each)
            assert score(problem, problem.answer + "<|eot|>") == 1.0, problem


def test_arithmetic_answers_are_right():
    for problem in arithmetic.generate(300, seed=3, max_digits=4):
        expression = re.search(r"[\d(][\d()+\-*]*\d\)?", problem.prompt.replace(" plus ", "+")
                               .replace(" minus ", "-").replace(" times ", "*")).group(0)
        assert int(problem.answer) == eval(expression), problem.prompt  # our own digits and operators only
    easy = [p for p in arithmetic.generate(300, seed=3) if p.difficulty == 1]
    assert easy and all(len(str(abs(int(p.answer)))) <= 2 for p in easy)


def test_string_answers_are_right():
    for problem in strings.generate(300, seed=5, words=["human", "rights", "dignity"]):
        word, family = problem.meta["word"], problem.meta["family"]
        assert re.search(rf"\b{word}\b", problem.prompt)
        if family == "reverse":
            assert problem.answer == word[::-1]
        elif family == "length":
            assert int(problem.answer) == len(word)
        elif family == "sort":
            assert problem.answer == "".join(sorted(word))
        elif family == "upper":
            assert problem.answer == word.upper()
        assert problem.meta["length"] == len(word)


def test_udhr_items_come_from_one_declaration_per_language(declarations, udhr_subset):
    assert udhr.load_declarations(udhr_subset.parent) == declarations  # the corpus folder reads as its file
    assert "und" not in declarations
    assert declarations["fra"].code == "fra" and declarations["cmn"].code.startswith("cmn")
    assert not declarations["cmn"].spaced and declarations["eng"].spaced
    # The heading line ("Article 1") is gone from every article.
    assert declarations["eng"].articles["1"][0].startswith("All human beings are born free")


def test_udhr_tasks_are_answerable_from_the_corpus(problems, declarations):
    for problem in problems:
        if problem.capability == "translate":
            src, tgt, article = problem.meta["src"], problem.meta["tgt"], problem.meta["article"]
            source = problem.prompt.split("\n", 1)[1]
            assert source in "\n".join(declarations[src].articles[article])
            assert problem.answer in "\n".join(declarations[tgt].articles[article])
        elif problem.capability == "language_id":
            snippet = problem.prompt.split("\n", 1)[1]
            assert snippet in " ".join(declarations[problem.answer].articles[problem.meta["article"]])
        elif problem.capability == "continue":
            prefix = problem.prompt.split("\n", 1)[1]
            text = "\n".join(p for ps in declarations[problem.meta["lang"]].articles.values() for p in ps)
            # The opening occurs once in the declaration, so its continuation is well defined.
            assert text.count(prefix) == 1
            glue = " " if declarations[problem.meta["lang"]].spaced else ""
            assert prefix + glue + problem.answer in text


# Split, serialisation, system prompts.

def test_split_shares_no_item_prompt_or_article(tmp_path, udhr_subset):
    summary = build_problem_sets(udhr_subset, tmp_path, SMALL)
    train, evaluation = read_jsonl(tmp_path / "train.jsonl"), read_jsonl(tmp_path / "eval.jsonl")
    assert summary["problems_train"] == len(train) and summary["problems_eval"] == len(evaluation)
    assert not {p.id for p in train} & {p.id for p in evaluation}
    assert not {p.prompt for p in train} & {p.prompt for p in evaluation}
    train_articles = {p.meta["article"] for p in train if "article" in p.meta}
    eval_articles = {p.meta["article"] for p in evaluation if "article" in p.meta}
    assert eval_articles and not train_articles & eval_articles
    index = json.loads((tmp_path / "index.json").read_text())
    assert set(index["eval_articles"]) >= eval_articles
    assert {p.capability for p in evaluation} == set(CAPABILITIES)
    # Another seed makes other items, but an article or a synthetic item keeps its side.
    other = tmp_path / "seed1"
    build_problem_sets(udhr_subset, other, SMALL.model_copy(update={"seed": 1}))
    assert json.loads((other / "index.json").read_text())["eval_articles"] == index["eval_articles"]
    sides = {p.id: "train" for p in train} | {p.id: "eval" for p in evaluation}
    moved = [p.id for p in read_jsonl(other / "eval.jsonl") if sides.get(p.id) == "train"]
    assert moved == []


def test_heldout_articles_are_stable_and_never_empty_or_everything():
    articles = ["preamble", *map(str, range(1, 31))]
    chosen = heldout_articles(articles, 0.01)
    assert len(chosen) == 1 and chosen == heldout_articles(reversed(articles), 0.01)
    assert len(heldout_articles(articles, 0.99)) == 30
    assert len(heldout_articles(articles, 0.1)) == 3


def test_jsonl_round_trip_keeps_items_and_their_rewards(problems, tmp_path):
    path = tmp_path / "items.jsonl"
    assert write_jsonl(problems, path) == len(problems)
    again = read_jsonl(path)
    assert again == problems
    for before, after in zip(problems[:200], again[:200]):
        if before.capability != "code":
            assert score(after, before.answer) == score(before, before.answer) == 1.0
    with pytest.raises(ValidationError):
        Problem.model_validate({**problems[0].model_dump(), "unknown": 1})
    with pytest.raises(ValidationError):
        Problem.model_validate({**problems[0].model_dump(), "checker": "vibes"})


def test_system_prompts_vary_by_seed_and_are_reproducible(problems):
    drawn = [system_prompt(p, seed=0) for p in problems[:300]]
    assert drawn == [system_prompt(p, seed=0) for p in problems[:300]]
    assert set(drawn) == {*SYSTEM_PROMPTS, None}
    assert drawn != [system_prompt(p, seed=1) for p in problems[:300]]
    own = problems[0].model_copy(update={"system": "You are a calculator."})
    assert system_prompt(own, seed=7) == "You are a calculator."


# Chat rendering on a tokenizer trained by the tokenizer stage's own code.

@pytest.fixture(scope="module")
def tokenizer(udhr_subset, tmp_path_factory):
    from herd.stages.tokenizer import TokenizerConfig
    from tasks.problems.chat import load_tokenizer
    from tasks.tokenizer.train import balanced_sample, save_for_transformers, train_tokenizer

    with udhr_subset.open(encoding="utf-8") as lines:
        docs = [json.loads(line) for line in lines]
    config = TokenizerConfig(vocab_size=1024, sample_chars_per_language=20_000)
    folder = tmp_path_factory.mktemp("tokenizer")
    save_for_transformers(train_tokenizer(balanced_sample(docs, config), config), folder)
    return load_tokenizer(folder)


def test_prompt_rendering_ends_with_the_assistant_header(tokenizer, problems):
    from tasks.problems.chat import render_prompt

    problem = problems[0]
    rendered = render_prompt(tokenizer, problem, "You are a helpful assistant.")
    assert rendered.text == ("<|begin_of_text|><|header_start|>system<|header_end|>\n\nYou are a helpful assistant.<|eot|>"
                             f"<|header_start|>user<|header_end|>\n\n{problem.prompt.strip()}<|eot|>"
                             "<|header_start|>assistant<|header_end|>\n\n")
    assert tokenizer.decode(rendered.input_ids) == rendered.text
    assert rendered.input_ids[0] == tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    assert rendered.assistant_mask is None


def test_answer_mask_covers_exactly_the_answer_and_eot_on_real_token_ids(tokenizer, problems):
    from tasks.problems.chat import render_prompt, render_with_answer

    eot = tokenizer.convert_tokens_to_ids("<|eot|>")
    for capability in CAPABILITIES:
        for problem in [p for p in problems if p.capability == capability][:15]:
            system = system_prompt(problem, seed=0)
            prompt = render_prompt(tokenizer, problem, system)
            full = render_with_answer(tokenizer, problem, system)
            n = len(prompt.input_ids)
            # What RL samples after the prompt is exactly what SFT trains on.
            assert full.input_ids[:n] == prompt.input_ids
            assert full.assistant_mask == [0] * n + [1] * (len(full.input_ids) - n)
            assert full.input_ids[-1] == eot
            assert tokenizer.decode(full.input_ids[n:]) == problem.answer.strip() + "<|eot|>"
    rejected = render_with_answer(tokenizer, problems[0], answer="wrong")
    assert tokenizer.decode([t for t, m in zip(rejected.input_ids, rejected.assistant_mask) if m]) == "wrong<|eot|>"


# The build and its config.

def test_build_writes_counts_that_match_its_files_and_nothing_partial(tmp_path, udhr_subset):
    config = SMALL.model_copy(update={"translate_languages": ["eng", "fra", "jpn"], "languages": ["eng", "fra", "rus"]})
    summary = build_problem_sets(udhr_subset, tmp_path, config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.jsonl", "index.json", "train.jsonl"]
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["missing_languages"] == ["jpn"]
    for split in ("train", "eval"):
        items = read_jsonl(tmp_path / f"{split}.jsonl")
        counts = index["splits"][split]
        assert counts["total"] == len(items)
        for capability, entry in counts["capability"].items():
            mine = [p for p in items if p.capability == capability]
            assert entry["total"] == len(mine) == summary.get(f"{split}_{capability}", 0)
            assert sum(entry["difficulty"].values()) == len(mine)
    used = {p.meta["lang"] for p in read_jsonl(tmp_path / "train.jsonl") if p.capability in {"language_id", "continue"}}
    assert used == {"eng", "fra", "rus"}
    first_lines = [json.loads(line)["capability"] for line in (tmp_path / "train.jsonl").read_text().splitlines()[:60]]
    assert len(set(first_lines)) >= 5  # shuffled: the head of the file mixes capabilities


def test_config_refuses_bad_fields_and_every_field_moves_the_output():
    with pytest.raises(ValidationError, match="languages.0"):
        ProblemsConfig(languages=["en"])
    same = ProblemsConfig(languages=["fra", "eng", "fra"])
    assert same.versioned_fields() == ProblemsConfig(languages=["eng", "fra"]).versioned_fields()
    with pytest.raises(ValidationError):
        ProblemsConfig(count_sudoku=3)
    with pytest.raises(ValidationError):
        ProblemsConfig(heldout_fraction=1.0)
    assert set(ProblemsConfig().versioned_fields()) == set(ProblemsConfig.model_fields)
