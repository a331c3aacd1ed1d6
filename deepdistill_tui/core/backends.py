"""Teacher backends: llama.cpp in process (batched passes) and any OpenAI-compatible server.

Both answer one prompt ``n`` times and return one ``Completion`` per pass. The llama.cpp backend decodes
the passes as ``n`` sequences of one batch that share the prompt's KV cache, sampled by llama.cpp's own
sampler chains (Python-side sampling over a 49k vocabulary costs as much as the decode itself).
"""

from __future__ import annotations

import ctypes
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import Teacher
from deepdistill_tui.core.text import think_prefill

COMPLETION_STOP = "\nQ:"


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    seconds: float
    prefill: str = ""  # prompt text that opened the response (R1's "<think>\n"); see text.think_prefill


class Backend(Protocol):
    def generate(self, question: str, seeds: list[int],
                 schema: dict[str, Any] | None = None) -> list[Completion]:
        """One completion per seed; with ``schema``, every completion is JSON of that schema
        (a llama.cpp grammar, or the server's structured output)."""
        ...

    def close(self) -> None: ...


class TeacherError(DeepDistillError):
    """A teacher that cannot answer: the message names the teacher and the cause."""


def completion_prompt(teacher: Teacher, question: str) -> str:
    """The few-shot Q:/A: prompt that base models need; they stop at the next "Q:"."""
    return f"{teacher.few_shot}Q: {question}\nA:"


def chat_messages(teacher: Teacher, question: str) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": question}]
    if teacher.system_prompt:
        messages.insert(0, {"role": "system", "content": teacher.system_prompt})
    return messages


def default_threads() -> int:
    """All cores this process may use: one sampler at a time holds them (see sample.sampler_lock)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---------------------------------------------------------------- llama.cpp


class LlamaCppBackend:
    def __init__(self, teacher: Teacher, model_path: Path, max_seqs: int,
                 threads: int | None = None) -> None:
        import llama_cpp
        from llama_cpp import llama_chat_format

        self.C = llama_cpp
        self.teacher = teacher
        self.max_seqs = max_seqs
        self.threads = threads or teacher.threads or default_threads()
        s = teacher.sampling
        try:
            # The high-level object gives us the tokenizer and the GGUF chat template; its own small
            # context is unused. Our context holds max_seqs sequences that share the prompt's cells.
            self.llm = llama_cpp.Llama(str(model_path), n_ctx=256, n_threads=self.threads,
                                       verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise TeacherError(f"teacher {teacher.name}: cannot load {model_path} ({exc})") from exc
        self.n_ctx_train = self.llm._model.n_ctx_train()
        if teacher.n_ctx > self.n_ctx_train:
            raise TeacherError(f"teacher {teacher.name}: n_ctx {teacher.n_ctx} is larger than the "
                               f"model's training context {self.n_ctx_train}")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = teacher.n_ctx + (max_seqs - 1) * s.max_tokens
        params.n_batch = max(512, max_seqs)
        params.n_ubatch = params.n_batch
        params.n_seq_max = max_seqs
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = self.threads
        self.ctx = llama_cpp.llama_init_from_model(self.llm._model.model, params)
        if not self.ctx:
            raise TeacherError(f"teacher {teacher.name}: llama.cpp could not create a context of "
                               f"{params.n_ctx} tokens (out of memory?)")
        self.n_batch = params.n_batch
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, max_seqs)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        self.formatter = None
        template = self.llm.metadata.get("tokenizer.chat_template")
        if teacher.template == "chat":
            if not template:
                raise TeacherError(f"teacher {teacher.name}: the model has no chat template; use "
                                   "template: completion with few_shot examples")
            eos = self.llm._model.token_get_text(self.llm.token_eos())
            bos = self.llm._model.token_get_text(self.llm.token_bos()) if self.llm.token_bos() >= 0 else ""
            self.formatter = llama_chat_format.Jinja2ChatFormatter(template, eos, bos)

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.C.llama_batch_free(self.batch)
            self.C.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "llm", None):
            self.llm.close()

    def prompt_text(self, question: str) -> str:
        if self.formatter is not None:
            messages: Any = chat_messages(self.teacher, question)
            return str(self.formatter(messages=messages).prompt)
        return completion_prompt(self.teacher, question)

    def _sampler(self, seed: int, grammar: str | None = None) -> Any:
        C, s = self.C, self.teacher.sampling
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        if grammar is not None:  # first, so that every later stage sees only tokens the grammar allows
            g = C.llama_sampler_init_grammar(self.vocab, grammar.encode("utf-8"), b"root")
            if not g:
                raise TeacherError(f"teacher {self.teacher.name}: llama.cpp rejected the grammar")
            C.llama_sampler_chain_add(chain, g)
        if s.temperature == 0:
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
            return chain
        if s.top_k:
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_k(s.top_k))
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_p(s.top_p, 1))
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_temp(s.temperature))
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Decode (token, position, sequence, wants_logits) entries in one batch."""
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(entries):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(entries)
        rc = self.C.llama_decode(self.ctx, b)
        if rc != 0:
            raise TeacherError(f"teacher {self.teacher.name}: llama_decode failed ({rc}): the "
                               "context is too small for the prompt and max_tokens")

    def _prefill(self, tokens: list[int]) -> None:
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            last = start + len(chunk) == len(tokens)
            self._decode([(t, start + i, 0, last and i == len(chunk) - 1)
                          for i, t in enumerate(chunk)])

    def generate(self, question: str, seeds: list[int],
                 schema: dict[str, Any] | None = None) -> list[Completion]:
        n, s = len(seeds), self.teacher.sampling
        grammar = None
        if schema is not None:
            from llama_cpp.llama_grammar import json_schema_to_gbnf

            grammar = json_schema_to_gbnf(json.dumps(schema))
        if n > self.max_seqs:
            raise ValueError(f"{n} passes, backend sized for {self.max_seqs}")
        t0 = time.perf_counter()
        text = self.prompt_text(question)
        prompt = self.llm.tokenize(text.encode("utf-8"), add_bos=not self._has_bos(text), special=True)
        if len(prompt) + s.max_tokens > self.teacher.n_ctx:
            raise PromptTooLong(f"teacher {self.teacher.name}: prompt of {len(prompt)} tokens plus "
                                f"max_tokens {s.max_tokens} exceeds n_ctx {self.teacher.n_ctx}")
        mem = self.C.llama_get_memory(self.ctx)
        self.C.llama_memory_clear(mem, True)
        self._prefill(prompt)
        for seq in range(1, n):
            self.C.llama_memory_seq_cp(mem, 0, seq, -1, -1)
        samplers = [self._sampler(seed, grammar) for seed in seeds]
        try:
            outs = self._run_sequences(samplers, len(prompt))
        finally:
            for smp in samplers:
                self.C.llama_sampler_free(smp)
        seconds = time.perf_counter() - t0
        prefill = think_prefill(text)
        return [Completion(out, len(prompt), ntok, reason, seconds, prefill) for out, ntok, reason in outs]

    def response_logprobs(self, question: str, response: str) -> list[float]:
        """Log-probability of each token of ``response`` after this teacher's prompt for ``question``
        (the perplexity filter's score). The response is cut to fit the context."""
        import numpy as np

        text = self.prompt_text(question)
        prompt = self.llm.tokenize(text.encode("utf-8"), add_bos=not self._has_bos(text), special=True)
        target = self.llm.tokenize(response.encode("utf-8"), add_bos=False, special=False)
        target = target[: max(0, self.teacher.n_ctx - len(prompt))]
        if not target:
            return []
        n_vocab = self.C.llama_vocab_n_tokens(self.vocab)

        def logprob(index: int, token: int) -> float:
            logits = np.ctypeslib.as_array(self.C.llama_get_logits_ith(self.ctx, index), shape=(n_vocab,))
            top = float(logits.max())
            return float(logits[token]) - top - float(np.log(np.exp(logits - top).sum()))

        self.C.llama_memory_clear(self.C.llama_get_memory(self.ctx), True)
        self._prefill(prompt)
        out = [logprob(-1, target[0])]
        feed = target[:-1]  # token i's logits predict token i + 1
        for start in range(0, len(feed), self.n_batch):
            chunk = feed[start : start + self.n_batch]
            self._decode([(t, len(prompt) + start + i, 0, True) for i, t in enumerate(chunk)])
            out += [logprob(i, target[start + i + 1]) for i in range(len(chunk))]
        return out

    def _has_bos(self, prompt: str) -> bool:
        """Chat templates that write the BOS token themselves must not get a second one."""
        bos = self.llm.token_bos()
        return bos >= 0 and prompt.startswith(self.llm._model.token_get_text(bos))

    def _run_sequences(self, samplers: list[Any], n_prompt: int) -> list[tuple[str, int, str]]:
        C, s = self.C, self.teacher.sampling
        n = len(samplers)
        pieces: list[bytearray] = [bytearray() for _ in range(n)]
        counts = [0] * n
        reasons = ["length"] * n
        active = list(range(n))
        logit_index = dict.fromkeys(range(n), -1)  # all sequences start from the prompt's last logits
        stop = COMPLETION_STOP.encode() if self.teacher.template == "completion" else None
        buf = (ctypes.c_char * 256)()
        while active:
            step: list[tuple[int, int, int, bool]] = []
            still: list[int] = []
            for seq in active:
                tok = C.llama_sampler_sample(samplers[seq], self.ctx, logit_index[seq])
                if C.llama_vocab_is_eog(self.vocab, tok):
                    reasons[seq] = "stop"
                    continue
                size = C.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, False)
                pieces[seq] += buf.raw[: max(size, 0)]
                counts[seq] += 1
                if stop and stop in pieces[seq]:
                    del pieces[seq][pieces[seq].index(stop):]
                    reasons[seq] = "stop"
                    continue
                if counts[seq] >= s.max_tokens:
                    continue
                step.append((tok, n_prompt + counts[seq] - 1, seq, True))
                still.append(seq)
            if not step:
                break
            self._decode(step)
            logit_index = {seq: i for i, seq in enumerate(still)}
            active = still
        return [(p.decode("utf-8", errors="replace"), c, r) for p, c, r in zip(pieces, counts, reasons,
                                                                               strict=True)]


class PromptTooLong(TeacherError):
    """This query cannot be answered by this teacher; other queries can."""


# ---------------------------------------------------------------- OpenAI-compatible HTTP


class OpenAIBackend:
    """Any OpenAI-compatible server (llama.cpp's, vLLM, SGLang): bounded concurrency, retries, timeouts."""

    def __init__(self, teacher: Teacher, retries: int = 3, backoff_s: float = 0.5) -> None:
        assert teacher.base_url
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
                    return dict(json.loads(resp.read()))
            except urllib.error.HTTPError as exc:
                last = exc
                if exc.code < 500 and exc.code != 429:
                    break  # a client error will not succeed on retry
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
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
            choice = data["choices"][0]
            text = choice["text"] if path == "/completions" else choice["message"]["content"]
            usage = data.get("usage") or {}
            return Completion(str(text or ""), int(usage.get("prompt_tokens", 0)),
                              int(usage.get("completion_tokens", 0)),
                              str(choice.get("finish_reason") or "stop"), time.perf_counter() - t0)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise TeacherError(f"teacher {self.teacher.name}: malformed response from {self.url}{path} "
                               f"({str(data)[:80]!r})") from exc

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
