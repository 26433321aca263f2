"""Answer sets that survive a stop: `recipe compare` answers each (system, seed) once.

An answer set is one model (or pair of models) answering every prompt of a list greedily at each of
its alphas, measured (cells.answer_records). It is saved as `<key>.jsonl`, written whole under a
temporary name and renamed, so a file that exists is a finished set; with it `<key>.meta.json`
records how long the set took and, when asked, the single-answer decode speed at each alpha and the
bytes of weights the set's models hold, and which model file it came from (a set whose model was
trained again is answered again). A store is one folder for one prompt list and one answer
length (`prompts.json` there says which, and a different list is refused): a second run finds the
finished sets and answers only the missing ones. Models load when a set needs them, so a run with
every set finished loads none.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

from clm_local.errors import ClmError
from clm_local.files import write_json, write_text
from clm_local.recipe.answers import (
    ClmSource,
    LogitSource,
    MixSource,
    PlainSource,
    context_for,
    decode_speed,
    templated_prompts,
)
from clm_local.recipe.cells import System, answer_records
from clm_local.runtime.model import ClmModel

# A source of answers for a set, from the model file it is given (None: the base model), and the
# files whose weights it holds in memory.
SourceFactory = Callable[[Path | None], AbstractContextManager[tuple[LogitSource, list[Path]]]]


class AnswerStore:
    def __init__(
        self,
        folder: Path,
        prompts: Sequence[str],
        max_tokens: int,
        *,
        slots: int,
        threads: int | None,
        speed_tokens: int = 0,
    ) -> None:
        from clm_local.default_model import base_model_path

        self.folder, self.texts, self.max_tokens = folder, list(prompts), max_tokens
        self.slots, self.threads, self.speed_tokens = slots, threads, speed_tokens
        self.base_path = base_model_path()
        folder.mkdir(parents=True, exist_ok=True)
        listing = folder / "prompts.json"
        if listing.is_file() and json.loads(listing.read_text()) != {
            "prompts": self.texts,
            "max_tokens": max_tokens,
        }:
            raise ClmError(f"{folder} holds answers to other prompts: remove it, or answer these elsewhere")
        write_json(listing, {"prompts": self.texts, "max_tokens": max_tokens})
        self._stack = ExitStack()
        self._base: ClmModel | None = None
        self._tokens: list[list[int]] | None = None

    # --- models, loaded once a set needs them ------------------------------------------------

    @property
    def prompts(self) -> list[list[int]]:
        if self._tokens is None:
            self._tokens = templated_prompts(self.base_path, self.texts, self.threads)
        return self._tokens

    def load(self, path: Path, n_sequences: int) -> AbstractContextManager[ClmModel]:
        import clm_local

        n_ctx = context_for(self.prompts, self.max_tokens)
        return clm_local.load(path, n_ctx=n_ctx, n_sequences=n_sequences, n_threads=self.threads)

    @property
    def base(self) -> ClmModel:
        """The base model: every answer's perplexity scorer, and the second model of the mix."""
        if self._base is None:
            self._base = self._stack.enter_context(self.load(self.base_path, self.slots))
        return self._base

    def close(self) -> None:
        self._stack.close()
        self._base = None

    # --- sources -----------------------------------------------------------------------------

    @contextmanager
    def plain(self, path: Path | None) -> Iterator[tuple[LogitSource, list[Path]]]:
        """One plain model (None: the base)."""
        if path is None:
            yield PlainSource(self.base), [self.base_path]
            return
        with self.load(path, self.slots) as model:
            yield PlainSource(model), [path]

    def clm(self, mode: str) -> SourceFactory:
        """A CLM file in one mode (two sequences per answer in logits mode)."""

        @contextmanager
        def source(path: Path | None) -> Iterator[tuple[LogitSource, list[Path]]]:
            assert path is not None
            with self.load(path, 2 * self.slots) as model:
                yield ClmSource(model, mode), [path]

        return source

    @contextmanager
    def mix(self, path: Path | None) -> Iterator[tuple[LogitSource, list[Path]]]:
        """DeRa: z = alpha * z_model + (1 - alpha) * z_base, the model and the base side by side."""
        assert path is not None
        with self.load(path, self.slots) as model:
            yield MixSource(model, self.base), [path, self.base_path]

    def expo(self, alpha: float) -> SourceFactory:
        """ExPO at one alpha from the full-DPO file: its own F32 GGUF, written here, answered, removed
        (alpha 1 is the DPO model itself, the file as it is)."""

        @contextmanager
        def source(path: Path | None) -> Iterator[tuple[LogitSource, list[Path]]]:
            from clm_local.recipe.expo import write_expo_gguf

            assert path is not None
            if alpha == 1.0:
                with self.plain(path) as made:
                    yield made
                return
            out = self.folder / "expo.gguf"
            write_expo_gguf(self.base_path, path, alpha, out)
            try:
                with self.plain(out) as made:
                    yield made
            finally:
                out.unlink(missing_ok=True)

        return source

    # --- sets --------------------------------------------------------------------------------

    def answer_set(
        self,
        key: str,
        seed: int | None,
        system: str,
        alphas: Sequence[float],
        make: SourceFactory,
        model: Path | None = None,
        *,
        speed: bool = False,
    ) -> list[dict]:
        """The set's records: read when finished before, else answered now and saved."""
        path = self.folder / f"{key}.jsonl"
        wanted = {(float(alpha), index) for alpha in alphas for index in range(len(self.texts))}
        origin = _origin(model or self.base_path)
        if path.is_file() and self.meta(key).get("origin") == origin:
            records = [json.loads(line) for line in path.read_text().splitlines()]
            if {(r["alpha"], r["prompt"]) for r in records} == wanted and all(
                r["system"] == system for r in records
            ):
                return records
        print(f"[compare] answering: {key}", file=sys.stderr)
        started = time.monotonic()
        with make(model) as (source, files):
            records = answer_records(
                System(system, source, list(alphas)), self.prompts, self.base, max_tokens=self.max_tokens
            )
            meta: dict = {"origin": origin, "seconds": round(time.monotonic() - started, 1)}
            meta["answers"] = len(records)
            meta["weights_bytes"] = sum(file.stat().st_size for file in files)
            if speed and self.speed_tokens:
                shortest = min(self.prompts, key=len)
                meta["decode_tok_s"] = {
                    str(alpha): round(decode_speed(source, shortest, alpha, self.speed_tokens), 2)
                    for alpha in alphas
                }
        for record in records:
            record["seed"] = seed
        write_json(self.folder / f"{key}.meta.json", meta)
        # last: the set is finished
        write_text(path, "".join(json.dumps(record) + "\n" for record in records))
        return records

    def meta(self, key: str) -> dict:
        """What `<key>.meta.json` recorded: origin, seconds, answers, weights_bytes, decode_tok_s."""
        path = self.folder / f"{key}.meta.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def _origin(model: Path) -> str:
    """Which model file a set came from: a run trained again writes a new file, and its sets are
    answered again."""
    stat = model.stat()
    return f"{model.name}:{stat.st_size}:{stat.st_mtime_ns}"
