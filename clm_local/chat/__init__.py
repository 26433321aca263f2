"""Chat with alpha: conversations, token generation and sampling on a ClmModel.

- `chat(model, messages, alpha=..., mode=...)`: answer the last user message (streamed text);
- `ChatSession`: multi-turn, reusing the KV cache between turns (what `clm-local chat` runs);
- `generate(model, prompt_tokens, ...)` / `Decoder`: the token-level loop under both, which
  `clm-local bench` times as real generation;
- `SamplingParams`: llama.cpp's sampler settings (temp 0 is greedy).
"""

from clm_local.chat.generation import Decoder, generate
from clm_local.chat.sampling import SamplingParams
from clm_local.chat.session import ChatSession, chat

__all__ = ["ChatSession", "Decoder", "SamplingParams", "chat", "generate"]
