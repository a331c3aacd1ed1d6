"""The OpenAI-compatible backend: any server that speaks the API (vLLM, SGLang, llama.cpp's server)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

from deepdistill_tui.core.recipe import OpenAITeacher
from deepdistill_tui.core.teachers.base import (
    COMPLETION_STOP,
    RESPONSE_BYTES_PER_TOKEN,
    Answers,
    Backend,
    Completion,
    Request,
    TeacherError,
    chat_messages,
    completion_prompt,
)


class OpenAIBackend(Backend):
    """Any OpenAI-compatible server (llama.cpp's, vLLM, SGLang): bounded concurrency, retries, timeouts."""

    def __init__(self, teacher: OpenAITeacher, retries: int = 3, backoff_s: float = 0.5) -> None:
        self.teacher = teacher
        self.url = teacher.base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.pool = ThreadPoolExecutor(max_workers=teacher.concurrency)
        self.schema_style: str | None = None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _payload(self, question: str, seed: int,
                 schema: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        t, s = self.teacher, self.teacher.sampling
        body: dict[str, Any] = {"model": t.served_model or t.name, "max_tokens": s.max_tokens,
                                "temperature": s.temperature, "top_p": s.top_p, "seed": seed}
        if schema is not None:
            body["response_format"] = self._response_format(schema)
        if s.top_k:
            body["top_k"] = s.top_k
        if t.template == "completion":
            return "/completions", {**body, "prompt": completion_prompt(t, question),
                                    "stop": [COMPLETION_STOP]}
        return "/chat/completions", {**body, "messages": chat_messages(t, question)}

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Structured output in the server's dialect: OpenAI's json_schema (vLLM, SGLang, llama.cpp),
        or json_object with a schema (llama-cpp-python's server), learnt from the first refusal."""
        if self.schema_style == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}

    def _post(self, path: str, body: dict[str, Any], retries: int | None = None) -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        last: Exception | None = None
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                with urllib.request.urlopen(req, timeout=self.teacher.timeout_s) as resp:
                    data = json.loads(self._read_body(resp, time.monotonic() + self.teacher.timeout_s))
                if not isinstance(data, dict):
                    raise TeacherError(f"teacher {self.teacher.name}: {self.url}{path} answered "
                                       f"{type(data).__name__} JSON, not an object")
                return data
            except urllib.error.HTTPError as exc:
                last = exc
                if exc.code < 500 and exc.code != 429:
                    break  # a client error will not succeed on retry
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException,
                    ValueError) as exc:  # ValueError: bad JSON or bad UTF-8 in the body
                last = exc
            if attempt < retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise TeacherError(f"teacher {self.teacher.name}: {self.url}{path} failed after "
                           f"{retries + 1} attempts ({_reason(last)})")

    def _one(self, question: str, seed: int, schema: dict[str, Any] | None = None) -> Completion:
        t0 = time.perf_counter()
        path, body = self._payload(question, seed, schema)
        if schema is not None and self.schema_style is None:
            try:  # the first structured request finds out which dialect the server speaks
                data = self._post(path, body, retries=0)
                self.schema_style = "json_schema"
            except TeacherError:
                self.schema_style = "json_object"
                path, body = self._payload(question, seed, schema)
                data = self._post(path, body)
        else:
            data = self._post(path, body)
        try:
            choices = data["choices"]
            if not isinstance(choices, list) or len(choices) != 1:
                raise ValueError(f"{len(choices) if isinstance(choices, list) else 'no'} choices for one")
            choice = choices[0]
            text = choice["text"] if path == "/completions" else choice["message"]["content"]
            if not isinstance(text, str):
                raise ValueError(f"the reply's content is {json.dumps(text)[:20]}, not text")
            usage = data.get("usage") or {}
            return Completion(text, int(usage.get("prompt_tokens", 0)),
                              int(usage.get("completion_tokens", 0)),
                              str(choice.get("finish_reason") or "stop"), time.perf_counter() - t0)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise TeacherError(f"teacher {self.teacher.name}: malformed response from {self.url}{path} "
                               f"({exc}; {str(data)[:80]!r})") from exc

    def _read_body(self, resp: Any, deadline: float) -> bytes:
        """The body within the request's total deadline (a server trickling bytes cannot hold a
        request past it) and under a size cap that max_tokens justifies."""
        cap = RESPONSE_BYTES_PER_TOKEN * self.teacher.sampling.max_tokens + (1 << 16)
        body = bytearray()
        while chunk := resp.read1(1 << 16):
            body += chunk
            if len(body) > cap:
                raise TeacherError(f"teacher {self.teacher.name}: a reply of over {cap} bytes for "
                                   f"max_tokens {self.teacher.sampling.max_tokens}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete reply within {self.teacher.timeout_s:g} s")
        return bytes(body)

    def generate_many(self, requests: Iterable[Request],
                      schema: dict[str, Any] | None = None) -> Answers:
        """Requests across queries, at most ``concurrency`` at a time; each query comes back when its
        last pass has."""
        todo = iter(requests)
        in_flight: dict[Any, tuple[Request, list[Any]]] = {}
        slots = self.teacher.concurrency
        while True:
            while sum(len(fs) for _, fs in in_flight.values()) < slots:
                req = next(todo, None)
                if req is None:
                    break
                futures = [self.pool.submit(self._one, req.question, seed, schema) for seed in req.seeds]
                in_flight[id(req)] = (req, futures)
            if not in_flight:
                return
            done = next((k for k, (_, fs) in in_flight.items() if all(f.done() for f in fs)), None)
            if done is None:
                wait([f for _, fs in in_flight.values() for f in fs], return_when=FIRST_COMPLETED)
                continue
            req, futures = in_flight.pop(done)
            yield req, [f.result() for f in futures]

    def generate(self, question: str, seeds: list[int],
                 schema: dict[str, Any] | None = None) -> list[Completion]:
        futures = [self.pool.submit(self._one, question, seed, schema) for seed in seeds]
        return [f.result() for f in futures]


def _reason(exc: Exception | None) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def open_backend(teacher: OpenAITeacher, passes: int, sequences: int | None = None,
                 emit: object = None) -> tuple[OpenAIBackend, None]:
    """A client for the teacher's server; ``concurrency`` bounds the requests in flight, not
    ``sequences`` (the server batches)."""
    return OpenAIBackend(teacher), None
