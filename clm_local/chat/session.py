"""A conversation with a model: its messages, alpha and mode, and the KV cache reused between turns.

Every turn renders the whole conversation with the chat template and hands the tokens to the
Decoder, which only decodes what is not cached yet. When the conversation outgrows the context,
the oldest exchanges go (the system message stays) and the user is told.
"""

from __future__ import annotations

import codecs
import warnings
from collections.abc import Callable, Iterable, Iterator

from clm_local.chat.generation import Decoder
from clm_local.chat.sampling import SamplingParams
from clm_local.chat.template import ChatTemplate, Message
from clm_local.errors import ClmError
from clm_local.runtime.model import ClmModel, check_alpha, check_mode, fewest_sequences_mode


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


class ChatSession:
    """Multi-turn chat with one model. `ask` streams an answer and records both turns.

    alpha and mode default to the file's clm.* keys. `notify` receives one-line status messages
    (recomputed context, dropped turns); by default they become Python warnings. The session owns
    the model's KV cache: calling `model.logits`, `model.chat` or `generate` on the same model in
    between resets it under the session's feet, so give those a model of their own.
    """

    def __init__(
        self,
        model: ClmModel,
        *,
        alpha: float | None = None,
        mode: str | None = None,
        messages: Iterable[Message] = (),
        sampling: SamplingParams | None = None,
        max_tokens: int = 512,
        notify: Callable[[str], None] = _warn,
    ) -> None:
        if max_tokens < 1:
            raise ClmError(f"max_tokens must be at least 1, got {max_tokens}")
        self.model = model
        self.alpha = check_alpha(model.info.alpha_default if alpha is None else alpha)
        self.mode = check_mode(model.info.mix_default if mode is None else mode)
        self.sampling = sampling or SamplingParams()
        self.max_tokens = max_tokens
        self.notify = notify
        self.template = ChatTemplate.for_model(model)
        self.decoder = Decoder(model)
        self.system: str | None = None
        self.turns: list[Message] = []
        for message in messages:
            _check_message(message)
            if message["role"] == "system" and not self.turns and self.system is None:
                self.system = message["content"]
            else:
                self.turns.append(dict(message))

    @property
    def messages(self) -> list[Message]:
        """The conversation as the chat template sees it."""
        system = [] if self.system is None else [{"role": "system", "content": self.system}]
        return system + self.turns

    # -- settings that may be changed between turns -------------------------------------------

    def set_alpha(self, alpha: float) -> None:
        self.alpha = check_alpha(alpha)
        self._say_if_recomputed()

    def set_mode(self, mode: str) -> None:
        self.mode = check_mode(mode)
        self._say_if_recomputed()

    def set_system(self, text: str | None) -> None:
        """Replace the system message (None removes it); the context is decoded again from it."""
        self.system = text or None

    def reset(self) -> None:
        """Forget the conversation (not the system message); the cached system prompt is reused."""
        self.turns = []

    def _say_if_recomputed(self) -> None:
        """One line when the new setting costs a prefill of the conversation on the next answer:
        embed mode recomputes it at the new alpha; logits mode, leaving alpha 0 or 1 for the first
        time, computes the second path once (the Decoder starts on the one path those need)."""
        if not self.model.info.is_clm:
            return
        context = f"the context ({len(self.decoder.cached)} tokens)"
        if self.decoder.needs_recompute(self.alpha, self.mode):
            self.notify(
                f"{self.mode} mode at alpha {self.alpha:g}: {context} is computed again on the next answer"
            )
        elif self.decoder.needs_reference(self.alpha, self.mode):
            self.notify(
                f"{self.mode} mode at alpha {self.alpha:g}: {context} is computed once more on the next "
                "answer, for the second path of the mix (from then on every alpha is free)"
            )

    # -- a turn ------------------------------------------------------------------------------------

    def ask(self, text: str) -> Iterator[str]:
        """Stream the answer to `text` as pieces of text; the exchange is recorded even when the
        consumer stops early (Ctrl-C), with the answer as far as it was written."""
        self.turns.append({"role": "user", "content": text})
        try:
            prompt = self._fit_into_context()
        except ClmError:
            self.turns.pop()
            raise
        answer: list[str] = []
        try:
            tokens = self.decoder.generate(prompt, self.alpha, self.mode, self.sampling, self.max_tokens)
            for piece in _text(self.model, tokens):
                answer.append(piece)
                yield piece
            if len(self.decoder.cached) >= self.decoder.n_ctx:
                self.notify(f"the answer reached the end of the context ({self.decoder.n_ctx} tokens)")
        finally:
            self.turns.append({"role": "assistant", "content": "".join(answer)})

    @property
    def answer_was_cut(self) -> bool:
        """Whether the last answer stopped at max_tokens rather than where the model ended it."""
        return self.decoder.hit_max_tokens

    def _fit_into_context(self) -> list[int]:
        """Prompt tokens of the conversation, dropping the oldest exchanges until an answer fits."""
        n_ctx = self.decoder.n_ctx
        room = min(self.max_tokens, n_ctx // 2)  # keep this much of the context for the answer
        dropped = 0
        tokens = self.template.tokens(self.messages)
        while len(tokens) + room > n_ctx and len(self.turns) > 2:
            del self.turns[:2]  # the oldest question and its answer
            dropped += 1
            tokens = self.template.tokens(self.messages)
        if len(tokens) >= n_ctx:
            raise ClmError(
                f"the conversation needs {len(tokens)} tokens, the context holds {n_ctx}: "
                "use a shorter message or a larger context (--ctx)"
            )
        if dropped:
            self.notify(
                f"the context ({n_ctx} tokens) is full: dropped the {dropped} oldest exchange(s)"
                + (", kept the system message" if self.system else "")
            )
        return tokens


def chat(
    model: ClmModel,
    messages: list[Message],
    *,
    alpha: float | None = None,
    mode: str | None = None,
    stream: bool = True,
    max_tokens: int = 512,
    **sampling: float | int,
) -> Iterator[str] | str:
    """Answer the last (user) message of `messages`: pieces of text, or one string if not stream.

    sampling takes SamplingParams' fields (temp, top_k, top_p, min_p, repeat_penalty, seed).
    Each call starts from an empty cache; keep a ChatSession to reuse it between turns. The
    answer's alpha cannot change, so it runs in as few sequences as that alpha allows.
    """
    if not messages or messages[-1].get("role") != "user":
        raise ClmError("the last message must be the user's ({'role': 'user', 'content': ...})")
    alpha = check_alpha(model.info.alpha_default if alpha is None else alpha)
    mode = check_mode(model.info.mix_default if mode is None else mode)
    session = ChatSession(
        model,
        alpha=alpha,
        mode=fewest_sequences_mode(alpha, mode),
        messages=messages[:-1],
        sampling=SamplingParams(**sampling),
        max_tokens=max_tokens,
    )
    pieces = session.ask(messages[-1]["content"])
    return pieces if stream else "".join(pieces)


def _text(model: ClmModel, tokens: Iterable[int]) -> Iterator[str]:
    """Decode tokens into text as they come; a UTF-8 character may span several tokens. A
    character left incomplete when the answer stops (max_tokens, end of context) is dropped
    rather than shown as half a character."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in tokens:
        piece = utf8.decode(model.token_to_piece(token))
        if piece:
            yield piece


def _check_message(message: Message) -> None:
    if (
        not isinstance(message, dict)
        or not isinstance(message.get("content"), str)
        or not message.get("role")
    ):
        raise ClmError(f"a message needs a 'role' and a text 'content', got {message!r}")
