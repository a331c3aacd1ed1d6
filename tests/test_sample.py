"""Sampling on the real bundled GGUF models, through llama.cpp and through a real local server."""

from __future__ import annotations

import http.server
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from deepdistill_tui.core.data.ingest import ingest
from deepdistill_tui.core.pipeline.events import noop
from deepdistill_tui.core.recipe import Recipe, load_recipe
from deepdistill_tui.core.store.database import Store
from deepdistill_tui.core.teachers.sample import sample
from deepdistill_tui.core.weights.files import fetch


def tiny(**teacher_overrides: Any) -> Recipe:
    """The tiny recipe with short answers, so that tests stay fast, and both of its teachers sampled."""
    data = load_recipe("tiny").model_dump()
    data["selection"]["difficulty_teachers"] = ["gemma3-270m"]
    for t in data["teachers"]:
        t["sampling"]["max_tokens"] = 24
        t.update(teacher_overrides.get(t["name"], {}))
    return Recipe.model_validate(data)


@pytest.fixture
def ingested(store: Store) -> Store:
    ingest(store, load_recipe("tiny").data)
    return store


def test_passes_are_stored_with_provenance_and_resume_is_a_no_op(ingested: Store) -> None:
    recipe = tiny()
    reports = sample(ingested, recipe, limit=2, emit=noop)
    assert [r.error for r in reports] == [None, None]
    assert ingested.count("samples") == 2 * 4 * 2
    rows = ingested.conn.execute(
        "SELECT teacher_id, pass_index, prompt_tokens, completion_tokens, finish_reason, seconds, seed"
        " FROM samples").fetchall()
    for _tid, p, pt, ct, reason, secs, seed in rows:
        assert 0 <= p < 4 and pt > 0 and 0 <= ct <= 24 and reason in ("stop", "length")
        assert secs > 0 and seed is not None
    for tid in {r[0] for r in rows}:  # a seed per (query, pass) of each teacher
        seeds = [r[6] for r in rows if r[0] == tid]
        assert len(set(seeds)) == len(seeds) == 8
    again = sample(ingested, recipe, limit=2, emit=noop)
    assert [r.samples for r in again] == [0, 0] and ingested.count("samples") == 16


def test_the_sample_stage_leaves_the_quality_filters_fresh(ingested: Store) -> None:
    """Selection reads the training teacher's quality flags; the stage that adds its responses works
    them out, so no read after it goes through every text (before: stale until the next read)."""
    from deepdistill_tui.core.pipeline.params import SampleParams
    from deepdistill_tui.core.pipeline.runner import run_stage

    recipe = tiny()
    run_stage(ingested, "sample", recipe, SampleParams(limit=1))
    fresh = ingested.conn.execute(
        "SELECT c.version = v.version FROM quality_cache c JOIN teacher_versions v USING (teacher_id)"
        " JOIN teachers t USING (teacher_id) WHERE t.name = ?",
        (recipe.selection.training_teacher,)).fetchall()
    assert fresh == [(1,)]


def test_changed_sampling_parameter_is_a_new_teacher(ingested: Store) -> None:
    sample(ingested, tiny(), teacher_name="smollm2-135m", limit=1, emit=noop)
    changed = tiny(**{"smollm2-135m": {"sampling": {"temperature": 0.9, "max_tokens": 24}}})
    sample(ingested, changed, teacher_name="smollm2-135m", limit=1, emit=noop)
    assert ingested.count("teachers") == 2 and ingested.count("samples") == 8


def test_bad_model_files_fail_their_teacher_only(ingested: Store, tmp_path: Path) -> None:
    wrong_magic = tmp_path / "wrong.gguf"
    wrong_magic.write_bytes(b"NOPE" + b"\0" * 1024)
    real = fetch(load_recipe("tiny").teachers[0].model)  # type: ignore[arg-type]
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(real.read_bytes()[: 1 << 20])
    for bad, cause in ((wrong_magic, "is not a GGUF file"), (truncated, "cannot load")):
        recipe = tiny(**{"gemma3-270m": {"model": {"path": str(bad)}}})
        reports = {r.teacher: r for r in sample(ingested, recipe, limit=1, emit=noop)}
        assert reports["smollm2-135m"].error is None
        error = reports["gemma3-270m"].error
        assert error is not None and error.startswith("teacher gemma3-270m:") and cause in error
        assert "\n" not in error
    assert ingested.count("samples") == 4  # smollm2's passes for the one query, written once


def test_prompt_longer_than_context_is_skipped_not_fatal(ingested: Store) -> None:
    recipe = tiny(**{"smollm2-135m": {"n_ctx": 256, "sampling": {"max_tokens": 250}}})
    [report] = sample(ingested, recipe, teacher_name="smollm2-135m", limit=2, emit=noop)
    assert report.error is None and len(report.skipped) == 2
    assert "exceeds n_ctx 256" in report.skipped[0]
    assert ingested.count("samples") == 0


def _cli(db: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "deepdistill_tui", "sample", "--db", str(db),
                             "--teacher", "smollm2-135m", "--json", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "kill.db"
    with Store(db) as s:
        ingest(s, load_recipe("tiny").data)
    rng = random.Random(1234)
    counts = []
    for _ in range(4):
        # 12 queries: with 6, a quiet machine sometimes finished all of them before the fourth kill.
        proc = _cli(db, "--limit", "12")
        time.sleep(rng.uniform(1.0, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Store(db) as s:
            counts.append(s.count("samples"))
    assert _cli(db, "--limit", "12").wait(timeout=300) == 0
    with Store(db) as s:
        per_query = s.conn.execute(
            "SELECT query_id, count(*), count(DISTINCT pass_index) FROM samples GROUP BY query_id"
        ).fetchall()
        assert counts == sorted(counts) and counts[-1] < 48  # kills landed mid-run, work was kept
        assert len(per_query) == 12 and all(n == 4 and d == 4 for _, n, d in per_query)
        assert s.count("samples") == 48
        assert s.scalar("SELECT count(*) FROM samples WHERE pass_index % 4 != pass_index") == 0


# ----------------------------------------------------------------- the OpenAI-compatible backend


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server() -> Any:
    """llama-cpp-python's own OpenAI-compatible server, serving the bundled SmolLM2 on loopback."""
    model = fetch(load_recipe("tiny").teachers[0].model)  # type: ignore[arg-type]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not start in 90 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def openai_recipe(base_url: str, **extra: Any) -> Recipe:
    data = load_recipe("tiny").model_dump()
    data["teachers"] = [
        {"name": "served", "backend": "openai", "base_url": base_url, "served_model": "smollm2",
         "sampling": {"max_tokens": 16, "temperature": 0.7}, "concurrency": 4, **extra},
        {**data["teachers"][0], "sampling": {**data["teachers"][0]["sampling"], "max_tokens": 16}},
    ]
    data["selection"]["training_teacher"] = "served"
    data["selection"]["difficulty_teachers"] = ["smollm2-135m"]
    data["grading"]["judge_teacher"] = None
    return Recipe.model_validate(data)


def test_openai_backend_against_a_real_local_server(ingested: Store, llama_server: str) -> None:
    [report] = sample(ingested, openai_recipe(llama_server), teacher_name="served", limit=2, emit=noop)
    assert report.error is None and report.samples == 8
    rows = ingested.conn.execute("SELECT response, completion_tokens FROM samples").fetchall()
    assert all(ct > 0 for _, ct in rows) and any(r.strip() for r, _ in rows)
    teacher = ingested.conn.execute("SELECT backend, model FROM teachers").fetchone()
    assert teacher == ("openai", f"{llama_server}#smollm2")


def test_judge_through_a_server_uses_structured_output(llama_server: str) -> None:
    """The same rubric schema goes to an OpenAI-compatible server as `response_format`; llama.cpp's
    server turns it into a grammar, so the reply parses."""
    from deepdistill_tui.core.grading.judge import llm_judge
    from deepdistill_tui.core.teachers.openai import OpenAIBackend

    backend = OpenAIBackend(openai_recipe(llama_server, sampling={"max_tokens": 64}).teacher("served"))
    try:
        v = llm_judge(backend, "other", "Give two tips for sleeping well.", "Keep a schedule.", None)
    finally:
        backend.close()
    assert v.status == "ok" and v.score is not None and 0 <= v.score <= 1, v


def test_a_cluster_shard_samples_through_the_endpoint_given_on_the_command_line(
        ingested: Store, llama_server: str, tmp_path: Path) -> None:
    """What a bundle's array task runs: `sample` on a shard database, the recipe naming no live
    server, the address coming from --endpoint (as the serve job publishes it)."""
    import yaml

    from deepdistill_tui.core.store.shards import write_shards

    recipe_file = tmp_path / "recipe.yaml"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    recipe_file.write_text(yaml.safe_dump(openai_recipe(dead).model_dump(mode="json")))
    [first, *_] = write_shards(ingested, 4, tmp_path / "shards")
    cmd = [sys.executable, "-m", "deepdistill_tui", "sample", "--recipe", str(recipe_file), "--db",
           first["path"], "--teacher", "served", "--limit", "1", "--endpoint", f"served={llama_server}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with Store(first["path"]) as shard:
        assert shard.count("samples") == 4
        assert shard.scalar("SELECT model FROM teachers") == f"{llama_server}#smollm2"
        shard_teacher = shard.scalar("SELECT teacher_id FROM teachers")
    # The same served model behind another address is the same teacher: shards merge as one.
    from deepdistill_tui.core.teachers.sample import teacher_identity

    moved = openai_recipe("http://10.0.0.7:8001/v1").teacher("served")
    assert teacher_identity(moved, None).teacher_id == shard_teacher


def test_endpoint_down_fails_that_teacher_and_others_go_on(ingested: Store) -> None:
    recipe = openai_recipe(f"http://127.0.0.1:{free_port()}/v1", timeout_s=2)
    reports = {r.teacher: r for r in sample(ingested, recipe, limit=1, emit=noop)}
    assert reports["served"].error is not None
    assert reports["served"].error.startswith("teacher served: http://127.0.0.1:")
    assert "failed after 4 attempts" in reports["served"].error
    assert reports["smollm2-135m"].error is None and reports["smollm2-135m"].samples == 4


class _Garbage(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = b'{"choices": "not a list"}' if "chat" in self.path else b"<html>oops"
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_garbage_from_the_endpoint_is_a_clear_error(ingested: Store) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        recipe = openai_recipe(f"http://127.0.0.1:{server.server_address[1]}/v1")
        [report] = sample(ingested, recipe, teacher_name="served", limit=1, emit=noop)
    finally:
        server.shutdown()
    assert report.error is not None and "malformed response" in report.error
    assert ingested.count("samples") == 0


def _reply(content: object, n: int = 1) -> bytes:
    return json.dumps({"choices": [{"message": {"content": content}, "finish_reason": "stop"}] * n,
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()


FAULTS: dict[str, bytes | None] = {
    # the whole HTTP response each fault sends (None: trickle a valid body a byte every 0.3 s)
    "array": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
    "null": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnull",
    "bad-utf8": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\"\xff\xfe\"",
    "truncated": b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"choices\": [",
    "garbage-status": b"SPLORK 999 ???\r\n\r\n",
    "content-null": b"HTTP/1.1 200 OK\r\n\r\n" + _reply(None),
    "five-choices": b"HTTP/1.1 200 OK\r\n\r\n" + _reply("hi", 5),
    "huge": b"HTTP/1.1 200 OK\r\n\r\n" + _reply("x" * 3_000_000),
    "trickle": None,
}


class _Faulty(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        fault = FAULTS[self.server.fault]  # type: ignore[attr-defined]
        if fault is None:
            body = _reply("slow")
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.3)
            return
        self.wfile.write(fault)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up on a fault is the point, not an error


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_faulty_server_is_a_teacher_error_naming_the_cause(fault: str) -> None:
    """Each way a server can misbehave ends as one TeacherError naming the teacher, within the
    teacher's timeout (a trickling server included), never a traceback or an empty sample."""
    from deepdistill_tui.core.teachers.base import TeacherError
    from deepdistill_tui.core.teachers.openai import OpenAIBackend

    server = _QuietServer(("127.0.0.1", 0), _Faulty)
    server.fault = fault  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    teacher = openai_recipe(url, timeout_s=2, sampling={"max_tokens": 64}).teacher("served")
    backend = OpenAIBackend(teacher, retries=0)
    t0 = time.perf_counter()
    try:
        with pytest.raises(TeacherError, match="teacher served") as err:
            backend.generate("What is 2 + 2?", [1])
    finally:
        backend.close()
        server.shutdown()
    assert time.perf_counter() - t0 < 6, fault
    assert "\n" not in str(err.value)


def test_second_sampler_waits_for_the_first(tmp_path: Path) -> None:
    db = tmp_path / "two.db"
    with Store(db) as s:
        ingest(s, load_recipe("tiny").data)
    first, second = _cli(db, "--limit", "3"), _cli(db, "--limit", "3")
    assert first.wait(timeout=300) == 0 and second.wait(timeout=300) == 0
    with Store(db) as s:
        assert s.count("samples") == 12


# ----------------------------------------------------------------- continuous batching


def test_the_store_is_the_same_whatever_the_sequences_in_flight(tmp_path: Path) -> None:
    """One query at a time (4 sequences) or four at once (16): the same queries, passes and keys,
    every query whole."""
    results = []
    for sequences in (4, 16):
        with Store(tmp_path / f"s{sequences}.db") as s:
            ingest(s, load_recipe("tiny").data)
            recipe = tiny(**{"smollm2-135m": {"max_sequences": sequences}})
            [report] = sample(s, recipe, teacher_name="smollm2-135m", limit=6, emit=noop)
            assert report.error is None and report.queries == 6 and report.samples == 24
            results.append(s.conn.execute(
                "SELECT query_id, group_concat(pass_index) FROM (SELECT * FROM samples"
                " ORDER BY query_id, pass_index) GROUP BY query_id").fetchall())
    assert results[0] == results[1] and all(p == "0,1,2,3" for _, p in results[0])


def test_queries_come_and_go_while_others_run() -> None:
    """Eight sequences over queries of 2 passes: four queries in flight, new ones admitted as old ones
    end, every query back exactly once with all its passes, short ones not held behind a long one."""
    from deepdistill_tui.core.teachers.base import Request
    from deepdistill_tui.core.teachers.llama_cpp import LlamaCppBackend

    teacher = tiny(**{"smollm2-135m": {"sampling": {"max_tokens": 48, "temperature": 0.7}}}).teachers[0]
    backend = LlamaCppBackend(teacher, fetch(teacher.model), max_seqs=8,  # type: ignore[arg-type]
                              passes=2)
    questions = ["Write a long story about a dragon and a knight."]
    questions += [f"What is {i} + {i}? Answer with the number only." for i in range(7)]
    seen_in_flight, order = [], []

    def requests() -> Any:
        for i, q in enumerate(questions):
            seen_in_flight.append(backend.in_flight)
            yield Request(i, q, [10 * i + p for p in range(2)])

    try:
        for req, outs in backend.generate_many(requests()):
            assert not isinstance(outs, Exception)
            assert len(outs) == 2 and all(1 <= c.completion_tokens <= 48 for c in outs)
            order.append(req.key)
    finally:
        backend.close()
    assert sorted(order) == list(range(8))
    assert max(seen_in_flight) >= 6  # queries were admitted while others were running
    assert order.index(0) > 0, order  # later, shorter queries finished while the story ran


def test_the_worked_examples_are_decoded_once_and_answers_are_the_same(monkeypatch: Any) -> None:
    """Every prompt of the tiny teacher starts with the same worked examples (~170 tokens): they are
    decoded once and shared, so each query decodes only its question; greedy answers are the ones the
    engine gives without sharing."""
    from deepdistill_tui.core.teachers import llama_cpp as backends

    teacher = tiny(**{"smollm2-135m": {"sampling": {"max_tokens": 16, "temperature": 0.0}}}).teachers[0]
    questions = [f"What is {a} + {b}?" for a, b in ((3, 4), (12, 9), (7, 7), (25, 8), (6, 2), (9, 1))]

    def run() -> tuple[dict[int, list[str]], int]:
        backend = backends.LlamaCppBackend(teacher, fetch(teacher.model),  # type: ignore[arg-type]
                                           max_seqs=8, passes=2)
        try:
            outs = backend.generate_many(backends.Request(i, q, [1, 2]) for i, q in enumerate(questions))
            return ({r.key: [c.text for c in o] for r, o in outs},  # type: ignore[union-attr]
                    backend.prompt_tokens_decoded)
        finally:
            backend.close()

    shared, decoded_shared = run()
    monkeypatch.setattr(backends, "MIN_SHARED_PREFIX", 10**9)  # sharing off
    alone, decoded_alone = run()
    assert shared == alone
    assert decoded_alone > 6 * 150 and decoded_shared < decoded_alone / 3, (decoded_shared, decoded_alone)


def test_a_gpu_without_an_offload_build_stops_before_sampling() -> None:
    """With a CUDA device and a CPU-only llama.cpp, sampling stops with one line naming the rebuild;
    with no GPU, or an offload build, or n_gpu_layers 0, nothing is said."""
    from deepdistill_tui.core.teachers.llama_cpp import CUDA_INSTALL, offload_problem

    small = load_recipe("small")
    teacher = small.teachers[0]
    assert teacher.n_gpu_layers == -1 and teacher.flash_attn is True
    problem = offload_problem(teacher, cuda_present=True, offload_supported=False)
    assert problem is not None and "\n" not in problem and CUDA_INSTALL in problem
    assert teacher.name in problem and "README" in problem
    assert offload_problem(teacher, cuda_present=False, offload_supported=False) is None
    assert offload_problem(teacher, cuda_present=True, offload_supported=True) is None
    cpu = teacher.model_copy(update={"n_gpu_layers": 0})
    assert offload_problem(cpu, cuda_present=True, offload_supported=False) is None
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert CUDA_INSTALL in readme  # the command the message names is the README's


def test_sample_into_a_log_file_prints_progress_at_a_bounded_rate(tmp_path: Path) -> None:
    """Not on a terminal (nohup, a pipe), each bar is a line: one at the start, then at most one per
    5% or 10 s, one at the end, written while the stage runs, each with counts, rate and time left."""
    import re

    db = tmp_path / "log.db"
    with Store(db) as s:
        ingest(s, load_recipe("tiny").data)
    log = tmp_path / "sample.log"
    with log.open("w") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "deepdistill_tui", "sample", "--db", str(db),
                                 "--limit", "30"], stdout=out, stderr=subprocess.STDOUT)
        seen_early = False
        while proc.poll() is None:
            done = re.findall(r"sampling smollm2-135m: (\d+)/30", log.read_text())
            seen_early |= any(0 < int(d) < 30 for d in done)
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
    assert proc.returncode == 0, log.read_text()[-2000:]
    lines = [line for line in log.read_text().splitlines() if "sampling smollm2-135m:" in line]
    done = [int(re.search(r": (\d+)/30", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert seen_early, lines  # progress reached the file before the stage ended
    assert done[0] == 0 and done[-1] == 30 and done == sorted(done)
    assert 3 <= len(lines) <= 2 + 20 + elapsed / 10, lines
    assert all("/s" in line and "left" in line for line in lines[1:]), lines
