"""The benchmark's settings and their checks (no heavy imports: the command line reads the defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from clm_local.errors import ClmError

# chat's default context: memory is measured with the KV cache a chat session allocates.
DEFAULT_CTX = 4096


@dataclass(frozen=True)
class BenchSettings:
    prompt_tokens: int = 256
    gen_tokens: int = 128
    threads: int | None = None  # None: every core, fixed (the benchmark compares like with like)
    repeat: int = 5
    n_ctx: int = DEFAULT_CTX
    alpha: float = 0.8
    rpc: tuple[str, ...] = ()  # llama.cpp rpc-servers holding the layers (runtime/rpc.py)

    def check(self) -> None:
        """Refuse settings that cannot give a figure, before anything is written or loaded."""
        if self.prompt_tokens < 1 or self.repeat < 1:
            raise ClmError("--prompt-tokens and --repeat must be at least 1")
        if self.gen_tokens < 2:
            raise ClmError("--gen-tokens must be at least 2 (decode speed needs one step after the first)")
        if not math.isfinite(self.alpha):
            raise ClmError(f"--alpha must be a finite number, got {self.alpha}")
        if self.threads is not None and self.threads < 1:
            raise ClmError("--threads must be at least 1")
        if self.prompt_tokens + self.gen_tokens > self.n_ctx:
            raise ClmError(
                f"{self.prompt_tokens} prompt + {self.gen_tokens} generated tokens do not fit "
                f"the context of {self.n_ctx}"
            )
