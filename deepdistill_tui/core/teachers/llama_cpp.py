"""The llama.cpp backend: continuous batching over one context, in this process.

A query's passes decode as sequences of one batch that share the prompt's KV cache, sampled by
llama.cpp's own sampler chains (Python-side sampling over a 49k vocabulary costs as much as the decode
itself). ``_Scheduler`` keeps one ``generate_many`` call's state: which queries hold which sequences and
how many cells; the backend owns the model, the context and the decode.
"""

from __future__ import annotations

import ctypes
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepdistill_tui.core.data.text import think_prefill
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.pipeline.events import Emit, noop
from deepdistill_tui.core.recipe import LlamaCppTeacher
from deepdistill_tui.core.teachers.base import (
    COMPLETION_STOP,
    Answer,
    Answers,
    Backend,
    Completion,
    PromptTooLong,
    Request,
    TeacherError,
    chat_messages,
    completion_prompt,
    default_threads,
)
from deepdistill_tui.core.weights.files import check_gguf, fetch


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


NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
"""Compiler flags that keep llama.cpp's AMX kernels out of a native build: on Sapphire Rapids class
CPUs their matrix product segfaults (llama.cpp issue 20824)."""
CUDA_INSTALL = (f'CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_C_FLAGS=\'{NO_AMX}\' -DCMAKE_CXX_FLAGS=\'{NO_AMX}\'"'
                ' pip install --force-reinstall --no-cache-dir "llama-cpp-python[server]==0.3.36"')


def cuda_device_present() -> bool:
    """An NVIDIA driver is loaded here (its control device exists), whatever torch says."""
    return Path("/dev/nvidiactl").exists()


def offload_problem(teacher: LlamaCppTeacher, cuda_present: bool, offload_supported: bool) -> str | None:
    """Why this teacher would run on the CPU next to an idle GPU, in one line; None when it will not."""
    if teacher.n_gpu_layers == 0 or not cuda_present or offload_supported:
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


class LlamaCppBackend(Backend):
    """Continuous batching over one llama.cpp context: up to ``max_seqs`` sequences of any queries in
    flight. A query's passes share its prompt's KV cells (the prompt tokens belong to all of its
    sequence ids); when a sequence ends its cells are freed, and the next query is admitted as soon as
    its prompt and passes fit. Every decode call carries one token per running sequence plus prompt
    chunks of admitted queries, so the batch stays full while queries come and go.

    Every query's prompt also starts with the same text: the few-shot examples, a system prompt, the
    chat template's header. That prefix is decoded once, into a sequence of its own, and each admitted
    query's sequences take its cells (as far as the query's tokens agree with it), so a query decodes
    only its own question: with the tiny recipe's worked examples, 20 tokens instead of 200."""

    scores_logprobs = True

    def __init__(self, teacher: LlamaCppTeacher, model_path: Path, max_seqs: int, passes: int = 1,
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

    def generate_many(self, requests: Iterable[Request],
                      schema: dict[str, Any] | None = None) -> Answers:
        """Each request's completions as soon as its last pass ends (not in request order). A prompt
        too long for the context comes back as its PromptTooLong, and the others go on."""
        grammar = None
        if schema is not None:
            from llama_cpp.llama_grammar import json_schema_to_gbnf

            grammar = json_schema_to_gbnf(json.dumps(schema))
        mem = self.C.llama_get_memory(self.ctx)
        self.C.llama_memory_clear(mem, True)
        batch = _Scheduler(self, iter(requests), grammar, self._share_prefix(mem), mem)
        try:
            while True:
                yield from batch.admit()
                self.in_flight = batch.running()
                if not batch.queries:
                    return
                step = batch.sample()
                yield from batch.retire()
                batch.fill(step)
                if step:
                    self._decode(step)
                    batch.decoded(step)
        finally:
            batch.close()
            self.in_flight = 0

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


Entry = tuple[int, int, tuple[int, ...], bool]
"""One token of a decode: (token, position, sequence ids, wants logits)."""


class _Scheduler:
    """One ``generate_many`` call: admission (a query enters when all of its passes fit in free
    sequences and cells), sampling (a token for every running sequence), retirement (a query leaves
    when its last sequence ends, its cells freed as each one does)."""

    def __init__(self, engine: LlamaCppBackend, todo: Iterator[Request], grammar: str | None,
                 prefix: list[int], mem: Any) -> None:
        self.engine, self.C, self.todo, self.grammar = engine, engine.C, todo, grammar
        self.prefix, self.mem = prefix, mem
        self.max_tokens = engine.teacher.sampling.max_tokens
        self.waiting: tuple[Request, list[int], str] | None = None  # the next query, tokenized
        self.free = list(range(engine.max_seqs))[::-1]
        self.queries: list[_Query] = []
        self.samplers: dict[int, Any] = {}
        self.owner: dict[int, _Query] = {}
        self.logits_at: dict[int, int] = {}  # sequence -> row of the last decode's logits
        self.reserved = 0
        self.buf = (ctypes.c_char * 256)()
        self.stop = COMPLETION_STOP.encode() if engine.teacher.template == "completion" else None

    def running(self) -> int:
        return sum(len(q.running) for q in self.queries)

    def admit(self) -> Iterator[Answer]:
        """Admit queries while sequences and cells allow; yields the ones whose prompt cannot fit."""
        engine = self.engine
        while True:
            if self.waiting is None:
                req = next(self.todo, None)
                if req is None:
                    return
                if len(req.seeds) > engine.max_seqs:
                    raise ValueError(f"{len(req.seeds)} passes, backend sized for {engine.max_seqs} "
                                     "sequences")
                try:
                    prompt, prefill = engine._tokens(req.question)
                except PromptTooLong as exc:
                    yield req, exc
                    continue
                self.waiting = (req, prompt, prefill)
            req, prompt, prefill = self.waiting
            need = len(prompt) + len(req.seeds) * self.max_tokens
            if len(req.seeds) > len(self.free) or (self.queries and self.reserved + need > engine.cells):
                return
            self._start(req, prompt, prefill, need)
            self.waiting = None

    def _start(self, req: Request, prompt: list[int], prefill: str, need: int) -> None:
        seqs = [self.free.pop() for _ in req.seeds]
        q = _Query(req, prompt, prefill, seqs, time.perf_counter(), pieces=[bytearray() for _ in seqs],
                   counts=[0] * len(seqs), reasons=["length"] * len(seqs), running=set(seqs))
        self.engine._admit_shared(q, self.prefix, self.mem)
        q.reserved = need - q.shared
        self.reserved += q.reserved
        for seq, seed in zip(seqs, req.seeds, strict=True):
            self.samplers[seq] = self.engine._sampler(seed, self.grammar)
            self.owner[seq] = q
        self.queries.append(q)

    def sample(self) -> list[Entry]:
        """A token for every running sequence that has logits from the last decode: the next step."""
        step: list[Entry] = []
        for seq, row in list(self.logits_at.items()):
            q = self.owner[seq]
            i = q.seqs.index(seq)
            tok = self.C.llama_sampler_sample(self.samplers[seq], self.engine.ctx, row)
            if self._ends(q, i, tok):
                self.reserved -= self._end_sequence(q, seq)
                del self.logits_at[seq]
                continue
            step.append((tok, len(q.prompt) + q.counts[i] - 1, (seq,), True))
        return step

    def _ends(self, q: _Query, i: int, tok: int) -> bool:
        """Append ``tok`` to pass ``i`` unless it ends it (end of generation, the completion template's
        stop text, max_tokens); the reason is recorded either way."""
        if self.C.llama_vocab_is_eog(self.engine.vocab, tok):
            q.reasons[i] = "stop"
            return True
        size = self.C.llama_token_to_piece(self.engine.vocab, tok, self.buf, len(self.buf), 0, False)
        q.pieces[i] += self.buf.raw[: max(size, 0)]
        q.counts[i] += 1
        if self.stop and self.stop in q.pieces[i]:
            del q.pieces[i][q.pieces[i].index(self.stop):]
            q.reasons[i] = "stop"
            return True
        return q.counts[i] >= self.max_tokens

    def _end_sequence(self, q: _Query, seq: int) -> int:
        """Free a finished sequence's cells and id; returns the cells it no longer holds."""
        self.C.llama_memory_seq_rm(self.mem, seq, -1, -1)
        self.C.llama_sampler_free(self.samplers.pop(seq))
        del self.owner[seq]
        self.free.append(seq)
        q.running.discard(seq)
        released = self.max_tokens
        if not q.running:
            released += len(q.prompt) - q.shared  # its own prompt cells went with the last sequence
        q.reserved -= released
        return released

    def retire(self) -> Iterator[Answer]:
        """Hand back the queries whose sequences have all ended."""
        for q in [q for q in self.queries if not q.running]:
            self.queries.remove(q)
            self.reserved -= q.reserved
            yield q.request, self.engine._completions(q)

    def fill(self, step: list[Entry]) -> None:
        """Fill the rest of the batch with prompt chunks of admitted queries."""
        for q in self.queries:
            room = self.engine.n_batch - len(step)
            if q.cursor >= len(q.prompt) or room <= 0:
                continue
            chunk = q.prompt[q.cursor : q.cursor + room]
            last = q.cursor + len(chunk) == len(q.prompt)
            step += [(t, q.cursor + j, tuple(q.seqs), last and j == len(chunk) - 1)
                     for j, t in enumerate(chunk)]
            q.cursor += len(chunk)
            self.engine.prompt_tokens_decoded += len(chunk)

    def decoded(self, step: list[Entry]) -> None:
        self.logits_at = {}
        for row, (_, _, ids, wants) in enumerate(step):
            if wants:
                for seq in ids:  # a finished prompt: all its passes start from its last row
                    self.logits_at[seq] = row

    def close(self) -> None:
        for smp in self.samplers.values():
            self.C.llama_sampler_free(smp)


def open_backend(teacher: LlamaCppTeacher, passes: int, sequences: int | None = None,
                 emit: Emit | None = None) -> tuple[LlamaCppBackend, Path]:
    """The teacher's GGUF, fetched and checked, loaded with room for ``sequences`` in flight (default:
    the recipe's ``max_sequences``, else automatic; 1 when ``batch_passes`` is off)."""
    from llama_cpp import llama_supports_gpu_offload

    problem = offload_problem(teacher, cuda_device_present(), bool(llama_supports_gpu_offload()))
    if problem:
        raise TeacherError(problem)  # before any download or load: days of CPU sampling otherwise
    path = fetch(teacher.model, emit or noop)
    try:
        check_gguf(path)
    except DeepDistillError as exc:
        raise TeacherError(f"teacher {teacher.name}: {exc}") from exc
    if not teacher.batch_passes:
        sequences = 1
    elif sequences is None:
        sequences = teacher.max_sequences or auto_sequences(passes)
    return LlamaCppBackend(teacher, path, sequences, passes), path
