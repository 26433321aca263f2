"""A scripted person teaches the served model a preference through the Teach API; held-out
answers then show how far 25, 50, 100, 200 pairs move it, at every alpha.

    .venv/bin/python -m clm_local.benchmarks.teach_sim [--pairs 25,50,100,200] [--n-eval 57]
        [--work teach-sim] [--out FILE.json] [--plot FILE.png] [--model GGUF] [--max-tokens 128]
        [--parallel 4] [--threads N] [--url http://127.0.0.1:8080]

The person dislikes bullet and numbered lists, a preference a program can judge and different
in kind from length: of two answers, the one with fewer list-item lines wins, and equal counts
are a tie (nothing is saved, as the page's T key). Everything goes through the HTTP API of a
real `clm-local serve` child process, as the web page's Teach view does:

1. labelling: prompts of the recipe's train split of the kind whose answers come as lists or
   not (how-to, steps, tips, ways, ideas, lists, pros and cons, facts, reasons, benefits: 139 of
   its 293; on the others both answers almost never have a list, and a person who dislikes lists
   has nothing to choose between), two answers each from POST
   /v1/chat/completions at alpha 0 (the base, DPO's reference policy) with two seeds at
   temperature 0.9; a decisive pair goes to POST /v1/clm/preferences;
2. training: POST /v1/clm/train, then GET /v1/clm/train until it ends (the time of each of its
   stages is kept);
3. loading: POST /v1/clm/dials/active switches the server to the new dial;
4. evaluating: greedy answers to the recipe's held-out prompts at alpha 0, 0.5, 1, 1.5 and 2;
   per alpha the share of answers with a list, list-item lines and words per answer, each with
   a 95% bootstrap interval (recipe/cells.py), and the change of the list share from alpha 0 with
   a paired interval (the same prompts answered at both alphas: a bootstrap over prompts of each
   prompt's difference, which is narrower than comparing two independent intervals and is what
   "the dial moved the measure" means here: its interval excludes 0). Alpha 0 bypasses P, so it
   is measured once.

Rows are cumulative (label up to 25 pairs, train, measure; label up to 50, ...). Every view of a
pair is appended to WORK/views.jsonl and every finished row written to the JSON at once, so an
interrupted run goes on where it stopped when started again with the same --work. `--report`
recomputes every row's measures from WORK/answers-N.jsonl without a server (after a change of
the measures).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clm_local.files import write_json

READY_PREFIX = "clm-local serving on "
START_TIMEOUT_S = 300
ALPHAS = (0.0, 0.5, 1.0, 1.5, 2.0)
LABEL_TEMPERATURE = 0.9  # as the page's Teach view
POLL_S = 2.0
MAX_VIEWS_PER_PAIR = 20  # labelling gives up beyond this many views per pair wanted
# A list item: a line opening with a bullet (-, *, +, •) or a number and "." or ")", then text.
# The prompts a person who dislikes lists labels: those that invite one (the sim's first run, on
# every train prompt, found a list-count difference in 5 of 26 views, most of them on such prompts).
LIST_PRONE = re.compile(
    r"\b(how|steps?|list|tips?|ways?|ideas?|pros|facts|reasons|benefits)\b", re.IGNORECASE
)
LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+\S", re.MULTILINE)
MEASURES = ("list_share", "list_lines", "words", "ended")
CHANGED = ("list_share", "list_lines")  # measures also given as a paired change from alpha 0


class SimError(Exception):
    """A step that failed, in one line."""


# -- the person --------------------------------------------------------------------------------


def list_lines(text: str) -> int:
    """How many lines of the answer are bullet or numbered list items."""
    return len(LIST_ITEM.findall(text))


def judge(a: str, b: str) -> str | None:
    """Which answer wins ("a" or "b"): the one with fewer list-item lines; None for a tie."""
    la, lb = list_lines(a), list_lines(b)
    return None if la == lb else "a" if la < lb else "b"


def measures(text: str, finish: str) -> dict[str, float]:
    lines = list_lines(text)
    return {
        "list_share": float(lines > 0),
        "list_lines": float(lines),
        "words": float(len(text.split())),
        "ended": float(finish == "stop"),
    }


# -- the server and its API --------------------------------------------------------------------


class Server:
    """`clm-local serve --port 0` in a child process, its data in `data_dir`, stderr in `log`."""

    def __init__(self, model: str | None, data_dir: Path, log: Path, options: Sequence[str]) -> None:
        command = [sys.executable, "-m", "clm_local.cli.main", "serve", "--port", "0"]
        command += ["--data-dir", str(data_dir), *options] + ([model] if model else [])
        self.log = log.open("a")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.url = self._ready()

    def _ready(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        for line in self.process.stdout:  # type: ignore[union-attr]
            if line.startswith(READY_PREFIX):
                return line[len(READY_PREFIX) :].strip().rstrip("/")
            if time.monotonic() > deadline:
                break
        self.stop()
        raise SimError(f"the server did not start: see {self.log.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Api:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 900) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = error.reason
            raise SimError(f"{method} {path}: {error.code} {message}") from None
        except (urllib.error.URLError, OSError) as error:
            raise SimError(f"{method} {path}: {error}") from None

    def answer(self, prompt: str, *, alpha: float, max_tokens: int, temperature: float, seed: int = 0):
        body = {
            "messages": [{"role": "user", "content": prompt}],
            "alpha": alpha,
            "temperature": temperature,
            "seed": seed,
            "max_tokens": max_tokens,
        }
        reply = self.call("POST", "/v1/chat/completions", body)
        choice = reply["choices"][0]
        return choice["message"]["content"], choice["finish_reason"], reply["mode"]


# -- the four stages -----------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut by an interruption
            break
    return records


def label(
    api: Api, target: int, prompts: Sequence[str], views_log: Path, *, max_tokens: int, batch: int
) -> dict[str, Any]:
    """View pairs until the server holds `target` pairs; each view is logged before its pick is
    posted. Views are sampled `batch` at a time (2 * batch requests), judged in order."""
    started = time.monotonic()
    views = read_jsonl(views_log)
    count = api.call("GET", "/v1/clm/preferences")["count"]
    new_views = 0
    with ThreadPoolExecutor(2 * batch) as pool, views_log.open("a") as log:
        while count < target:
            if new_views > MAX_VIEWS_PER_PAIR * target:
                raise SimError(f"{new_views} views gave only {count} of {target} pairs: the person finds "
                               "too few pairs that differ in lists at these settings")  # fmt: skip
            first = len(views)
            numbers = range(first, first + batch)
            futures = [
                pool.submit(
                    api.answer, prompts[v % len(prompts)], alpha=0.0, max_tokens=max_tokens,
                    temperature=LABEL_TEMPERATURE, seed=2 * v + side,
                )
                for v in numbers
                for side in (1, 2)
            ]  # fmt: skip
            results = [f.result() for f in futures]
            for k, v in enumerate(numbers):
                if count >= target:
                    break
                prompt = prompts[v % len(prompts)]
                (a, _, _), (b, _, _) = results[2 * k], results[2 * k + 1]
                verdict = judge(a, b) if a.strip() and b.strip() and a != b else None
                record = {
                    "view": v,
                    "prompt": prompt,
                    "lists": [list_lines(a), list_lines(b)],
                    "pick": verdict,
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                views.append(record)
                new_views += 1
                if verdict is not None:
                    chosen, rejected = (a, b) if verdict == "a" else (b, a)
                    reply = api.call(
                        "POST",
                        "/v1/clm/preferences",
                        {"prompt": prompt, "chosen": chosen, "rejected": rejected},
                    )
                    count = reply["count"]
    decisive = sum(1 for r in views if r["pick"] is not None)
    return {
        "seconds": time.monotonic() - started,
        "views": len(views),
        "new_views": new_views,
        "decisive": decisive,
        "pairs": count,
    }


def names(name: str) -> list[str]:
    """The dial names a row may use: `name`, then `name-2` ... when one is taken."""
    return [name, *(f"{name}-{k}" for k in range(2, 10))]


def train(api: Api, name: str, progress: Callable[[str], None]) -> dict[str, Any]:
    """POST /v1/clm/train and wait; the seconds spent in each stage the status reported."""
    started = time.monotonic()
    for candidate in names(name):  # a run cut short may have left its folder: the name is taken
        try:
            api.call("POST", "/v1/clm/train", {"name": candidate})
            break
        except SimError as error:
            if "exists" not in str(error):
                raise
    else:
        raise SimError(f"every dial name {name}, {name}-2, ... is taken")
    stages: dict[str, float] = {}
    stage, since = "starting", started
    while True:
        time.sleep(POLL_S)
        status = api.call("GET", "/v1/clm/train")
        now = time.monotonic()
        current = status.get("stage") or status["state"]
        if current != stage:
            stages[stage] = stages.get(stage, 0.0) + now - since
            stage, since = current, now
            progress(f"  training: {stage}")
        if status["state"] != "running":
            stages[stage] = stages.get(stage, 0.0) + now - since
            break
    if status["state"] != "done":
        raise SimError(f"training ended {status['state']}: {status.get('message')}")
    return {"seconds": time.monotonic() - started, "stages": stages, "status": status}


def switch(api: Api, dial: str) -> float:
    """Serve the dial; the seconds until it answers."""
    started = time.monotonic()
    api.call("POST", "/v1/clm/dials/active", {"name": dial})
    api.answer("Hi", alpha=1.0, max_tokens=1, temperature=0.0)
    return time.monotonic() - started


def evaluate(
    api: Api, prompts: Sequence[str], alphas: Sequence[float], *, max_tokens: int, workers: int
) -> list[dict[str, Any]]:
    """Greedy answers to every prompt at every alpha: one record each."""
    jobs = [(alpha, i, p) for alpha in alphas for i, p in enumerate(prompts)]

    def one(job: tuple[float, int, str]) -> dict[str, Any]:
        alpha, index, prompt = job
        text, finish, mode = api.answer(prompt, alpha=alpha, max_tokens=max_tokens, temperature=0.0)
        return {"alpha": alpha, "prompt": index, "mode": mode, "finish": finish, "text": text}

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, jobs))


def summarise(answers: Sequence[dict[str, Any]], alphas: Sequence[float]) -> list[dict[str, Any]]:
    """Per alpha: each measure's mean and 95% interval, and (past the first alpha) the paired
    change of the list share and list lines from the first alpha, prompt by prompt."""
    from clm_local.recipe.cells import bootstrap

    by_alpha = {
        alpha: {a["prompt"]: measures(a["text"], a["finish"]) for a in answers if a["alpha"] == alpha}
        for alpha in alphas
    }
    reference = by_alpha[alphas[0]]
    cells = []
    for alpha in alphas:
        mine = by_alpha[alpha]
        cell: dict[str, Any] = {"alpha": alpha, "n": len(mine)}
        for name in MEASURES:
            cell[name] = asdict(bootstrap([m[name] for m in mine.values()]))
        if alpha != alphas[0]:
            shared = sorted(mine.keys() & reference.keys())
            for name in CHANGED:
                differences = [mine[p][name] - reference[p][name] for p in shared]
                cell[f"{name}_change"] = asdict(bootstrap(differences))
        cells.append(cell)
    return cells


def moved(cell: dict[str, Any], measure: str = "list_share") -> bool:
    """Whether the dial moved `measure` at this alpha: its paired change's interval excludes 0."""
    change = cell.get(f"{measure}_change")
    return change is not None and (change["high"] < 0 or change["low"] > 0)


def moves(row: dict[str, Any], measure: str) -> str:
    """Where the dial moved `measure` in this row: each such alpha with its paired change."""
    found = [
        f"a={c['alpha']:g}: {_interval(c[f'{measure}_change'], 2)}" for c in row["cells"] if moved(c, measure)
    ]
    return "; ".join(found) or "no"


# -- output --------------------------------------------------------------------------------------


def _interval(interval: dict[str, float], digits: int) -> str:
    return f"{interval['mean']:.{digits}f} [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"


def row_line(row: dict[str, Any]) -> str:
    """One line: the share of answers with a list at every alpha, the alphas where the dial moved
    it, then each stage's time."""
    shares = "  ".join(f"a{c['alpha']:g} {_interval(c['list_share'], 2)}" for c in row["cells"])
    shares += f"  moved: lists {moves(row, 'list_share')}, list lines {moves(row, 'list_lines')}"
    t = row["times"]
    train_s = "?" if t["train_s"] is None else f"{t['train_s']:.0f}"  # trained before an interruption
    return (
        f"N={row['pairs']:4d}  lists: {shares}  |  label {t['label_s']:.0f} s ({row['views']} views), "
        f"train {train_s} s, load {t['load_s']:.1f} s, eval {t['eval_s']:.0f} s"
    )


def markdown_table(result: dict[str, Any]) -> str:
    """One line per row: the share of held-out answers with a list at every alpha (95% interval),
    the alphas where the dial moved the share and the list-item lines per answer (paired change
    from alpha 0 whose interval excludes 0), words per answer at the first and last alpha, the
    held-out pairs' reward accuracy, the stage times."""
    alphas = result["settings"]["alphas"]
    head = " | ".join(f"lists a={a:g}" for a in alphas)
    lines = [
        f"| pairs | {head} | moved: lists | moved: list lines | words a={alphas[0]:g} / a={alphas[-1]:g} "
        "| held-out acc. | label | train | load | eval |",
        "|---:|" + "---:|" * len(alphas) + "---|---|" + "---:|" * 6,
    ]
    for row in result["rows"]:
        cells = {c["alpha"]: c for c in row["cells"]}
        shares = " | ".join(_interval(cells[a]["list_share"], 2) for a in alphas)
        shares += f" | {moves(row, 'list_share')} | {moves(row, 'list_lines')}"
        words = f"{cells[alphas[0]]['words']['mean']:.0f} / {cells[alphas[-1]]['words']['mean']:.0f}"
        held = row["train"].get("held_out") or {}
        accuracy = held.get("reward_accuracy") if isinstance(held, dict) else None
        accuracy_text = "" if accuracy is None else f"{accuracy:.2f} ({held.get('pairs', '?')} pairs)"
        t = row["times"]
        train_s = "?" if t["train_s"] is None else f"{t['train_s']:.0f} s"
        lines.append(
            f"| {row['pairs']} | {shares} | {words} | {accuracy_text} | {t['label_s']:.0f} s | {train_s} | "
            f"{t['load_s']:.1f} s | {t['eval_s']:.0f} s |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """The share of answers with a list (and words per answer) against alpha, one line per N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [
        ("list_share", "held-out answers with a list"),
        ("list_lines", "list-item lines per answer"),
        ("words", "words per answer"),
    ]
    for axis, (name, label_text) in zip(axes, panels, strict=True):
        for row in result["rows"]:
            x = [c["alpha"] for c in row["cells"]]
            values = [c[name] for c in row["cells"]]
            axis.errorbar(
                x,
                [v["mean"] for v in values],
                yerr=[[v["mean"] - v["low"] for v in values], [v["high"] - v["mean"] for v in values]],
                marker="o",
                capsize=3,
                label=f"{row['pairs']} pairs",
            )
        axis.set(xlabel="alpha", ylabel=label_text)
        axis.axvline(1, color="grey", lw=0.5, ls="--")
        axis.legend()
    figure.suptitle(
        f"teach_sim: a person who dislikes lists ({result['settings']['n_eval']} held-out prompts)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# -- the run -------------------------------------------------------------------------------------


def parse_pairs(text: str) -> list[int]:
    try:
        pairs = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise SimError(f"--pairs: whole numbers separated by commas, got {text!r}") from None
    if not pairs or pairs != sorted(set(pairs)) or pairs[0] < 1:
        raise SimError(f"--pairs: increasing positive numbers, got {text!r}")
    return pairs


def result_path(args: argparse.Namespace) -> Path:
    """Where the rows are kept: --out, else WORK/teach_sim.json."""
    return Path(args.out) if args.out else Path(args.work) / "teach_sim.json"


def run(args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    from clm_local.recipe.prompts import split_prompts

    pairs = parse_pairs(args.pairs)
    split = split_prompts(args.seed, dev=args.dev)
    held_out = split.held_out[: args.n_eval]
    label_prompts = [prompt for prompt in split.train if LIST_PRONE.search(prompt)]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = result_path(args)
    settings = {
        "model": args.model or "default",
        "n_eval": len(held_out),
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "alphas": list(ALPHAS),
        "label_temperature": LABEL_TEMPERATURE,
        "judge": "fewer bullet/numbered list-item lines wins; equal counts are a tie",
        "label_prompts": f"train-split prompts matching {LIST_PRONE.pattern}",
    }
    result: dict[str, Any] = {"settings": settings, "base": None, "rows": []}
    if out.exists():
        previous = json.loads(out.read_text())
        if previous.get("settings") != settings:
            raise SimError(f"{out} was written with other settings: give another --out (or --work)")
        result = previous
    done = {row["pairs"] for row in result["rows"]}
    options = ["--parallel", str(args.parallel), "--ctx", str(args.ctx)]
    options += ["--threads", str(args.threads)] if args.threads else []
    server = None if args.url else Server(args.model, work / "data", work / "server.log", options)
    try:
        api = Api(args.url.rstrip("/") if args.url else server.url)  # type: ignore[union-attr]
        preferences = api.call("GET", "/v1/clm/preferences")
        if pairs[0] < preferences["needed"]:
            raise SimError(
                f"training needs at least {preferences['needed']} pairs: --pairs starts at {pairs[0]}"
            )
        progress(f"server {api.url}, preference file {preferences.get('path')}")
        if result["base"] is None:  # alpha 0 bypasses P: the same answers whatever the dial
            started = time.monotonic()
            answers = evaluate(api, held_out, [0.0], max_tokens=args.max_tokens, workers=args.parallel)
            result["base"] = {"seconds": time.monotonic() - started, "answers": answers}
            write_json(out, result)
            progress(f"alpha 0 (the base) measured in {result['base']['seconds']:.0f} s")
        for target in pairs:
            if target in done:
                continue
            progress(f"N={target}: labelling")
            labelled = label(
                api, target, label_prompts, work / "views.jsonl", max_tokens=args.max_tokens,
                batch=max(1, args.parallel // 2),
            )  # fmt: skip
            name = f"sim-{target}"
            known = {d["name"] for d in api.call("GET", "/v1/clm/dials")["dials"]}
            finished = next((n for n in names(name) if n in known), None)
            if finished is not None:  # trained before an interruption
                trained = {"seconds": None, "stages": {}, "status": {"dial": finished}}
            else:
                progress(f"N={target}: training on {labelled['pairs']} pairs")
                trained = train(api, name, progress)
            dial = trained["status"].get("dial") or name
            load_s = switch(api, dial)
            progress(f"N={target}: evaluating {len(held_out)} held-out prompts at alphas {ALPHAS[1:]}")
            started = time.monotonic()
            answers = evaluate(api, held_out, ALPHAS[1:], max_tokens=args.max_tokens, workers=args.parallel)
            eval_s = time.monotonic() - started
            all_answers = result["base"]["answers"] + answers
            with (work / f"answers-{target}.jsonl").open("w") as f:
                f.writelines(json.dumps(a) + "\n" for a in all_answers)
            status = trained["status"]
            dial_entry = next((d for d in api.call("GET", "/v1/clm/dials")["dials"] if d["name"] == dial), {})
            row = {
                "pairs": labelled["pairs"],
                "target": target,
                "views": labelled["views"],
                "decisive_views": labelled["decisive"],
                "dial": dial,
                "mode": answers[0]["mode"] if answers else None,
                "train": {  # the dial's record: its last steps' numbers, its held-out pairs'
                    **(dial_entry.get("train") or {}),
                    "steps": status.get("steps"),
                    "message": status.get("message"),
                    "held_out": dial_entry.get("held_out"),
                },
                "times": {
                    "label_s": labelled["seconds"],
                    "train_s": trained["seconds"],
                    "train_stages_s": trained["stages"],
                    "load_s": load_s,
                    "eval_s": eval_s,
                },
                "cells": summarise(all_answers, ALPHAS),
            }
            result["rows"].append(row)
            result["rows"].sort(key=lambda r: r["target"])
            write_json(out, result)
            print(row_line(row), flush=True)
    finally:
        if server is not None:
            server.stop()
    return result


def report(args: argparse.Namespace) -> dict[str, Any]:
    """Every row's cells recomputed from WORK/answers-N.jsonl (no server, nothing labelled)."""
    work = Path(args.work)
    out = result_path(args)
    if not out.is_file():
        raise SimError(f"{out} does not exist: run the simulation first")
    result = json.loads(out.read_text())
    for row in result["rows"]:
        answers = read_jsonl(work / f"answers-{row['target']}.jsonl")
        if not answers:
            raise SimError(f"{work}/answers-{row['target']}.jsonl is missing: the row cannot be recomputed")
        row["cells"] = summarise(answers, result["settings"]["alphas"])
    write_json(out, result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="25,50,100,200", help="pair counts of the rows (cumulative)")
    parser.add_argument("--n-eval", type=int, default=57, help="held-out prompts (the recipe's split has 57)")
    parser.add_argument("--work", default="teach-sim", help="folder: server data, views.jsonl, answers, log")
    parser.add_argument("--out", help="the rows as JSON (default WORK/teach_sim.json)")
    parser.add_argument("--plot", help="a PNG of the rows (needs matplotlib)")
    parser.add_argument("--model", help="the GGUF to serve (default: the embedded default model)")
    parser.add_argument("--url", help="use this running server instead of starting one (its data, its model)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--parallel", type=int, default=4, help="the server's slots (and client threads)")
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--threads", type=int, help="the server's llama.cpp threads")
    parser.add_argument("--seed", type=int, default=0, help="the recipe's prompt split")
    parser.add_argument("--dev", type=int, default=30, help="dev prompts kept out of the train split")
    parser.add_argument("--report", action="store_true", help="recompute the rows from WORK's answers only")
    args = parser.parse_args(argv)
    try:
        if args.report:
            result = report(args)
        else:
            result = run(args, lambda line: print(line, file=sys.stderr, flush=True))
    except SimError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n" + markdown_table(result))
    if args.plot:
        plot(result, Path(args.plot))
    return 0


if __name__ == "__main__":
    # SIGTERM (kill, a CI timeout) ends the run through its `finally`, which stops the server child.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    sys.exit(main())
