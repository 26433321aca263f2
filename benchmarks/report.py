"""The benchmark's result as Markdown: the machine and settings, then one row per configuration.

Each figure is printed as "median (min–max)" so that the spread over repeats is visible next to
the value, and the ratio of medians to `base` follows it: that ratio is the price of alignment
control, the thing the benchmark exists to show.
"""

from __future__ import annotations

from clm_local.benchmarks.suite import FIGURES

HEADINGS = {"prefill_tps": "prefill tok/s", "decode_tps": "decode tok/s", "peak_rss_mb": "peak RSS MiB"}
DESCRIPTIONS = {
    "base": "the base GGUF alone, one sequence (stock llama.cpp)",
    "embed": "CLM file, embed mode: one sequence, h = e + alpha (P(e) - e)",
    "logits": "CLM file, logits mode: aligned and reference sequences in one batch, mixed before the head",
    "two_model": "base GGUF + aligned GGUF in two contexts, decoded one after the other, logits mixed",
}


def format_markdown(result: dict[str, dict[str, object]]) -> str:
    machine, configs = result["machine"], result["configs"]
    lines = [_machine_line(machine), _run_line(machine["run"]), "", *_table(configs), ""]
    lines += [f"- `{config}`: {text}" for config, text in DESCRIPTIONS.items()]
    lines += ["", _versus_two_model(configs), _memory_note(configs)]
    return "\n".join(lines)


def _machine_line(machine: dict[str, object]) -> str:
    before, after = machine["load_average_before"], machine["load_average_after"]
    return (
        f"Machine: {machine['cpu']}, {machine['cores']} cores, --threads {machine['threads']}; "
        f"{machine['os']}; Python {machine['python']}, llama-cpp-python {machine['llama_cpp_python']}; "
        f"load average (1/5/15 min) {_joined(before)} before, {_joined(after)} after."
    )


def _run_line(run: dict[str, object]) -> str:
    return (
        f"Run: {run['model']}; context {run['n_ctx']} tokens per sequence; "
        f"{run['prompt_tokens']}-token prompt, {run['gen_tokens']} greedy tokens; alpha {run['alpha']}; "
        f"{run['repeat']} repeats, configurations interleaved, each run in a fresh process; "
        "median (min–max)."
    )


def _table(configs: dict[str, dict[str, object]]) -> list[str]:
    header = ["config"]
    for figure in FIGURES:
        header += [HEADINGS[figure], "× base"]
    header.append("KV cache MiB")
    rows = [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for config, summary in configs.items():
        cells = [f"`{config}`"]
        for figure in FIGURES:
            low, high = summary["min"][figure], summary["max"][figure]
            cells += [f"{_number(summary[figure])} ({_number(low)}–{_number(high)})"]
            cells += [f"{summary['vs_base'][figure]:.2f}"]
        cells.append(_number(summary["kv_cache_mb"]))
        rows.append(_row(cells))
    return rows


def _versus_two_model(configs: dict[str, dict[str, object]]) -> str:
    logits, two_model = configs["logits"], configs["two_model"]
    ratios = ", ".join(f"{HEADINGS[figure]} {logits[figure] / two_model[figure]:.2f}×" for figure in FIGURES)
    return f"`logits` against `two_model` (medians): {ratios}."


def _memory_note(configs: dict[str, dict[str, object]]) -> str:
    startup = max(summary["startup_rss_mb"] for summary in configs.values())
    base_kv, clm_kv = configs["base"]["kv_cache_mb"], configs["embed"]["kv_cache_mb"]
    return (
        f"Peak RSS counts the whole Python process: up to {_number(startup)} MiB of it is the interpreter, "
        "numpy and the llama.cpp bindings before any model is loaded. KV cache (f16, as allocated for "
        f"the context): {_number(base_kv)} MiB per sequence for the base, {_number(clm_kv)} MiB for the "
        "CLM file (one block more); `logits` holds two CLM sequences, `two_model` one of each."
    )


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _joined(values: list[float]) -> str:
    return "/".join(f"{value:g}" for value in values)
