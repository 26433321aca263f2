"""`clm-local chat` and `clm-local demo`: talk to a CLM model with an alpha dial.

The work lives in clm_local.chat; this module maps options to a loaded model and a ChatSession,
and picks interactive or one-shot use. Answers go to stdout, everything else to stderr, so
`echo question | clm-local chat > answer.txt` works.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from clm_local.cli.options import Mode, Rpc, Threads, model_file
from clm_local.cli.pipes import reader_may_leave

if TYPE_CHECKING:
    from clm_local.chat import ChatSession
    from clm_local.runtime.model import ClmModel

ModelOption = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="A CLM (or plain) GGUF; default: the embedded default model.",
        show_default=False,
    ),
]
ONE_SHOT_FIRST_CTX = 64  # a one-shot answer's context until its prompt is measured
CtxOption = Annotated[int, typer.Option("--ctx", help="Context of the conversation, in tokens.")]
GpuLayersOption = Annotated[
    int | None,
    typer.Option(
        "--n-gpu-layers",
        help="Layers to offload to the GPU (GPU builds; 99: all; default: CLM_LOCAL_GPU_LAYERS, else 0).",
        show_default=False,
    ),
]

DEMO_PROMPT = "Give me one tip for staying focused while studying."


def register(app: typer.Typer) -> None:
    """Add `chat` and `demo` to the app."""
    app.command()(chat)
    app.command()(demo)


def chat(
    model: ModelOption = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            help="0: base model, 1: aligned, >1: stronger (default: the file's).", show_default=False
        ),
    ] = None,
    mode: Mode = None,
    system: Annotated[str | None, typer.Option(help="System message.", show_default=False)] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="Answer this one message and exit (also: text on standard input).", show_default=False
        ),
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 512,
    temp: Annotated[float, typer.Option(help="Temperature; 0 is greedy.")] = 0.8,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold (1: off).")] = 0.95,
    top_k: Annotated[int, typer.Option(help="Keep the k most likely tokens (0: off).")] = 40,
    min_p: Annotated[
        float, typer.Option(help="Drop tokens below this share of the top one (0: off).")
    ] = 0.05,
    repeat_penalty: Annotated[float, typer.Option(help="Penalty on the last 64 tokens (1: off).")] = 1.0,
    seed: Annotated[
        int | None, typer.Option(help="Random seed (default: random).", show_default=False)
    ] = None,
    ctx: CtxOption = 4096,
    threads: Threads = None,
    n_gpu_layers: GpuLayersOption = None,
    rpc: Rpc = None,
) -> None:
    """Chat with a CLM model; change alpha and mode as you go (/help inside the chat)."""
    from clm_local.chat import ChatSession, SamplingParams
    from clm_local.chat.repl import run_repl
    from clm_local.chat.sampling import RANDOM_SEED
    from clm_local.errors import ClmError
    from clm_local.runtime.model import check_alpha, check_mode

    # Refuse bad settings before the model is loaded.
    sampling = SamplingParams(
        temp=temp,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repeat_penalty=repeat_penalty,
        seed=RANDOM_SEED if seed is None else seed,
    )
    alpha = None if alpha is None else check_alpha(alpha)
    mode = None if mode is None else check_mode(mode)
    text = prompt
    if text is None and not sys.stdin.isatty():
        text = sys.stdin.read()  # piped in: answer it, like --prompt
    if text is not None and not text.strip():
        raise ClmError("the prompt is empty")
    with _warnings_on_stderr():
        path = _model_path(model)
        if text is None:
            loaded = _load(path, ctx=ctx, threads=threads, n_gpu_layers=n_gpu_layers, rpc=rpc)
        else:
            mode = _one_answer_mode(path, alpha, mode)
            loaded = _load_for_one_answer(path, mode, threads=threads, n_gpu_layers=n_gpu_layers, rpc=rpc)
        messages = [] if system is None else [{"role": "system", "content": system}]
        session = ChatSession(
            loaded,
            alpha=alpha,
            mode=mode,
            messages=messages,
            sampling=sampling,
            max_tokens=max_tokens,
            notify=_note,
        )
        if text is not None:
            _fit_to_one_answer(session, text.strip(), ctx)
            _print_answer(session.ask(text.strip()))
            if session.answer_was_cut:
                _note(f"the answer was cut at --max-tokens {max_tokens}")
            return
        info = loaded.info
        kind = (
            f"CLM, default alpha {info.alpha_default:g} in {info.mix_default} mode"
            if info.is_clm
            else "plain"
        )
        _note(f"{info.name or Path(info.path).name} ({kind}); /help lists the commands")
        run_repl(session)


def demo(
    model: ModelOption = None,
    prompt: Annotated[str, typer.Option(help="The question asked at every alpha.")] = DEMO_PROMPT,
    max_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 60,
    threads: Threads = None,
) -> None:
    """The alpha dial in one minute: one question, greedy answers at three alphas."""
    from clm_local.chat import ChatSession, SamplingParams

    with _warnings_on_stderr():
        loaded = _load(_model_path(model), ctx=1024, threads=threads, n_gpu_layers=None)
        session = ChatSession(
            loaded, sampling=SamplingParams(temp=0.0), max_tokens=max_tokens, notify=lambda _: None
        )
        default = loaded.info.alpha_default if loaded.info.alpha_default > 0 else 1.0
        _note(
            f"{prompt!r}, greedy: alpha 0 is the base model, {default:g} the file's default, "
            f"{2 * default:g} pushes further"
        )
        with reader_may_leave():
            for alpha in (0.0, default, 2 * default):
                session.reset()
                session.set_alpha(alpha)
                print(f"alpha={alpha:g} ({session.mode}): ", end="", flush=True)
                for piece in session.ask(prompt):
                    print(piece.replace("\n", " "), end="", flush=True)
                print()


def _model_path(path: Path | None) -> Path:
    """The named GGUF, or the embedded default model (saying when its P is untrained).

    Call it inside _warnings_on_stderr, which scopes the warning filter set here.
    """
    from clm_local import default_model

    if path is not None:
        return model_file(path)
    if not default_model.has_trained_pre_layer():
        _note("the default model has no trained pre-layer yet: it is the base model, alpha has no effect")
        warnings.filterwarnings("ignore", message=".*no CLM pre-layer")  # said just now
    return default_model.default_model_path()


def _load(
    path: Path,
    *,
    ctx: int,
    threads: int | None,
    n_gpu_layers: int | None,
    n_sequences: int | None = None,
    rpc: str | None = None,
) -> ClmModel:
    import clm_local

    return clm_local.load(
        path, n_ctx=ctx, n_threads=threads, n_gpu_layers=n_gpu_layers, n_sequences=n_sequences, rpc=rpc
    )


def _one_answer_mode(path: Path, alpha: float | None, mode: str | None) -> str | None:
    """The mode a one-shot answer runs in: the one asked for (or the file's), in as few sequences
    as its fixed alpha allows (fewest_sequences_mode)."""
    from clm_local.runtime.model import fewest_sequences_mode, read_info

    info = read_info(path)
    if not info.is_clm:
        return mode
    return fewest_sequences_mode(info.alpha_default if alpha is None else alpha, mode or info.mix_default)


def _load_for_one_answer(
    path: Path, mode: str | None, *, threads: int | None, n_gpu_layers: int | None, rpc: str | None
) -> ClmModel:
    """The model with a small context and, in embed mode, one sequence: creating the KV cache is a
    good part of the time to first token, and one answer needs neither the reference sequence of
    logits mode nor all of --ctx (_fit_to_one_answer sizes the context once the prompt is known)."""
    return _load(
        path,
        ctx=ONE_SHOT_FIRST_CTX,
        threads=threads,
        n_gpu_layers=n_gpu_layers,
        n_sequences=1 if mode == "embed" else None,
        rpc=rpc,
    )


def _fit_to_one_answer(session: ChatSession, text: str, ctx: int) -> None:
    """Size the context to the prompt plus --max-tokens (one more, so that an answer cut at
    --max-tokens is not also reported as reaching the end of the context), at most --ctx."""
    prompt = session.template.tokens([*session.messages, {"role": "user", "content": text}])
    session.model.resize_context(min(ctx, len(prompt) + session.max_tokens + 1))


def _print_answer(pieces: Iterator[str]) -> None:
    """Stream an answer to stdout and end its line, also when Ctrl-C stops it half way (an error
    before the first piece leaves stdout empty); quietly stop when the reader of stdout leaves."""
    started = False
    with reader_may_leave():
        try:
            for piece in pieces:
                started = True
                sys.stdout.write(piece)
                sys.stdout.flush()
        except BaseException:
            if started:
                _end_line()
            raise
        _end_line()


def _end_line() -> None:
    with suppress(BrokenPipeError):  # the reader is gone: nothing left to end
        sys.stdout.write("\n")
        sys.stdout.flush()


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


@contextmanager
def _warnings_on_stderr() -> Iterator[None]:
    """Python warnings as one `warning: ...` line each, without file names and line numbers."""

    def show(message: Warning | str, *args: object, **kwargs: object) -> None:
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
