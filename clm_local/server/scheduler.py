"""The one thread that owns the model: slots, continuous batching and chunked prefill.

llama.cpp objects must not be used from two threads at once, so one scheduler thread makes every
llama.cpp call (loading, tokenizing, decoding, sampling, freeing). HTTP handlers only hand it a
`Job` through `submit` and read the job's events from an asyncio queue.

Each of the `parallel` slots serves one request. A step of the loop decodes, in ONE forward pass
(one llama_decode of one ubatch), the next token of every slot that is answering plus a bounded
chunk of the prompt of slots that are still reading theirs, so a long prompt never stalls the
others for long. Slots differ freely in alpha and mode within a step, because the patched
llama.cpp reads the pre-layer coefficient per sequence:
- embed mode: the slot's first sequence, at coefficient alpha;
- logits mode: its aligned (coefficient 1) and reference (coefficient 0) sequences, whose logits
  are mixed with the slot's alpha (`request_sequences` in runtime/model.py); at alpha 0 or 1 the
  mix is a single path, which one sequence computes identically;
- a plain model: one sequence, alpha has no effect.

The KV cache is one pool of positions shared by every sequence (llama.cpp's unified cache). Why:
with a stream per sequence llama.cpp puts only runs of consecutive sequence ids into one ubatch, so
a step over scattered slots was several forward passes; and a pool costs what the user sizes it
to, not slots x context. A request reserves, for each sequence it uses, its prompt plus
max_tokens positions (at most its context: --ctx, or its sequences' share of the pool if less)
when it takes a slot; one that does not fit the free positions waits at the head of the queue,
so a started answer never finds the pool full. The patched blend keeps every hidden state finite,
so no request's alpha can put inf or nan into cells that another's attention reads.

Failures stay with their request: anything raised while admitting, decoding or sampling for one
request ends that request (400 for what it asked, 500 with an error id otherwise) and the others go
on. Should the thread itself die, `on_death` hears why (the server then exits non-zero).
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import sys
import threading
import traceback
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clm_local.chat.sampling import Sampler, SamplingParams
from clm_local.chat.template import ChatTemplate, Message
from clm_local.errors import ClmError
from clm_local.runtime.model import NON_FINITE_CAUSES, ClmModel, ModelInfo, read_info, request_sequences

# -- what a handler asks for and what it hears back ---------------------------------------------------


@dataclass(frozen=True)
class GenerationRequest:
    """One answer to generate: a conversation (chat) or a prompt text (completions, or a conversation
    the HTTP side already rendered with `Scheduler.render`)."""

    alpha: float
    mode: str
    sampling: SamplingParams
    max_tokens: int | None  # None: until the end of the context
    stop: tuple[str, ...] = ()
    messages: list[Message] | None = None
    prompt: str | None = None
    add_special: bool = True  # tokenizing the prompt adds BOS/EOS where the vocabulary asks


@dataclass(frozen=True)
class Started:
    """The prompt fits and a slot took it; text follows."""

    prompt_tokens: int


@dataclass(frozen=True)
class Piece:
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" (end of answer or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    """The request cannot be served; status is the HTTP status to answer with."""

    status: int
    message: str


Event = Started | Piece | Finished | Failed


class Job:
    """A request on its way through the scheduler; its events arrive on `events` in the event loop."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._loop = loop
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """The client is gone: the scheduler frees the slot at its next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def emit(self, event: Event) -> None:
        """Called from the scheduler thread."""
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


class QueueFull(Exception):
    """All slots are busy and the waiting queue is at its bound."""


# -- counters for /metrics ------------------------------------------------------------------------


@dataclass
class Metrics:
    """What the scheduler did, read by /metrics. Written by the scheduler thread only."""

    decode_steps: int = 0
    decode_forward_passes: int = 0  # summed over steps: llama.cpp ubatches (1 per step when batching works)
    decode_sequences: int = 0  # summed over steps: sequences in each llama_decode
    decode_slots: int = 0  # summed over steps: slots (requests) in each llama_decode
    decode_tokens: int = 0
    max_forward_passes_per_step: int = 0
    max_sequences_per_step: int = 0
    max_slots_per_step: int = 0
    steps_with_several_slots: int = 0
    requests_started: int = 0
    requests_finished: int = 0
    requests_cancelled: int = 0
    requests_failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def record_step(self, n_slots: int, n_sequences: int, n_tokens: int, n_passes: int) -> None:
        self.decode_steps += 1
        self.decode_forward_passes += n_passes
        self.max_forward_passes_per_step = max(self.max_forward_passes_per_step, n_passes)
        self.decode_slots += n_slots
        self.decode_sequences += n_sequences
        self.decode_tokens += n_tokens
        self.max_slots_per_step = max(self.max_slots_per_step, n_slots)
        self.max_sequences_per_step = max(self.max_sequences_per_step, n_sequences)
        self.steps_with_several_slots += n_slots > 1


# -- text after each token ------------------------------------------------------------------------


class StopStrings:
    """Cuts the answer at the first stop string it completes (the longest of those completed by
    the same character), across token boundaries, in time
    linear in the text (a Knuth-Morris-Pratt automaton per stop string: one state update per
    character, whatever the strings' lengths).

    Text that could be the start of a stop string is held back until the next piece shows
    whether it is one.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self._fallback = [_fallback_table(stop) for stop in stops]
        self._matched = [0] * len(stops)  # per stop: how many of its first characters end the text
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that is safe to send now, and whether a stop string was reached."""
        for end, char in enumerate(text):
            completed = 0  # the longest stop string ending at this character, if any
            for i, stop in enumerate(self.stops):
                matched, fallback = self._matched[i], self._fallback[i]
                while matched and stop[matched] != char:
                    matched = fallback[matched - 1]
                matched += stop[matched] == char
                if matched == len(stop):
                    completed = max(completed, matched)
                    matched = fallback[matched - 1]
                self._matched[i] = matched
            if completed:
                whole = self.pending + text[: end + 1]
                self.pending, self._matched = "", [0] * len(self.stops)
                return whole[: len(whole) - completed], True
        whole = self.pending + text
        hold = max(self._matched, default=0)
        self.pending = whole[len(whole) - hold :] if hold else ""
        return whole[: len(whole) - hold], False

    def flush(self) -> str:
        out, self.pending, self._matched = self.pending, "", [0] * len(self.stops)
        return out


def _fallback_table(pattern: str) -> list[int]:
    """KMP's prefix function: for each prefix of `pattern`, the length of its longest proper
    prefix that is also its suffix."""
    table = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = table[k - 1]
        k += pattern[i] == pattern[k]
        table[i] = k
    return table


@dataclass
class Slot:
    """One request in progress and the KV-cache sequences it owns."""

    sequences: tuple[int, ...]  # all the slot may use; `active` says which this request uses
    job: Job | None = None
    active: tuple[int, ...] = ()
    reserved: int = 0  # KV-cache positions held for this request (all its sequences)
    context: int = 0  # positions each of its sequences may fill: prompt + answer
    prompt: list[int] = field(default_factory=list)
    prefilled: int = 0  # prompt tokens decoded so far
    produced: int = 0  # answer tokens sent so far
    last_token: int = -1
    max_tokens: int = 0
    sampler: Sampler | None = None
    utf8: codecs.IncrementalDecoder | None = None
    stops: StopStrings | None = None

    @property
    def reading_prompt(self) -> bool:
        return self.prefilled < len(self.prompt)


# -- the scheduler --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """A waiting job, tokenized, with what it needs of the model: held until the pool has room."""

    job: Job
    prompt: list[int]
    coefficients: tuple[float, ...]  # pre-layer coefficient of each sequence it uses
    reserve: int  # KV-cache positions, all its sequences together


class Scheduler:
    """Loads the model in its own thread and serves jobs in `parallel` slots until `stop`.

    n_ctx bounds one request (prompt + answer, per sequence); kv_size is the pool of KV-cache
    positions all requests share (default: parallel * n_ctx).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        parallel: int = 4,
        n_ctx: int = 4096,
        kv_size: int | None = None,
        n_threads: int | None = None,
        max_queue: int = 16,
        prefill_chunk: int = 128,
        on_death: Callable[[str], None] | None = None,
        rpc: Sequence[str] = (),
    ) -> None:
        # Every setting but the model, as given: `for_model` serves another file with the same ones.
        self._settings = {key: value for key, value in locals().items() if key not in ("self", "model_path")}
        kv_size = parallel * n_ctx if kv_size is None else kv_size
        for name, value, low in (
            ("parallel", parallel, 1), ("ctx", n_ctx, 2), ("kv_size", kv_size, 2),
            ("queue", max_queue, 0), ("prefill_chunk", prefill_chunk, 1),
        ):  # fmt: skip
            if value < low:
                raise ClmError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ClmError(f"{model_path}: no such file")
        self.info: ModelInfo = read_info(self.model_path)  # metadata only: no llama.cpp call
        self.parallel = parallel
        self.n_ctx = n_ctx
        self.kv_size = kv_size
        self.n_threads = n_threads
        self.rpc = list(rpc)  # llama.cpp rpc-servers holding the model's layers (runtime/rpc.py)
        self.max_queue = max_queue
        per_slot = 2 if self.info.is_clm else 1  # sequences a request may use
        # prompt tokens x sequences in one step (at least one token of one request)
        self.prefill_budget = max(prefill_chunk, per_slot)
        # the most tokens one step holds: a prefill budget and the next token of every sequence
        self.step_tokens = self.prefill_budget + parallel * per_slot
        self._per_slot = per_slot
        self._on_death = on_death
        self.metrics = Metrics()
        self._lock = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._held: Admission | None = None  # tokenized, waiting for KV-cache room
        self._in_flight = 0  # jobs submitted and not yet answered to the end
        self._stopping = False
        self.failure: str | None = None  # why the thread died, if it did
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._slots: list[Slot] = []
        self._next_prefill = 0  # the slot whose prompt goes first in the next step (round robin)
        self._draining = False  # refusing new jobs until those in flight are answered, then stopping

    # -- used from other threads ------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread and wait until the model is loaded; a load failure raises ClmError."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="clm-scheduler", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error

    def stop(self, timeout: float = 30.0) -> None:
        """Answer what is left with 503, free the model and end the thread."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def for_model(self, model_path: str | Path) -> Scheduler:
        """A scheduler (not started) for another model file with this one's settings: what a
        server switching models without a restart builds (ClmError for a file that is no model)."""
        return Scheduler(model_path, **self._settings)

    def drain(self) -> None:
        """Refuse new jobs (QueueFull), wait until every job in flight is answered, then stop:
        how a replaced model finishes what it started while the new one takes the new requests."""
        with self._lock:
            self._draining = True
            while self._in_flight and not self._stopping:
                self._lock.wait(1.0)  # also wakes should the thread have died meanwhile
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def submit(self, job: Job) -> None:
        """Queue a job for the next free slot; QueueFull when the slots and the queue are full."""
        with self._lock:
            if self._stopping or not self._ready.is_set():
                raise QueueFull("the server is not running")
            if self._draining:
                raise QueueFull("this model is being replaced")
            if self._in_flight >= self.parallel + self.max_queue:
                raise QueueFull(f"all {self.parallel} slots are busy and {self.max_queue} requests wait")
            self._in_flight += 1
            self._waiting.append(job)
            self._lock.notify_all()

    def load(self) -> tuple[int, int]:
        """(requests in slots or waiting, requests waiting), for /health and /metrics."""
        with self._lock:
            waiting = len(self._waiting) + (self._held is not None)
            return self._in_flight, waiting

    @property
    def kv_reserved(self) -> int:
        """KV-cache positions reserved by the requests in slots (read without the lock: a gauge)."""
        return sum(slot.reserved for slot in self._slots)

    # -- the scheduler thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            model = ClmModel(
                self.model_path,
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_sequences=self.parallel * self._per_slot,
                kv_pool=self.kv_size,
                n_batch=self.step_tokens,
                rpc=self.rpc,
            )
            with warnings.catch_warnings(record=True) as said:  # "no chat template": say it once, here
                warnings.simplefilter("always")
                template = ChatTemplate.for_model(model)
            for warning in said:
                print(f"warning: {warning.message}", file=sys.stderr, flush=True)
        except Exception as error:  # noqa: BLE001 - whatever stops the load, start() must hear it
            self._startup_error = (
                error if isinstance(error, ClmError) else ClmError(f"{self.model_path}: {error}")
            )
            self._ready.set()
            return
        self.model, self.template = model, template
        per_slot = self._per_slot
        self._slots = [Slot(tuple(range(i * per_slot, (i + 1) * per_slot))) for i in range(self.parallel)]
        self._ready.set()
        try:
            while self._next_jobs():
                self._drop_abandoned()
                if any(slot.job for slot in self._slots):
                    self._step()
        except BaseException as error:  # noqa: BLE001 - a bug: say why, and let the process end
            self.failure = f"{type(error).__name__}: {error}"
            print("clm-local: the scheduler thread stopped:", file=sys.stderr)
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            with self._lock:
                self._stopping = True  # also when the loop died of a bug: refuse new jobs
            for slot in self._slots:
                if slot.job is not None:
                    self._end(slot, Failed(503, "the server is shutting down"))
            with self._lock:
                held = [self._held.job] if self._held is not None else []
                for job in held + list(self._waiting):
                    job.emit(Failed(503, "the server is shutting down"))
                self._waiting.clear()
                self._held = None
            model.close()
            if self.failure is not None and self._on_death is not None:
                self._on_death(self.failure)

    def _next_jobs(self) -> bool:
        """Move waiting jobs into free slots while the pool has room (waiting while there is
        nothing to do); False: stop."""
        while True:
            with self._lock:
                if self._stopping:
                    return False
                busy = any(slot.job is not None for slot in self._slots)
                if not busy and not self._waiting and self._held is None:
                    self._lock.wait()
                    continue
            while (slot := next((s for s in self._slots if s.job is None), None)) is not None:
                admission = self._held or self._prepare_next()
                if admission is None:
                    break
                if admission.reserve > self.kv_size - self.kv_reserved:
                    self._held = admission  # first in, first served: the others wait behind it
                    break
                self._held = None
                self._admit(slot, admission)
            return True

    def _prepare_next(self) -> Admission | None:
        """The next waiting job that can be served, tokenized; refused ones are answered here."""
        while True:
            with self._lock:
                if not self._waiting:
                    return None
                job = self._waiting.popleft()
            if job.cancelled:
                self.metrics.requests_cancelled += 1
                self._release(job)
                continue
            try:
                return self._prepare(job)
            except ClmError as error:
                self._reject(job, Failed(400, str(error)))
            except Exception:  # noqa: BLE001 - one request's bug must not stop the server
                self._reject(job, internal_error("admitting a request"))

    def _prepare(self, job: Job) -> Admission:
        """Tokenize the job's prompt and size what it needs, or raise ClmError saying why not."""
        request = job.request
        if request.messages is not None:
            text, add_special = self.render(request.messages)
        else:
            text, add_special = request.prompt or "", request.add_special
        prompt = self.model.tokenize(text, add_special=add_special, parse_special=True)
        if not prompt:
            raise ClmError("the prompt is empty")
        coefficients = request_sequences(self.info, request.alpha, request.mode)
        context = self.request_context(len(coefficients))
        if len(prompt) >= context:
            raise ClmError(
                f"the prompt has {len(prompt)} tokens, a request with {len(coefficients)} sequence(s) "
                "may use "
                f"{context} (--ctx, --kv-size)"
            )
        positions = min(context, len(prompt) + (request.max_tokens or context))
        return Admission(job, prompt, coefficients, positions * len(coefficients))

    def render(self, messages: list[Message]) -> tuple[str, bool]:
        """A conversation as prompt text, and whether tokenizing it adds BOS/EOS. Jinja only, no
        llama.cpp call: any thread may render once the model has loaded, and the HTTP side does,
        so that a long conversation does not hold up the scheduler thread."""
        return self.template.render(messages), not self.template.writes_special_tokens

    def request_context(self, n_sequences: int) -> int:
        """The most positions a request may use (prompt + answer): --ctx, or its sequences' share of
        the whole pool if that is less."""
        return min(self.n_ctx, self.kv_size // n_sequences)

    def _admit(self, slot: Slot, admission: Admission) -> None:
        """Start the admitted job in the slot."""
        job, request = admission.job, admission.job.request
        active = slot.sequences[: len(admission.coefficients)]
        try:
            if self.info.is_clm:
                for seq, coefficient in zip(active, admission.coefficients, strict=True):
                    self.model.set_alpha(seq, coefficient)
            sampler = Sampler(self.model.n_vocab, request.sampling)
        except ClmError as error:
            self._reject(job, Failed(400, str(error)))
            return
        except Exception:  # noqa: BLE001 - as in _prepare_next
            self._reject(job, internal_error("admitting a request"))
            return
        slot.job, slot.active, slot.reserved = job, active, admission.reserve
        slot.prompt, slot.prefilled, slot.produced = admission.prompt, 0, 0
        slot.context = admission.reserve // len(active)
        slot.max_tokens = request.max_tokens or slot.context
        slot.sampler = sampler
        slot.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.stops = StopStrings(request.stop)
        self.metrics.requests_started += 1
        self.metrics.prompt_tokens += len(admission.prompt)
        job.emit(Started(len(admission.prompt)))

    def _drop_abandoned(self) -> None:
        for slot in self._slots:
            if slot.job is not None and slot.job.cancelled:
                self.metrics.requests_cancelled += 1
                self._end(slot, None)
        with self._lock:
            held = self._held
            if held is not None and held.job.cancelled:
                self._held = None
        if held is not None and held.job.cancelled:
            self.metrics.requests_cancelled += 1
            self._release(held.job)

    def _plan(self) -> list[tuple[Slot, list[int]]]:
        """What one step decodes: each answering slot's last token, and prompt chunks of the slots
        still reading theirs (at most the prefill budget of tokens x sequences, round robin)."""
        plan: list[tuple[Slot, list[int]]] = []
        budget = self.prefill_budget
        order = self._slots[self._next_prefill :] + self._slots[: self._next_prefill]
        self._next_prefill = (self._next_prefill + 1) % len(self._slots)
        for slot in order:
            if slot.job is None:
                continue
            if slot.reading_prompt:
                count = min(len(slot.prompt) - slot.prefilled, budget // len(slot.active))
                if count <= 0:
                    continue
                plan.append((slot, slot.prompt[slot.prefilled : slot.prefilled + count]))
                slot.prefilled += count
                budget -= count * len(slot.active)
            else:
                plan.append((slot, [slot.last_token]))
        return plan

    def _step(self) -> None:
        """One forward pass: the planned tokens of every slot in one llama_decode, then a token
        sampled for each slot that has read its prompt. Should the pass fail, each slot is decoded
        alone, so that only the one that cannot be decoded fails."""
        plan = self._plan()
        if not plan:
            return
        try:
            rows = self._decode(plan)
        except Exception:  # noqa: BLE001 - find the slot it belongs to
            rows = {}
            for slot, tokens in plan:
                try:
                    rows |= self._decode([(slot, tokens)])
                except ClmError as error:
                    self._fail(slot, Failed(500, f"generation failed: {error}"))
                except Exception:  # noqa: BLE001
                    self._fail(slot, internal_error("decoding"))
        for slot, _ in plan:
            if slot.job is None or slot.reading_prompt:
                continue
            logits = rows[slot.active[0]][-1]
            if not np.isfinite(logits).all():
                message = f"alpha {slot.job.request.alpha:g} gives non-finite logits: {NON_FINITE_CAUSES}"
                self._fail(slot, Failed(400, message))
                continue
            try:
                self._answer(slot, logits)
            except Exception:  # noqa: BLE001 - this request's answer only
                self._fail(slot, internal_error("sampling"))

    def _decode(self, plan: list[tuple[Slot, list[int]]]) -> dict[int, np.ndarray]:
        """One llama_decode of the plan's tokens (unchecked: one alpha fails one slot, in _step)."""
        batch: dict[int, list[int]] = {}
        mix: dict[int, tuple[int, float]] = {}  # logits mode: aligned sequence -> (reference, alpha)
        for slot, tokens in plan:
            for seq in slot.active:
                batch[seq] = tokens
            if len(slot.active) == 2:
                mix[slot.active[0]] = (slot.active[1], slot.job.request.alpha)
        before = self.model.forward_passes
        rows = self.model.decode(batch, check=False, mix=mix)
        passes = self.model.forward_passes - before
        self.metrics.record_step(len(plan), len(batch), sum(len(t) for t in batch.values()), passes)
        return rows

    def _answer(self, slot: Slot, logits: np.ndarray) -> None:
        """Sample the slot's next token and send its text; end the answer where it ends.

        The same rules as chat's Decoder.generate, so a greedy answer here equals chat's: stop
        before an end-of-generation token, after max_tokens, or when the context is full.
        """
        token = slot.sampler.sample(logits)
        if self.model.is_end_of_generation(token):
            self._finish(slot, "stop")
            return
        slot.produced += 1
        slot.last_token = token
        text, stopped = slot.stops.feed(slot.utf8.decode(self.model.token_to_piece(token)))
        if text:
            slot.job.emit(Piece(text))
        if stopped:
            self._finish(slot, "stop", flush=False)
        elif slot.produced >= slot.max_tokens or len(slot.prompt) + slot.produced - 1 >= slot.context:
            self._finish(slot, "length")

    def _finish(self, slot: Slot, reason: str, *, flush: bool = True) -> None:
        if flush:
            text = slot.stops.feed(slot.utf8.decode(b"", final=True))[0] + slot.stops.flush()
            if text:
                slot.job.emit(Piece(text))
        self.metrics.requests_finished += 1
        self.metrics.completion_tokens += slot.produced
        self._end(slot, Finished(reason, len(slot.prompt), slot.produced))

    def _fail(self, slot: Slot, failure: Failed) -> None:
        self.metrics.requests_failed += 1
        self._end(slot, failure)

    def _end(self, slot: Slot, event: Event | None) -> None:
        """Free the slot: empty its sequences, close its sampler, tell the job (if it listens)."""
        job = slot.job
        slot.job = None
        active, slot.active, slot.prompt, slot.reserved = slot.active, (), [], 0
        sampler, slot.sampler = slot.sampler, None
        if event is not None:
            job.emit(event)
        self._release(job)
        if sampler is not None:
            sampler.close()
        for seq in active:
            self.model.forget_after(seq, 0)

    def _reject(self, job: Job, failure: Failed) -> None:
        self.metrics.requests_failed += 1
        job.emit(failure)
        self._release(job)

    def _release(self, job: Job) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._draining:
                self._lock.notify_all()  # drain() waits for the last one


def internal_error(doing: str) -> Failed:
    """A 500 for a bug met while `doing` something for one request: the client gets an error id,
    the log gets the traceback under the same id (an exception's text may hold what a client
    should not see)."""
    error_id = uuid.uuid4().hex[:12]
    print(f"clm-local: internal error {error_id} while {doing}:", file=sys.stderr)
    traceback.print_exc()
    sys.stderr.flush()
    return Failed(500, f"internal error {error_id} while {doing} (the server's log has the details)")
