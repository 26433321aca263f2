"""The one thread that owns the model: slots, continuous batching and chunked prefill.

llama.cpp objects must not be used from two threads at once, so one scheduler thread makes every
llama.cpp call (loading, tokenizing, decoding, sampling, freeing). HTTP handlers only hand it a
`Job` through `submit` and read the job's events from an asyncio queue.

Each of the `parallel` slots serves one request. A step of the loop decodes, in ONE `decode` call
(one llama_decode), the next token of every slot that is answering plus a bounded chunk of the
prompt of slots that are still reading theirs, so a long prompt never stalls the others for long.
Slots differ freely in alpha and mode within a batch, because the patched llama.cpp reads the
pre-layer coefficient per sequence:
- embed mode: the slot's first sequence, at coefficient alpha;
- logits mode: its aligned (coefficient 1) and reference (coefficient 0) sequences, whose logits
  are mixed with the slot's alpha after the step; at alpha 0 or 1 the mix is a single path (the
  base model, or the aligned one), which one sequence at that coefficient computes identically,
  as in embed mode: a request's alpha never changes, so its slot needs no second sequence;
- a plain model: one sequence, alpha has no effect.
New requests take free slots between steps; a finished or abandoned one leaves and its sequences
are emptied. Requests beyond the slots wait in a bounded queue; past it `submit` refuses them.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import sys
import threading
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clm_local.chat.sampling import Sampler, SamplingParams
from clm_local.chat.template import ChatTemplate, Message
from clm_local.errors import ClmError
from clm_local.runtime.model import NON_FINITE_CAUSES, ClmModel, ModelInfo, fewest_sequences_mode, read_info

# -- what a handler asks for and what it hears back ---------------------------------------------------


@dataclass(frozen=True)
class GenerationRequest:
    """One answer to generate: a conversation (chat) or a raw text prompt (completions)."""

    alpha: float
    mode: str
    sampling: SamplingParams
    max_tokens: int | None  # None: until the end of the context
    stop: tuple[str, ...] = ()
    messages: list[Message] | None = None
    prompt: str | None = None


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
    decode_sequences: int = 0  # summed over steps: sequences in each llama_decode
    decode_slots: int = 0  # summed over steps: slots (requests) in each llama_decode
    decode_tokens: int = 0
    max_sequences_per_step: int = 0
    max_slots_per_step: int = 0
    steps_with_several_slots: int = 0
    requests_started: int = 0
    requests_finished: int = 0
    requests_cancelled: int = 0
    requests_failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def record_step(self, n_slots: int, n_sequences: int, n_tokens: int) -> None:
        self.decode_steps += 1
        self.decode_slots += n_slots
        self.decode_sequences += n_sequences
        self.decode_tokens += n_tokens
        self.max_slots_per_step = max(self.max_slots_per_step, n_slots)
        self.max_sequences_per_step = max(self.max_sequences_per_step, n_sequences)
        self.steps_with_several_slots += n_slots > 1


# -- text after each token ------------------------------------------------------------------------


class StopStrings:
    """Cuts the answer at the first of the request's stop strings, across token boundaries.

    Text that could be the start of a stop string is held back until the next piece shows
    whether it is one.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that is safe to send now, and whether a stop string was reached."""
        self.pending += text
        hits = [i for i in (self.pending.find(stop) for stop in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = max((n for stop in self.stops for n in range(1, len(stop)) if self.pending.endswith(stop[:n])),
                   default=0)  # fmt: skip
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class Slot:
    """One request in progress and the KV-cache sequences it owns."""

    sequences: tuple[int, ...]  # all the slot may use; `active` says which this request uses
    job: Job | None = None
    active: tuple[int, ...] = ()
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


class Scheduler:
    """Loads the model in its own thread and serves jobs in `parallel` slots until `stop`."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        parallel: int = 4,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        max_queue: int = 16,
        prefill_chunk: int = 128,
    ) -> None:
        if parallel < 1 or max_queue < 0 or prefill_chunk < 1 or n_ctx < 2:
            raise ClmError("parallel and prefill_chunk must be positive, max_queue not negative, n_ctx > 1")
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ClmError(f"{model_path}: no such file")
        self.info: ModelInfo = read_info(self.model_path)  # metadata only: no llama.cpp call
        self.parallel = parallel
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.metrics = Metrics()
        self._lock = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._in_flight = 0  # jobs submitted and not yet answered to the end
        self._stopping = False
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._slots: list[Slot] = []

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

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def submit(self, job: Job) -> None:
        """Queue a job for the next free slot; QueueFull when the slots and the queue are full."""
        with self._lock:
            if self._stopping or not self._ready.is_set():
                raise QueueFull("the server is not running")
            if self._in_flight >= self.parallel + self.max_queue:
                raise QueueFull(f"all {self.parallel} slots are busy and {self.max_queue} requests wait")
            self._in_flight += 1
            self._waiting.append(job)
            self._lock.notify_all()

    def load(self) -> tuple[int, int]:
        """(requests in slots or waiting, requests waiting), for /health and /metrics."""
        with self._lock:
            return self._in_flight, len(self._waiting)

    # -- the scheduler thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            model = ClmModel(
                self.model_path,
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_sequences=self.parallel * (2 if self.info.is_clm else 1),
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
        per_slot = 2 if self.info.is_clm else 1
        self._slots = [Slot(tuple(range(i * per_slot, (i + 1) * per_slot))) for i in range(self.parallel)]
        # One step must stay one llama_decode: ClmModel.decode splits a sequence's tokens into
        # pieces of n_batch / (sequences in the call), at least this many.
        self._max_piece = max(1, model.n_batch // model.n_sequences)
        self._ready.set()
        try:
            while self._next_jobs():
                self._drop_abandoned()
                if any(slot.job for slot in self._slots):
                    self._step_or_fail()
        finally:
            with self._lock:
                self._stopping = True  # also when the loop died of a bug: refuse new jobs
            for slot in self._slots:
                if slot.job is not None:
                    self._end(slot, Failed(503, "the server is shutting down"))
            with self._lock:
                for job in self._waiting:
                    job.emit(Failed(503, "the server is shutting down"))
                self._waiting.clear()
            model.close()

    def _next_jobs(self) -> bool:
        """Move waiting jobs into free slots (waiting while there is nothing to do); False: stop."""
        while True:
            with self._lock:
                if self._stopping:
                    return False
                free = [slot for slot in self._slots if slot.job is None]
                busy = len(free) < len(self._slots)
                if not busy and not self._waiting:
                    self._lock.wait()
                    continue
                taken = [self._waiting.popleft() for _ in range(min(len(free), len(self._waiting)))]
            for slot, job in zip(free, taken, strict=False):
                self._admit(slot, job)
            return True

    def _admit(self, slot: Slot, job: Job) -> None:
        """Tokenize the job's prompt into the slot, or answer why it cannot be served."""
        request = job.request
        if job.cancelled:
            self._release(job)
            self.metrics.requests_cancelled += 1
            return
        try:
            if request.messages is not None:
                prompt = self.template.tokens(request.messages)
            else:
                prompt = self.model.tokenize(request.prompt or "", add_special=True, parse_special=True)
            if not prompt:
                raise ClmError("the prompt is empty")
            if len(prompt) >= self.n_ctx:
                raise ClmError(f"the prompt has {len(prompt)} tokens, the context holds {self.n_ctx} (--ctx)")
            if not self.info.is_clm:
                coefficients: tuple[float, ...] = (1.0,)
            elif fewest_sequences_mode(request.alpha, request.mode) == "embed":  # see above
                coefficients = (request.alpha,)
            else:
                coefficients = (1.0, 0.0)  # aligned, reference: mixed by alpha after each step
            active = slot.sequences[: len(coefficients)]
            if self.info.is_clm:
                for seq, coefficient in zip(active, coefficients, strict=True):
                    self.model.set_alpha(seq, coefficient)
        except ClmError as error:
            self._reject(job, 400, str(error))
            return
        slot.job, slot.active = job, active
        slot.prompt, slot.prefilled, slot.produced = prompt, 0, 0
        slot.max_tokens = request.max_tokens or self.n_ctx
        slot.sampler = Sampler(self.model.n_vocab, request.sampling)
        slot.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.stops = StopStrings(request.stop)
        self.metrics.requests_started += 1
        self.metrics.prompt_tokens += len(prompt)
        job.emit(Started(len(prompt)))

    def _drop_abandoned(self) -> None:
        for slot in self._slots:
            if slot.job is not None and slot.job.cancelled:
                self.metrics.requests_cancelled += 1
                self._end(slot, None)

    def _step_or_fail(self) -> None:
        try:
            self._step()
        except Exception as error:  # noqa: BLE001 - a failed step must not take the server down
            if not isinstance(error, ClmError):
                traceback.print_exc()
            for slot in self._slots:
                if slot.job is not None:
                    self.metrics.requests_failed += 1
                    self._end(slot, Failed(500, f"generation failed: {error}"))

    def _step(self) -> None:
        """One llama_decode: the next token of answering slots and prompt chunks of the others."""
        batch: dict[int, list[int]] = {}
        mix: dict[int, tuple[int, float]] = {}  # logits mode: aligned sequence -> (reference, alpha)
        sampling: list[Slot] = []
        n_slots = 0
        budget = self.prefill_chunk
        for slot in self._slots:
            if slot.job is None:
                continue
            if slot.reading_prompt:
                if budget <= 0:
                    continue
                count = min(len(slot.prompt) - slot.prefilled, budget, self._max_piece)
                tokens = slot.prompt[slot.prefilled : slot.prefilled + count]
                slot.prefilled += count
                budget -= count
            else:
                tokens = [slot.last_token]
            n_slots += 1
            for seq in slot.active:
                batch[seq] = tokens
            if len(slot.active) == 2:
                mix[slot.active[0]] = (slot.active[1], slot.job.request.alpha)
            if not slot.reading_prompt:
                sampling.append(slot)
        if not batch:
            return
        rows = self.model.decode(batch, check=False, mix=mix)  # checked per slot: one alpha fails one slot
        self.metrics.record_step(n_slots, len(batch), sum(len(tokens) for tokens in batch.values()))
        for slot in sampling:
            logits = rows[slot.active[0]][-1]
            if not np.isfinite(logits).all():
                self.metrics.requests_failed += 1
                message = f"alpha {slot.job.request.alpha:g} gives non-finite logits: {NON_FINITE_CAUSES}"
                self._end(slot, Failed(400, message))
                continue
            self._answer(slot, logits)

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
        elif slot.produced >= slot.max_tokens or len(slot.prompt) + slot.produced - 1 >= self.n_ctx:
            self._finish(slot, "length")

    def _finish(self, slot: Slot, reason: str, *, flush: bool = True) -> None:
        if flush:
            text = slot.stops.feed(slot.utf8.decode(b"", final=True))[0] + slot.stops.flush()
            if text:
                slot.job.emit(Piece(text))
        self.metrics.requests_finished += 1
        self.metrics.completion_tokens += slot.produced
        self._end(slot, Finished(reason, len(slot.prompt), slot.produced))

    def _end(self, slot: Slot, event: Event | None) -> None:
        """Free the slot: empty its sequences, close its sampler, tell the job (if it listens)."""
        job = slot.job
        slot.job = None
        for seq in slot.active:
            self.model.forget_after(seq, 0)
        if slot.sampler is not None:
            slot.sampler.close()
            slot.sampler = None
        slot.prompt, slot.active = [], ()
        if event is not None:
            job.emit(event)
        self._release(job)

    def _reject(self, job: Job, status: int, message: str) -> None:
        self.metrics.requests_failed += 1
        job.emit(Failed(status, message))
        self._release(job)

    def _release(self, job: Job) -> None:
        with self._lock:
            self._in_flight -= 1
