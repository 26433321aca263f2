"""Training data: read JSONL, validate it, tokenise it, truncate it, and pad it into batches.

Accepted records (one JSON object per line, blank lines ignored):
- DPO: `prompt`, `chosen`, `rejected`: each a string or a list of chat messages
  (`{"role": ..., "content": "..."}`), the usual TRL / public preference-set convention.
- SFT: `prompt` + `completion` (same types), or `messages` (a conversation whose last message is the
  assistant's answer; that last message is the completion).

With a chat template, lists go through it as they are and strings become one user message (prompt)
or one assistant message (response); a response list that repeats the prompt's messages first (as in
UltraFeedback-style sets, where `chosen` is the whole conversation) has them dropped. The response
tokens are what the conversation adds after the prompt rendered with its generation prompt,
end-of-turn tokens included. Without a template, strings are used raw and the response gets the
EOS token. Only response tokens count in the losses.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clm_local.errors import ClmError

if TYPE_CHECKING:  # torch and transformers are imported where used: check_data needs neither
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

FIELDS = {"dpo": ("prompt", "chosen", "rejected"), "sft": ("prompt", "completion")}

Turn = str | list[dict]  # one prompt or response: plain text or chat messages


class BadRecord(ValueError):
    """A record that cannot be used; the caller adds the file and line to the message, and
    `hint` (what to do about it) in brackets."""

    hint = "use --skip-bad-lines to skip such lines"


class OtherObjective(BadRecord):
    """A record of the other objective's shape (SFT data under DPO, or the reverse): the hint is
    the --objective that fits it, not skipping it."""

    def __init__(self, message: str, objective: str) -> None:
        super().__init__(message)
        self.hint = f"train on such data with --objective {objective}"


@dataclass(frozen=True)
class Example:
    """One tokenised example: the prompt and its responses (SFT: the completion; DPO: chosen, rejected)."""

    prompt: list[int]
    responses: tuple[list[int], ...]


@dataclass(frozen=True)
class Dataset:
    """A loaded data file, with what was cut or skipped on the way (reported and kept in the manifest)."""

    path: Path
    examples: list[Example]
    truncated: int
    skipped_lines: int


@dataclass(frozen=True)
class Batch:
    """Padded sequences, response-major: for DPO the chosen sequences first, then the rejected ones."""

    input_ids: torch.Tensor  # (sequences, length)
    attention_mask: torch.Tensor  # 1 on real tokens
    loss_mask: torch.Tensor  # True on response tokens (the ones the losses count)
    responses_per_example: int


def _check_turn(value: object, field: str) -> Turn:
    if isinstance(value, str):
        return value
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value
        )
    ):
        return value
    raise BadRecord(f"field '{field}' must be a string or a non-empty list of {{role, content}} messages")


def record_turns(record: object, objective: str) -> tuple[Turn, list[Turn]]:
    """(prompt, responses) of one JSON record, validated for `objective` ("dpo" or "sft")."""
    if not isinstance(record, dict):
        raise BadRecord("expected a JSON object")
    if objective == "sft" and "messages" in record and "completion" not in record:
        messages = _check_turn(record["messages"], "messages")
        if isinstance(messages, str) or len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise BadRecord("'messages' must hold a prompt and end with an assistant message")
        return messages[:-1], [messages[-1:]]
    missing = [field for field in FIELDS[objective] if field not in record]
    if missing:
        text = f"missing field{'s' if len(missing) > 1 else ''} {', '.join(repr(f) for f in missing)}"
        if objective == "dpo" and ("completion" in record or "messages" in record):
            raise OtherObjective(f"{text}: this is SFT data (prompt + completion, or messages)", "sft")
        if objective == "sft" and "chosen" in record and "rejected" in record:
            raise OtherObjective(f"{text}: this is DPO data (prompt, chosen, rejected)", "dpo")
        raise BadRecord(text)
    prompt, *responses = (_check_turn(record[field], field) for field in FIELDS[objective])
    return prompt, responses


def _as_messages(turn: Turn, role: str) -> list[dict]:
    return [{"role": role, "content": turn}] if isinstance(turn, str) else turn


def render(tokenizer: PreTrainedTokenizerBase, prompt: Turn, response: Turn) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the response that follows it."""
    if tokenizer.chat_template:
        prompt_messages = _as_messages(prompt, "user")
        response_messages = _as_messages(response, "assistant")
        if response_messages[: len(prompt_messages)] == prompt_messages:
            response_messages = response_messages[len(prompt_messages) :]
        if not response_messages:
            raise BadRecord("the response holds no messages beyond the prompt")
        from jinja2 import TemplateError

        try:
            prompt_text = tokenizer.apply_chat_template(
                prompt_messages, tokenize=False, add_generation_prompt=True
            )
            full_text = tokenizer.apply_chat_template(prompt_messages + response_messages, tokenize=False)
        except (TemplateError, ValueError, TypeError) as error:
            raise BadRecord(f"the chat template rejected it ({error})") from None
        if not full_text.startswith(prompt_text):
            raise BadRecord("the chat template does not render the prompt as the start of the conversation")
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False).input_ids
        response_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False).input_ids
    else:
        if not (isinstance(prompt, str) and isinstance(response, str)):
            raise BadRecord("chat messages need a tokenizer with a chat template, and this one has none")
        prompt_ids = tokenizer(prompt).input_ids
        response_ids = tokenizer(response, add_special_tokens=False).input_ids
        if tokenizer.eos_token_id is not None:  # so the model learns where an answer ends
            response_ids.append(tokenizer.eos_token_id)
    if not prompt_ids or not response_ids:
        raise BadRecord("empty prompt or response")
    return prompt_ids, response_ids


def truncate(example: Example, max_length: int, max_prompt_length: int) -> tuple[Example, bool]:
    """TRL's DPO rule (`truncation_mode="keep_end"`): when prompt + longest response exceed
    `max_length`, keep the prompt's last `max_prompt_length` tokens (its end is what the responses
    answer); if that is still too long, keep each response's first `max_length - max_prompt_length`."""
    longest = max(map(len, example.responses))
    if len(example.prompt) + longest <= max_length:
        return example, False
    prompt = example.prompt[-max_prompt_length:]
    responses = example.responses
    if len(prompt) + longest > max_length:
        responses = tuple(response[: max_length - max_prompt_length] for response in responses)
    return Example(prompt, responses), True


def read_jsonl(
    path: Path, skip_bad_lines: bool, *, report: bool = True
) -> tuple[list[tuple[int, object]], int]:
    """(line number, parsed JSON) for each non-blank line, and how many bad lines were skipped
    (each one logged if `report`)."""
    if not path.is_file():
        raise ClmError(f"data file {path} does not exist")
    records, skipped = [], 0
    try:
        handle = path.open("rb")
    except OSError as error:
        raise ClmError(f"cannot read data file {path}: {error.strerror or error}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                reason = f"not UTF-8 text (byte {raw[error.start]:#04x} at column {error.start + 1})"
                skipped += _bad_line(path, number, reason, skip_bad_lines, report)
                continue
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                skipped += _bad_line(path, number, f"not valid JSON ({error.msg})", skip_bad_lines, report)
    return records, skipped


def check_data(path: str | Path, objective: str, skip_bad_lines: bool = False) -> int:
    """Read and validate a JSONL file for `objective` without a tokenizer, in a fraction of a
    second: the number of usable records, or ClmError for the first bad line (as load_dataset)."""
    path = Path(path)
    records, _ = read_jsonl(path, skip_bad_lines, report=False)  # load_dataset reports skipped lines
    usable = 0
    for number, record in records:
        try:
            record_turns(record, objective)
            usable += 1
        except BadRecord as error:
            _bad_line(path, number, str(error), skip_bad_lines, report=False, hint=error.hint)
    if not usable:
        raise ClmError(f"{path} holds no usable examples")
    return usable


def _bad_line(
    path: Path, number: int, reason: str, skip: bool, report: bool = True, hint: str = BadRecord.hint
) -> int:
    """Stop on a bad line (saying what to do about it), or (with --skip-bad-lines) warn and count it."""
    if not skip:
        raise ClmError(f"{path}:{number}: {reason} ({hint})")
    if report:
        log.warning("skipping %s:%d: %s", path, number, reason)
    return 1


def load_dataset(
    path: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    objective: str,
    max_length: int,
    skip_bad_lines: bool = False,
    max_prompt_length: int | None = None,
) -> Dataset:
    """Read, validate, tokenise and truncate a JSONL file for `objective` (`max_prompt_length`
    defaults to half of `max_length`, TRL's 512 of 1024)."""
    path = Path(path)
    records, skipped = read_jsonl(path, skip_bad_lines)
    examples, truncated = [], 0
    for number, record in records:
        try:
            prompt, responses = record_turns(record, objective)
            rendered = [render(tokenizer, prompt, response) for response in responses]
        except BadRecord as error:
            skipped += _bad_line(path, number, str(error), skip_bad_lines, hint=error.hint)
            continue
        example, was_cut = truncate(
            Example(rendered[0][0], tuple(r for _, r in rendered)),
            max_length,
            max_prompt_length or max_length // 2,
        )
        examples.append(example)
        truncated += was_cut
    if not examples:
        raise ClmError(f"{path} holds no usable examples")
    if truncated:
        log.warning(
            "%s: %d of %d examples were longer than --max-length %d and were cut (see --max-prompt-length)",
            path,
            truncated,
            len(examples),
            max_length,
        )
    return Dataset(path, examples, truncated, skipped)


def collate(examples: list[Example], pad_id: int, device: torch.device) -> Batch:
    """Right-padded prompt+response sequences for a list of examples."""
    import torch

    count = len(examples[0].responses)
    sequences = [(example.prompt, example.responses[k]) for k in range(count) for example in examples]
    length = max(len(prompt) + len(response) for prompt, response in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    loss_mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, (prompt, response) in enumerate(sequences):
        end = len(prompt) + len(response)
        input_ids[row, :end] = torch.tensor(prompt + response)
        attention_mask[row, :end] = 1
        loss_mask[row, len(prompt) : end] = True
    return Batch(input_ids.to(device), attention_mask.to(device), loss_mask.to(device), count)
