"""Teacher backends: llama.cpp in process (batched passes) and any OpenAI-compatible server.

Both answer one prompt ``n`` times and return one ``Completion`` per pass. The llama.cpp backend decodes
the passes as ``n`` sequences of one batch that share the prompt's KV cache, sampled by llama.cpp's own
sampler chains (Python-side sampling over a 49k vocabulary costs as much as the decode itself).
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from deepdistill_tui.core.data.text import think_prefill
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import Teacher

COMPLETION_STOP = "\nQ:"
RESPONSE_BYTES_PER_TOKEN = 64
"""A token is a few bytes of text, a few dozen as JSON-escaped Unicode: past this, a reply is refused."""


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


@dataclass
class Request:
    """One query's passes: answered together, returned together (one transaction in the store)."""

    key: Any
    question: str
    seeds: list[int]


@dataclass
class _Query:
    """A request inside the engine: its prompt, its sequences, its reservation of KV cells."""

    request: Request
    prompt: list[int]
    prefill: str
    seqs: list[int]
    started: float
    cursor: int = 0  # prompt tokens already decoded (or shared from the template's prefix)
    shared: int = 0  # leading prompt tokens whose cells belong to the shared prefix
    reserved: int = 0  # KV cells held: the own prompt while any sequence runs, max_tokens per running one
    pieces: list[bytearray] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    running: set[int] = field(default_factory=set)


CUDA_INSTALL = ('CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
                '"llama-cpp-python[server]==0.3.36"')


def cuda_device_present() -> bool:
    """An NVIDIA driver is loaded here (its control device exists), whatever torch says."""
    return Path("/dev/nvidiactl").exists()


def offload_problem(teacher: Teacher, cuda_present: bool, offload_supported: bool) -> str | None:
    """Why this teacher would run on the CPU next to an idle GPU, in one line; None when it will not."""
    if teacher.backend != "llama_cpp" or teacher.n_gpu_layers == 0 or not cuda_present \
            or offload_supported:
        return None
    return (f"teacher {teacher.name}: a CUDA GPU is present but this llama-cpp-python was built without "
            f"GPU offload; rebuild it (README, GPU set-up): {CUDA_INSTALL}, or set n_gpu_layers: 0 "
            "to sample on the CPU")


def auto_sequences(passes: int) -> int:
    """Sequences in flight when the recipe does not say: CPU ~16 (measured: little gain past it on 2
    cores), a GPU 64; never fewer than one query's passes."""
    from llama_cpp import llama_supports_gpu_offload

    return max(passes, 64 if llama_supports_gpu_offload() else 16)


MIN_SHARED_PREFIX = 8
"""Below this many tokens, sharing the template's prefix saves less than it costs to set up."""


class LlamaCppBackend:
    """Continuous batching over one llama.cpp context: up to ``max_seqs`` sequences of any queries in
    flight. A query's passes share its prompt's KV cells (the prompt tokens belong to all of its
    sequence ids); when a sequence ends its cells are freed, and the next query is admitted as soon as
    its prompt and passes fit. Every decode call carries one token per running sequence plus prompt
    chunks of admitted queries, so the batch stays full while queries come and go.

    Every query's prompt also starts with the same text: the few-shot examples, a system prompt, the
    chat template's header. That prefix is decoded once, into a sequence of its own, and each admitted
    query's sequences take its cells (as far as the query's tokens agree with it), so a query decodes
    only its own question: with the tiny recipe's worked examples, 20 tokens instead of 200."""

    def __init__(self, teacher: Teacher, model_path: Path, max_seqs: int, passes: int = 1,
                 threads: int | None = None) -> None:
        import llama_cpp
        from llama_cpp import llama_chat_format

        self.C = llama_cpp
        self.teacher = teacher
        self.max_seqs = max(max_seqs, 1)
        self.threads = threads or teacher.threads or default_threads()
        s = teacher.sampling
        try:
            # The high-level object gives us the tokenizer and the GGUF chat template; its own small
            # context is unused. Our context holds the sequences in flight.
            self.llm = llama_cpp.Llama(str(model_path), n_ctx=256, n_threads=self.threads,
                                       n_gpu_layers=teacher.n_gpu_layers, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise TeacherError(f"teacher {teacher.name}: cannot load {model_path} ({exc})") from exc
        self.n_ctx_train = self.llm._model.n_ctx_train()
        if teacher.n_ctx > self.n_ctx_train:
            raise TeacherError(f"teacher {teacher.name}: n_ctx {teacher.n_ctx} is larger than the "
                               f"model's training context {self.n_ctx_train}")
        # Room for the prompts of as many queries as fit by sequences, plus every sequence's answer.
        queries = max(1, self.max_seqs // max(1, passes))
        self.cells = queries * max(0, teacher.n_ctx - s.max_tokens) + self.max_seqs * s.max_tokens
        params = llama_cpp.llama_context_default_params()
        self.prefix_seq = self.max_seqs  # the shared prefix's own sequence id, after the queries'
        params.n_ctx = self.cells + teacher.n_ctx + 256  # the prefix, and slack: llama.cpp rounds and pads
        params.n_batch = max(512, self.max_seqs)
        params.n_ubatch = params.n_batch
        params.n_seq_max = self.max_seqs + 1
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = self.threads
        if teacher.flash_attn is not None:  # llama.cpp's enum: -1 auto, 0 off, 1 on
            params.flash_attn_type = 1 if teacher.flash_attn else 0
        self.ctx = llama_cpp.llama_init_from_model(self.llm._model.model, params)
        if not self.ctx:
            raise TeacherError(f"teacher {teacher.name}: llama.cpp could not create a context of "
                               f"{params.n_ctx} tokens (out of memory?)")
        self.n_batch = params.n_batch
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, self.max_seqs)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        self.formatter = None
        self.in_flight = 0
        self.prompt_tokens_decoded = 0  # prompt tokens this engine ran through llama.cpp (shared: once)
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

    def _decode(self, entries: list[tuple[int, int, tuple[int, ...], bool]]) -> None:
        """Decode (token, position, sequence ids, wants_logits) entries in one batch."""
        b = self.batch
        for i, (tok, pos, seqs, logits) in enumerate(entries):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = len(seqs)
            for j, seq in enumerate(seqs):
                b.seq_id[i][j] = seq
            b.logits[i] = logits
        b.n_tokens = len(entries)
        rc = self.C.llama_decode(self.ctx, b)
        if rc != 0:
            raise TeacherError(f"teacher {self.teacher.name}: llama_decode failed ({rc}): the "
                               "context is too small for the prompt and max_tokens")

    def template_prefix(self) -> list[int]:
        """The tokens every prompt starts with: the prompt of a placeholder question, cut before it."""
        marker = "\ue000QUESTION\ue000"  # private-use characters: in no template, never merged
        text = self.prompt_text(marker)
        head = text[: text.index(marker)]
        tokens = self.llm.tokenize(head.encode("utf-8"), add_bos=not self._has_bos(text), special=True)
        return tokens[:-1]  # the boundary token may merge with the question's first characters

    def _share_prefix(self, mem: Any) -> list[int]:
        """Decode the template's prefix into the prefix sequence; the tokens now held there."""
        prefix = self.template_prefix()
        if len(prefix) < MIN_SHARED_PREFIX:
            return []
        for start in range(0, len(prefix), self.n_batch):
            chunk = prefix[start : start + self.n_batch]
            self._decode([(t, start + i, (self.prefix_seq,), False) for i, t in enumerate(chunk)])
        self.prompt_tokens_decoded += len(prefix)
        return prefix

    def _admit_shared(self, q: _Query, prefix: list[int], mem: Any) -> None:
        """Give the query's sequences the cells of the prefix its prompt agrees with; at least the last
        prompt token is its own, for its logits."""
        n = 0
        for a, b in zip(q.prompt[: len(q.prompt) - 1], prefix, strict=False):
            if a != b:
                break
            n += 1
        if n < MIN_SHARED_PREFIX:
            return
        for seq in q.seqs:
            self.C.llama_memory_seq_cp(mem, self.prefix_seq, seq, 0, n)
        q.shared = q.cursor = n

    def _tokens(self, question: str) -> tuple[list[int], str]:
        text = self.prompt_text(question)
        prompt = self.llm.tokenize(text.encode("utf-8"), add_bos=not self._has_bos(text), special=True)
        if len(prompt) + self.teacher.sampling.max_tokens > self.teacher.n_ctx:
            raise PromptTooLong(f"teacher {self.teacher.name}: prompt of {len(prompt)} tokens plus "
                                f"max_tokens {self.teacher.sampling.max_tokens} exceeds n_ctx "
                                f"{self.teacher.n_ctx}")
        return prompt, think_prefill(text)

    def generate(self, question: str, seeds: list[int],
                 schema: dict[str, Any] | None = None) -> list[Completion]:
        if len(seeds) > self.max_seqs:  # more passes than sequences: a few at a time
            return [c for i in range(0, len(seeds), self.max_seqs)
                    for c in self.generate(question, seeds[i : i + self.max_seqs], schema)]
        [(_, out)] = list(self.generate_many([Request(None, question, seeds)], schema))
        if isinstance(out, Exception):
            raise out
        return out

    def generate_many(self, requests: Iterable[Request], schema: dict[str, Any] | None = None,
                      ) -> Generator[tuple[Request, list[Completion] | PromptTooLong], None, None]:
        """Each request's completions as soon as its last pass ends (not in request order). A prompt
        too long for the context comes back as its PromptTooLong, and the others go on."""
        grammar = None
        if schema is not None:
            from llama_cpp.llama_grammar import json_schema_to_gbnf

            grammar = json_schema_to_gbnf(json.dumps(schema))
        C = self.C
        mem = C.llama_get_memory(self.ctx)
        C.llama_memory_clear(mem, True)
        prefix = self._share_prefix(mem)
        todo = iter(requests)
        waiting: Request | None = None
        free = list(range(self.max_seqs))[::-1]
        queries: list[_Query] = []
        samplers: dict[int, Any] = {}
        owner: dict[int, _Query] = {}
        logits_at: dict[int, int] = {}  # sequence -> row of the last decode's logits
        reserved = 0
        max_tokens = self.teacher.sampling.max_tokens
        buf = (ctypes.c_char * 256)()
        stop = COMPLETION_STOP.encode() if self.teacher.template == "completion" else None
        try:
            while True:
                # Admit queries while sequences and cells allow: all of a query's passes at once.
                while True:
                    if waiting is None:
                        waiting = next(todo, None)
                        if waiting is None:
                            break
                        if len(waiting.seeds) > self.max_seqs:
                            raise ValueError(f"{len(waiting.seeds)} passes, backend sized for "
                                             f"{self.max_seqs} sequences")
                        try:
                            prompt, prefill = self._tokens(waiting.question)
                        except PromptTooLong as exc:
                            yield waiting, exc
                            waiting = None
                            continue
                        pending_query = (prompt, prefill)
                    need = len(pending_query[0]) + len(waiting.seeds) * max_tokens
                    if len(waiting.seeds) > len(free) or (queries and reserved + need > self.cells):
                        break
                    seqs = [free.pop() for _ in waiting.seeds]
                    q = _Query(waiting, pending_query[0], pending_query[1], seqs, time.perf_counter(),
                               pieces=[bytearray() for _ in seqs], counts=[0] * len(seqs),
                               reasons=["length"] * len(seqs), running=set(seqs))
                    self._admit_shared(q, prefix, mem)
                    q.reserved = need - q.shared
                    reserved += q.reserved
                    for seq, seed in zip(seqs, waiting.seeds, strict=True):
                        samplers[seq] = self._sampler(seed, grammar)
                        owner[seq] = q
                    queries.append(q)
                    waiting = None
                self.in_flight = sum(len(q.running) for q in queries)
                if not queries:
                    return
                # Sample every running sequence that has logits from the last decode.
                step: list[tuple[int, int, tuple[int, ...], bool]] = []
                for seq, row in list(logits_at.items()):
                    q = owner[seq]
                    i = q.seqs.index(seq)
                    tok = C.llama_sampler_sample(samplers[seq], self.ctx, row)
                    ended = bool(C.llama_vocab_is_eog(self.vocab, tok))
                    if not ended:
                        size = C.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, False)
                        q.pieces[i] += buf.raw[: max(size, 0)]
                        q.counts[i] += 1
                        if stop and stop in q.pieces[i]:
                            del q.pieces[i][q.pieces[i].index(stop):]
                            ended = True
                    if ended:
                        q.reasons[i] = "stop"
                    elif q.counts[i] >= max_tokens:
                        ended = True
                    if ended:
                        reserved -= self._end_sequence(q, seq, mem, samplers, owner, free)
                        del logits_at[seq]
                        continue
                    step.append((tok, len(q.prompt) + q.counts[i] - 1, (seq,), True))
                # Queries whose sequences have all ended are done: hand them back.
                for q in [q for q in queries if not q.running]:
                    queries.remove(q)
                    reserved -= q.reserved
                    yield q.request, self._completions(q)
                # Fill the rest of the batch with prompt chunks of admitted queries.
                for q in queries:
                    room = self.n_batch - len(step)
                    if q.cursor >= len(q.prompt) or room <= 0:
                        continue
                    chunk = q.prompt[q.cursor : q.cursor + room]
                    last = q.cursor + len(chunk) == len(q.prompt)
                    step += [(t, q.cursor + j, tuple(q.seqs), last and j == len(chunk) - 1)
                             for j, t in enumerate(chunk)]
                    q.cursor += len(chunk)
                    self.prompt_tokens_decoded += len(chunk)
                if not step:
                    continue
                self._decode(step)
                logits_at = {}
                for row, (_, _, ids, wants) in enumerate(step):
                    if wants:
                        for seq in ids:  # a finished prompt: all its passes start from its last row
                            logits_at[seq] = row
        finally:
            for smp in samplers.values():
                C.llama_sampler_free(smp)
            self.in_flight = 0

    def _end_sequence(self, q: _Query, seq: int, mem: Any, samplers: dict[int, Any],
                      owner: dict[int, _Query], free: list[int]) -> int:
        """Free a finished sequence's cells and id; returns the cells it no longer holds."""
        self.C.llama_memory_seq_rm(mem, seq, -1, -1)
        self.C.llama_sampler_free(samplers.pop(seq))
        del owner[seq]
        free.append(seq)
        q.running.discard(seq)
        released = self.teacher.sampling.max_tokens
        if not q.running:
            released += len(q.prompt) - q.shared  # its own prompt cells went with the last sequence
        q.reserved -= released
        return released

    def _completions(self, q: _Query) -> list[Completion]:
        seconds = time.perf_counter() - q.started
        return [Completion(p.decode("utf-8", errors="replace"), len(q.prompt), n, reason, seconds, q.prefill)
                for p, n, reason in zip(q.pieces, q.counts, q.reasons, strict=True)]

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
        for start in range(0, len(prompt), self.n_batch):
            chunk = prompt[start : start + self.n_batch]
            last = start + len(chunk) == len(prompt)
            self._decode([(t, start + i, (0,), last and i == len(chunk) - 1) for i, t in enumerate(chunk)])
        out = [logprob(-1, target[0])]
        feed = target[:-1]  # token i's logits predict token i + 1
        for start in range(0, len(feed), self.n_batch):
            chunk = feed[start : start + self.n_batch]
            self._decode([(t, len(prompt) + start + i, (0,), True) for i, t in enumerate(chunk)])
            out += [logprob(i, target[start + i + 1]) for i in range(len(chunk))]
        return out

    def _has_bos(self, prompt: str) -> bool:
        """Chat templates that write the BOS token themselves must not get a second one."""
        bos = self.llm.token_bos()
        return bos >= 0 and prompt.startswith(self.llm._model.token_get_text(bos))


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

    def generate_many(self, requests: Iterable[Request], schema: dict[str, Any] | None = None,
                      ) -> Iterator[tuple[Request, list[Completion] | PromptTooLong]]:
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
