"""Hostile clients against a real `clm-local serve` (issue 22): seeded, bounded, one server per run.

`python tests/fuzz_server.py --cases N --seed S` starts one server (SERVER_ARGS, one thread) and
sends N cases; case i draws everything from `random.Random(f"{seed}-{i}")`, so
`--case i` replays it alone against a fresh server. The first cases are one of each kind, then
kinds are drawn by KINDS' weights:

  body_chat, body_completion  a valid body, then 1-4 mutations: wrong types for every field, raw
                              JSON numbers (1e999, 400-digit integers, NaN), lone surrogates as
                              \\ud800 escapes, invalid UTF-8, deep nesting, oversized fields, extra
                              fields, alpha/control/mode oddities, stream and stream_options; and
                              sometimes a byte-level edit of the serialized body
  raw_json                    bodies that are no JSON object: arrays, truncated text, BOM, UTF-16,
                              nesting to 100,000, random bytes, bodies over MAX_BODY_BYTES (declared
                              or chunked)
  headers                     odd Content-Type, Host (a non-loopback Host must be 403),
                              Authorization, huge header values, Expect: 100-continue, chunked
                              bodies, pipelined requests, HTTP/1.0, malformed header bytes
  method_path                 other methods on every route, unknown paths, /static/.. traversal
                              (a 200 must be a file of the web folder)
  disconnect_prompt           half a body, then the socket is closed (or reset)
  disconnect_stream           a stream read for a few events, then closed
  disconnect_wait             a non-streamed answer whose client leaves while it is generated
  burst                       6-20 concurrent valid requests: each a 200, or a 503 with Retry-After
  stream_unread *             a stream that is opened and never read, held 1-10 s
  stream_stalled *            a long stream into a tiny receive buffer, unread for SEND_SECONDS + 10 s:
                              the server must drop it (or have sent it all); reading it then ends
  slow_body *                 a body a byte a second, a partial body then silence, a Content-Length
                              beyond the body: a 408 or a closed connection within BODY_SECONDS + 15 s
  slow_headers *              headers a byte a second, or a connection that sends nothing: the same
  (* run in background threads, at most BACKGROUND at once)

Every response must be well-formed HTTP/1.x with a 2xx/4xx/5xx status; every error of a well-formed
request the OpenAI shape {"error": {"message", "type", "param", "code"}}; a 200 of the API a
complete answer or valid server-sent events ending in `data: [DONE]`; no 500 (an internal error is
a bug) and no response slower than HANG_SECONDS. Every BATCH cases the known greedy request and
/health are checked, and with no background client left, that no slot is held. The known answer
must be the same text when the server is idle as it checks (nothing held: its cells start at 0,
as in the first run); beside a background client it must be a complete answer, because llama.cpp's
attention rounds by cell order and step size, so a near tie may flip (docs/serving.md). At the end: the
process is alive, its RSS is below RSS_BOUND x its RSS after the first known answer, /metrics
shows no busy slot, waiting request or reserved KV cache, and stderr holds no traceback.
Exit status 1 on any failure. `make fuzz-server` is the long run, tests/test_fuzz_server.py the
short one in CI.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import random
import re
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from server_process import ServerProcess

from clm_local.server.app import BODY_SECONDS, MAX_BODY_BYTES, MAX_JSON_DEPTH, SEND_SECONDS, WEB_DIR

CTX = 1024  # a stalled stream must outgrow the socket and asyncio buffers (~300 bytes a token)
SERVER_ARGS = ("--ctx", str(CTX), "--parallel", "2", "--queue", "2")
HANG_SECONDS = 60.0  # no response to a request within this long: a hang
SLOW_GRACE = 15.0  # a slow client must be answered 408 or dropped within BODY_SECONDS + this
BACKGROUND = 4  # slow clients at once (uvicorn serves 4 x (parallel + queue) = 16 connections)
BATCH = 50
RSS_BOUND = 1.5
IDLE_SECONDS = 10.0  # once every client is done, /metrics must show nothing held within this long
QUESTION = {
    "messages": [{"role": "user", "content": "What do bees make?"}],
    "temperature": 0,
    "max_tokens": 8,
}
FAILURES = ("death", "hang", "leak", "malformed", "bug", "wrong")


# --- a raw HTTP/1.1 client ---------------------------------------------------------------------


class Closed(Exception):
    """The connection ended (EOF or reset) before a whole response."""


class Hang(Exception):
    """Nothing more arrived before the deadline."""


class Malformed(Exception):
    """Bytes that are no HTTP response."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


class Reader:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline, self.buffer = sock, deadline, bytearray()

    def fill(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Hang
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise Hang from None
        except OSError as error:  # ECONNRESET
            raise Closed(f"reset ({error})") from None
        if not data:
            raise Closed("EOF")
        self.buffer += data

    def line(self, limit: int = 1 << 16) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > limit:
                raise Malformed(f"a line longer than {limit} bytes")
            self.fill()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.fill()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def rest(self) -> bytes:
        with contextlib.suppress(Closed):
            while True:
                self.fill()
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: [\x20-\x7e\x80-\xff]*)?")
HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*")


def read_head(reader: Reader) -> tuple[int, dict[str, str]]:
    """Status and headers of the next final response (1xx interim responses are skipped)."""
    while True:
        match = STATUS_LINE.fullmatch(reader.line())
        if not match:
            raise Malformed("bad status line")
        status, headers = int(match[1]), {}
        while line := reader.line():
            header = HEADER_LINE.fullmatch(line)
            if not header:
                raise Malformed(f"bad header line {line[:80]!r}")
            headers[header[1].decode().lower()] = header[2].decode("latin-1")
        if status >= 200 or status == 101:
            return status, headers


def iter_body(reader: Reader, status: int, headers: dict[str, str], head: bool) -> Iterator[bytes]:
    """The body's pieces as they arrive, de-chunked."""
    if head or status in (204, 304):
        return
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = reader.line().split(b";")[0].strip()
            if not re.fullmatch(rb"[0-9a-fA-F]{1,8}", size_line):
                raise Malformed(f"bad chunk size {size_line[:20]!r}")
            size = int(size_line, 16)
            if size == 0:
                while reader.line():  # trailers
                    pass
                return
            yield reader.exactly(size)
            if reader.exactly(2) != b"\r\n":
                raise Malformed("a chunk not followed by CRLF")
    elif "content-length" in headers:
        if not headers["content-length"].isdigit():
            raise Malformed("bad Content-Length")
        yield reader.exactly(int(headers["content-length"]))
    else:
        yield reader.rest()


def read_response(reader: Reader, head: bool = False) -> Response:
    status, headers = read_head(reader)
    return Response(status, headers, b"".join(iter_body(reader, status, headers, head)))


def request(method: str, target: str, headers: list[tuple[str, bytes]], body: bytes = b"",
            version: str = "HTTP/1.1") -> bytes:  # fmt: skip
    lines = [f"{method} {target} {version}".encode("latin-1")]
    lines += [name.encode("latin-1") + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class Client:
    """Raw connections to the server."""

    def __init__(self, url: str) -> None:
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.address, self.host = (host.strip("[]"), int(port)), f"{host}:{port}".encode()

    def connect(self, receive_buffer: int | None = None) -> socket.socket:
        """A connection; with receive_buffer, a small receive buffer and segment size, so that the
        server's kernel buffers (sized from loopback's 64 KiB segments) stay small as well."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        sock.settimeout(10)
        sock.connect(self.address)
        return sock

    def headers(
        self, body: bytes | None, content_type: bytes = b"application/json"
    ) -> list[tuple[str, bytes]]:
        headers = [("Host", self.host)]
        if body is not None:
            headers += [("Content-Type", content_type), ("Content-Length", str(len(body)).encode())]
        return headers + [("Connection", b"close")]

    def exchange(self, data: bytes, *, head: bool = False, responses: int = 1) -> list[Response] | str:
        """Send `data`, read `responses` responses: the responses, or "closed"/"hang"/"malformed: ..."
        for what came instead."""
        deadline = time.monotonic() + HANG_SECONDS
        with self.connect() as sock:
            sock.settimeout(HANG_SECONDS)
            with contextlib.suppress(OSError):  # the server may answer (413) and close before the end
                sock.sendall(data)
            reader, got = Reader(sock, deadline), []
            try:
                for _ in range(responses):
                    got.append(read_response(reader, head))
            except Closed:
                return got or "closed"
            except Hang:
                return "hang"
            except Malformed as error:
                return f"malformed: {error}"
            return got


# --- hostile values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text written as is; `valid`: whether Python's json (as the server calls it) reads it."""

    text: bytes
    valid: bool


def dumps(value: Any) -> bytes:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return b"{" + b",".join(dumps(str(k)) + b":" + dumps(v) for k, v in value.items()) + b"}"
    if isinstance(value, list | tuple):
        return b"[" + b",".join(dumps(v) for v in value) + b"]"
    return json.dumps(value).encode()  # ensure_ascii: a lone surrogate becomes a \ud800 escape


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for child in value.values():
            yield from walk(child)
    elif isinstance(value, list | tuple):
        for child in value:
            yield from walk(child)


def depth(value: Any) -> int:
    if isinstance(value, dict | list | tuple):
        children = value.values() if isinstance(value, dict) else value
        return 1 + max((depth(c) for c in children), default=0)
    return 0


def nested(rng: random.Random, levels: int) -> Any:
    value: Any = rng.choice([1, "x", None, [], {}])
    for _ in range(levels - 1):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


RAW_NUMBERS = [
    Raw(b"1e999", True), Raw(b"-1e999", True), Raw(b"99999999999999999999", True), Raw(b"1E400", True),
    Raw(b"-0", True), Raw(b"0.1e-999", True), Raw(b"1" + b"0" * 400 + b".0", True), Raw(b"4.9e-324", True),
    Raw(b"3.4028236e38", True), Raw(b"-3.5e38", True), Raw(b"9" * 400, True), Raw(b"-" + b"9" * 310, True),
    Raw(b"9" * 5000, False), Raw(b"NaN", False), Raw(b"Infinity", False), Raw(b"-Infinity", False),
    Raw(b"0x10", False), Raw(b"01", False), Raw(b"1.", False), Raw(b".5", False), Raw(b"+1", False),
]  # fmt: skip
RAW_STRINGS = [
    Raw(b'"\xff\xfe"', False), Raw(b'"\xc0\xaf"', False), Raw(b'"a\x80b"', False),
    Raw(b'"\xed\xa0\x80"', True),  # UTF-8 of a surrogate: json reads bytes with "surrogatepass"
    Raw(b'"\\ud800"', True), Raw(b'"\\udfff\\ud800"', True), Raw(b'"\\u0000"', True), Raw(b'"\\x41"', False),
    Raw(b'"tab\there"', False), Raw(b"'single'", False),
]  # fmt: skip
SCALARS = [None, True, False, 0, 1, -1, 2, 0.5, -0.0, 1.5, 2**31 - 1, 2**31, 2**53 + 1, 2**63, -(2**63),
           10**30, 1e308, 5e-324, 3.5e38, "", "x", "0.5", "true", "\ud800", "a\udfffb", "\x00", "é✓🐝",
           "<|im_start|>system\n", "logits", "embed"]  # fmt: skip


def long_text(rng: random.Random, low: int, high: int) -> str:
    unit = rng.choice(["a", "bee ", "é", "🐝", "<|im_end|>", "\n", "\\", "\u200b"])
    return unit * (rng.randint(low, high) // len(unit) + 1)


def hostile(rng: random.Random, level: int = 0) -> Any:
    roll = rng.random()
    if roll < 0.35:
        return rng.choice(SCALARS)
    if roll < 0.55:
        return rng.choice(RAW_NUMBERS)
    if roll < 0.65:
        return rng.choice(RAW_STRINGS)
    if roll < 0.72:
        return long_text(rng, 100, rng.choice([2000, 100_000]))
    if roll < 0.80:
        return nested(
            rng, rng.choice([2, 8, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 60, 500])
        )
    if roll < 0.88 and level < 3:
        return [hostile(rng, level + 1) for _ in range(rng.randint(0, 4))]
    if roll < 0.94 and level < 3:
        return {rng.choice(["a", "text", "type", "role", "\ud800", ""]): hostile(rng, level + 1)}
    return [rng.randint(-5, 5)] * rng.choice([100, 10_000, 200_000])


def message(rng: random.Random) -> Any:
    roll = rng.random()
    role = rng.choice(["user", "system", "assistant", "developer"])
    if roll < 0.4:
        return {"role": role, "content": rng.choice(["hi", "What do bees make?", "é✓", "", " "])}
    if roll < 0.55:
        parts = [{"type": "text", "text": rng.choice(["a", "b c", ""])} for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.4:
            parts.append(rng.choice([{"type": "image_url", "image_url": {"url": "x"}}, {"type": "text"},
                                     {"type": "text", "text": hostile(rng)}, "text", None]))  # fmt: skip
        return {"role": role, "content": parts}
    if roll < 0.7:
        return {
            "role": rng.choice(["tool", "function", "", None, 5, "\ud800", "USER", role]),
            "content": "hi",
        }
    if roll < 0.85:
        return {"role": role, "content": hostile(rng)}
    if roll < 0.92:
        return {"role": role}
    return hostile(rng)


FIELD_VALUES: dict[str, Callable[[random.Random], Any]] = {
    "messages": lambda r: r.choice(
        [
            [],
            None,
            "hi",
            {"role": "user", "content": "hi"},
            [message(r) for _ in range(r.randint(1, 4))],
            [{"role": "user", "content": "hi"}] * r.choice([100, 2000, 30_000]),
            [{"role": "user", "content": long_text(r, 500, 300_000)}],
        ]
    ),
    "prompt": lambda r: r.choice(
        [
            "",
            " ",
            "hi",
            "\ud800 hi",
            ["hi"],
            ["a", "b"],
            [],
            [1, 2, 3],
            [[1, 2]],
            [None],
            long_text(r, 500, 400_000),
            "<|im_start|>user\nhi<|im_end|>",
            "\x00\x01",
            Raw(b'"\xed\xa0\x80"', True),
            Raw(b'"\\udc00"', True),
        ]
    ),
    "max_tokens": lambda r: r.choice(
        [0, -1, 1, 2, 3, 4, CTX + 1, 10**30, "4", 4.0, True, [4], Raw(b"1e999", True), Raw(b"9" * 400, True)]
    ),
    "max_completion_tokens": lambda r: r.choice([1, 2, 0, -5, "2", 2.5, 10**20]),
    "stop": lambda r: r.choice(
        [
            "",
            "\n",
            ".",
            ["a", "b", "c", "d"],
            ["a", "b", "c", "d", "e"],
            [""],
            "x" * 512,
            "x" * 513,
            ["x" * r.choice([511, 512, 513, 200_000])],
            [1],
            [None],
            ["\ud800"],
            "\udc00",
            [],
            {"a": 1},
        ]
    ),
    "stream": lambda r: r.choice([True, False, "true", 1, 0, None, [], "\ud800"]),
    "stream_options": lambda r: r.choice(
        [
            {"include_usage": True},
            {"include_usage": False},
            {"include_usage": "yes"},
            {"include_usage": 1},
            None,
            [],
            "x",
            {},
            {"include_usage": None},
        ]
    ),
    "alpha": lambda r: r.choice(
        [
            0,
            1,
            0.5,
            0.25,
            -1,
            2,
            100,
            -100,
            1e38,
            3.4028235e38,
            3.5e38,
            -3.5e38,
            5e-324,
            1e-45,
            -0.0,
            "0.5",
            None,
            True,
            [0.5],
            Raw(b"1e999", True),
            Raw(b"9" * 400, True),
            Raw(b"NaN", False),
        ]
    ),
    "mode": lambda r: r.choice(["logits", "embed", "LOGITS", "", None, "\ud800", "x" * 5000, 1, ["embed"]]),
    "temperature": lambda r: r.choice(
        [0, 0.0, 0.7, 2, 2.0001, -0.1, -0.0, 1e-30, Raw(b"1e999", True), Raw(b"9" * 400, True)]
    ),
    "top_p": lambda r: r.choice([0, 1, 0.5, 1.01, -0.5, 1e-300]),
    "top_k": lambda r: r.choice([0, 1, 40, -1, 2**31 - 1, 2**31, 10**20]),
    "min_p": lambda r: r.choice([0, 1, 0.05, 1.5, -0.1]),
    "repeat_penalty": lambda r: r.choice([0, 1, 1.1, -1, 1e308, 1e-300]),
    "seed": lambda r: r.choice([0, 1, -1, 2**32 - 1, 2**32, 2**64, 4294967295]),
    "n": lambda r: r.choice([1, 2, 0, -1, None, "1", 1.0]),
}
EXTRA_FIELDS = ["model", "user", "logit_bias", "logprobs", "top_logprobs", "presence_penalty",
                "frequency_penalty", "response_format", "tools", "tool_choice", "suffix", "echo", "best_of",
                "functions", "__proto__",
                "", "\ud800", "a" * 1000, "control", "metadata", "store", "parallel_tool_calls"]  # fmt: skip


def base_body(rng: random.Random, chat: bool, stream: bool | None = None, max_tokens: int = 0) -> dict:
    body: dict[str, Any] = {"max_tokens": max_tokens or rng.randint(1, 4)}
    if chat:
        body["messages"] = [
            {"role": "user", "content": rng.choice(["What do bees make?", "hi", "Count: 1, 2,"])}
        ]
    else:
        body["prompt"] = rng.choice(["The bees", "1, 2, 3,", "Once upon a time"])
    for name in ("temperature", "alpha", "mode", "top_k", "seed", "stop"):
        if rng.random() < 0.15:
            body[name] = {"temperature": 0, "alpha": rng.choice([0, 0.5, 1]),
                          "mode": rng.choice(["logits", "embed"]),
                          "top_k": 5, "seed": 7, "stop": "\n"}[name]  # fmt: skip
    body["stream"] = rng.random() < 0.3 if stream is None else stream
    if body["stream"] and rng.random() < 0.3:
        body["stream_options"] = {"include_usage": True}
    return body


def mutate(rng: random.Random, body: dict, chat: bool) -> list[str]:
    """1-4 mutations of `body` in place; what was done."""
    done = []
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.55:
            name = rng.choice([*FIELD_VALUES, *FIELD_VALUES, "messages" if chat else "prompt"])
            body[name] = FIELD_VALUES[name](rng) if rng.random() < 0.75 else hostile(rng)
            done.append(f"set {name}")
        elif roll < 0.65:
            name = rng.choice([n for n in body if n != "max_tokens"] or ["x"])
            body.pop(name, None)
            done.append(f"drop {name}")
        elif roll < 0.8:
            name = rng.choice(EXTRA_FIELDS)
            body[name] = hostile(rng)
            done.append("extra field")
        elif roll < 0.9:
            value = rng.choice([0.5, 0.25, 1, 0])
            body["alpha"], body["control"] = value, rng.choice([value, value, 1 - value, str(value), None])
            done.append("alpha and control")
        else:
            name = "prompt" if not chat else "messages"
            body["prompt" if chat else "messages"] = FIELD_VALUES[name](rng)  # the other endpoint's field
            done.append("other endpoint's field")
    if body.get("max_completion_tokens", 1) is None:  # it would hide max_tokens: a whole-context answer
        body["max_completion_tokens"] = 1
    return done


def byte_edit(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    roll = rng.random()
    if roll < 0.2:
        return data[: rng.randrange(max(len(data), 1))], "truncated"
    if roll < 0.35:
        at = rng.randrange(len(data))
        return data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :], "byte flipped"
    if roll < 0.5:
        at = rng.randrange(len(data))
        return data[:at] + rng.randbytes(rng.randint(1, 8)) + data[at:], "random bytes inserted"
    if roll < 0.6:
        return b"\xef\xbb\xbf" + data, "BOM"
    if roll < 0.7:
        return data + rng.choice([b"x", b"}", b" {}", b"\x00", b"\n\n"]), "trailing bytes"
    if roll < 0.8:
        return data.replace(b"{", b'{"max_tokens": 2, "stream": 7,', 1), "duplicate keys"
    if roll < 0.9:
        return data.decode("latin-1").encode("utf-16"), "UTF-16"
    return data.replace(b'"', b"'"), "single quotes"


# --- checks --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    status: str  # "200", "closed", "hang", ...
    problems: list[tuple[str, str]] = field(default_factory=list)  # (category, what)


def error_shape(response: Response) -> str | None:
    """None if the body is OpenAI's error object, else what is wrong."""
    try:
        body = json.loads(response.body)
    except ValueError:
        return f"error body is not JSON: {response.body[:120]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return f"error body is not OpenAI's shape: {response.body[:200]!r}"
    if not isinstance(error["message"], str) or not isinstance(error["type"], str):
        return f"error message/type not strings: {response.body[:200]!r}"
    return None


def check_sse(body: bytes, chat: bool, partial: bool = False) -> str | None:
    """None if `body` is valid server-sent events of an answer ending in [DONE]."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "SSE body is not UTF-8"
    events = text.split("\n\n")
    if not partial:
        if events[-1] != "":
            return f"SSE does not end with a blank line: {text[-80:]!r}"
        events = events[:-1]
        if not events or events[-1] != "data: [DONE]":
            return f"SSE does not end with data: [DONE]: {text[-120:]!r}"
        events = events[:-1]
    else:
        events = events[:-1]  # the last: empty, or cut
    for event in events:
        if not event.startswith("data: ") or "\n" in event:
            return f"bad SSE event {event[:120]!r}"
        if event == "data: [DONE]":
            return "data: [DONE] before the end"
        try:
            chunk = json.loads(event[6:])
        except ValueError:
            return f"SSE event is not JSON: {event[:120]!r}"
        if "error" in chunk:
            if set(chunk) != {"error"} or set(chunk["error"]) != {"message", "type", "param", "code"}:
                return f"SSE error chunk not in OpenAI's shape: {event[:200]!r}"
            if "internal error" in chunk["error"]["message"]:
                return f"BUG {chunk['error']['message']}"
            continue
        if chunk.get("object") != ("chat.completion.chunk" if chat else "text_completion") or not isinstance(
            chunk.get("choices"), list
        ):
            return f"SSE chunk of the wrong shape: {event[:200]!r}"
    return None


def check_answer(response: Response, chat: bool) -> str | None:
    try:
        body = json.loads(response.body)
        choice = body["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        ok = (
            body["object"] == ("chat.completion" if chat else "text_completion")
            and isinstance(text, str)
            and choice["finish_reason"] in ("stop", "length")
            and isinstance(body["usage"]["total_tokens"], int)
        )
    except (ValueError, KeyError, IndexError, TypeError):
        ok = False
    return None if ok else f"200 that is no answer: {response.body[:200]!r}"


def slash_redirect(response: Response, target: str | None) -> bool:
    """Whether `response` is Starlette's redirect of `target` to itself with a slash added or
    removed, on the same host."""
    if target is None or response.status not in (307, 308):
        return False
    location = urllib.parse.urlsplit(response.header("location", ""))
    path = urllib.parse.urlsplit(target).path
    return location.netloc.startswith(("127.0.0.1:", "localhost:", "[::1]:")) and location.path in (
        path.rstrip("/"),
        path + "/",
    )


def judge(kind: str, got: list[Response] | str, *, api: bool | None = None, chat: bool = True,
          well_formed: bool = True, head: bool = False, refuse: bool = False,
          expect: tuple[int, ...] | None = None, stream: bool | None = None,
          target: str | None = None) -> Outcome:  # fmt: skip
    """The outcome of one exchange. api: the target is an API route (its 200 is an answer);
    well_formed: the request is valid HTTP (so its errors must be in OpenAI's shape, and it must be
    answered); refuse: the body is invalid, a 200 is wrong; expect: the only statuses allowed."""
    if isinstance(got, str):
        outcome = Outcome(kind, got.split(":")[0])
        if got == "hang":
            outcome.problems.append(("hang", f"no response within {HANG_SECONDS:.0f} s"))
        elif got.startswith("malformed"):
            outcome.problems.append(("malformed", got))
        elif well_formed:
            outcome.problems.append(
                ("malformed", "a well-formed request got no response (connection closed)")
            )
        return outcome
    outcome = Outcome(kind, "+".join(str(r.status) for r in got))
    for response in got:
        status, problems = response.status, outcome.problems
        if slash_redirect(response, target):
            continue  # Starlette's redirect of /v1/completions/ to /v1/completions (same host)
        if not (200 <= status < 300 or 400 <= status < 600):
            problems.append(("malformed", f"status {status} (Location {response.header('location')!r})"))
        if expect is not None and status not in expect:
            problems.append(("wrong", f"status {status}, expected {expect}: {response.body[:200]!r}"))
        if status >= 400 and well_formed and not head and (shape := error_shape(response)):
            problems.append(("malformed", f"{status}: {shape}"))
        if status == 500 or (status >= 500 and status != 503):
            problems.append(("bug", f"{status}: {response.body[:300]!r}"))
        if status == 503 and api and not response.header("retry-after"):
            problems.append(("wrong", f"503 without Retry-After: {response.body[:120]!r}"))
        if status == 200 and api:
            if refuse:
                problems.append(("wrong", f"an invalid body was answered 200: {response.body[:120]!r}"))
            media = (response.header("content-type") or "").split(";")[0]
            if stream is not None and (media == "text/event-stream") != stream:
                problems.append(("wrong", f"stream={stream} answered as {media}"))
            if media == "text/event-stream":
                bad = check_sse(response.body, chat)
            elif media == "application/json":
                bad = check_answer(response, chat)
            else:
                bad = f"200 of type {media!r}"
            if bad:
                problems.append(("bug" if bad.startswith("BUG") else "malformed", bad))
    return outcome


# --- the cases -----------------------------------------------------------------------------------


@dataclass
class Case:
    index: int
    kind: str
    rng: random.Random
    what: str = ""  # how to reproduce, in words (set by the case as it runs)


def body_case(case: Case, client: Client, chat: bool) -> list[Outcome]:
    rng = case.rng
    body = base_body(rng, chat)
    done = mutate(rng, body, chat)
    data = dumps(body)
    invalid = depth(body) > MAX_JSON_DEPTH or any(isinstance(v, Raw) and not v.valid for v in walk(body))
    stream = body.get("stream") is True
    if rng.random() < 0.15:  # then whether it is valid is not known
        data, edit = byte_edit(rng, data)
        done.append(edit)
        stream, invalid = None, False
    path = "/v1/chat/completions" if chat else "/v1/completions"
    case.what = f"POST {path} ({', '.join(done)}) body {data[:300]!r}{'...' if len(data) > 300 else ''}"
    got = client.exchange(request("POST", path, client.headers(data), data))
    too_big = len(data) > MAX_BODY_BYTES
    if too_big and got == "closed":
        return [Outcome(case.kind, "closed")]  # answered 413 and closed while the body was sent
    return [judge(case.kind, got, api=True, chat=chat, refuse=invalid or too_big, stream=stream)]


def raw_json_case(case: Case, client: Client) -> list[Outcome]:
    rng = case.rng
    chat = rng.random() < 0.5
    path = "/v1/chat/completions" if chat else "/v1/completions"
    valid = dumps(base_body(rng, chat, stream=False))
    options: list[tuple[str, bytes, bool]] = [  # (what, body, may be a 200)
        ("array", b"[" + valid + b"]", False), ("string", b'"hi"', False), ("number", b"1", False),
        ("null", b"null", False), ("empty", b"", False), ("spaces", b"   \n", False),
        ("truncated", valid[: rng.randrange(len(valid))], False),
        ("nesting", b"[" * (n := rng.choice([33, 1000, 100_000])) + b"]" * n, False),
        ("object nesting", b'{"a":' * (n := rng.choice([32, 33, 5000])) + b"1" + b"}" * n, False),
        ("random bytes", rng.randbytes(rng.randint(1, 2000)), False),
        ("BOM", b"\xef\xbb\xbf" + valid, True), ("UTF-16", valid.decode().encode("utf-16"), True),
        ("UTF-32", valid.decode().encode("utf-32"), True), ("NUL", valid + b"\x00", False),
        ("at the limit", valid[:-1] + b',"pad":"' + b"x" * (MAX_BODY_BYTES - len(valid) - 8) + b'"}', True),
        ("over the limit", valid[:-1] + b',"pad":"' + b"x" * MAX_BODY_BYTES + b'"}', False),
    ]  # fmt: skip
    what, data, may_pass = rng.choice(options)
    if len(data) > MAX_BODY_BYTES and rng.random() < 0.5:  # no Content-Length: refused as it arrives
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(c), c) for c in (data[i : i + 65536] for i in range(0, len(data), 65536))
        )
        headers = [("Host", client.host), ("Content-Type", b"application/json"),
                   ("Transfer-Encoding", b"chunked"), ("Connection", b"close")]  # fmt: skip
        raw, what = request("POST", path, headers, chunks + b"0\r\n\r\n"), what + ", chunked"
    else:
        raw = request("POST", path, client.headers(data), data)
    case.what = f"POST {path} with a body that is {what}: {data[:200]!r}"
    got = client.exchange(raw)
    if len(data) > MAX_BODY_BYTES and got == "closed":
        return [Outcome(case.kind, "closed")]
    return [judge(case.kind, got, api=True, chat=chat, refuse=not may_pass, stream=False)]


HOSTS = [  # (Host, served): served None: either is right
    ("localhost", True), ("LOCALHOST", True), ("{host}", True), ("localhost:{port}", True),
    ("localhost.", True),
    ("[::1]:{port}", True), ("[::1]", True), ("127.0.0.1", True), ("evil.example", False),
    ("evil.example:{port}", False), ("127.0.0.1.nip.io", False), ("localhost.evil.example", False),
    ("127.0.0.2", False), ("0.0.0.0", False), ("2130706433", False), ("0x7f000001", False), ("", False),
    ("evil.example@127.0.0.1", False), ("127.0.0.1 evil", False), ("[::1", None), ("localhost:abc", None),
    ("\u00e9vil.example", False), ("[::ffff:127.0.0.1]", False), ("x" * 8000, False),
]  # fmt: skip
CONTENT_TYPES = [  # (Content-Type or None for none, is JSON)
    (None, False), (b"", False), (b"text/plain", False), (b"application/json; charset=utf-8", True),
    (b"APPLICATION/JSON", True), (b" application/json ", True), (b"application/json;", True),
    (b"application/jsonx", False), (b"application/x-www-form-urlencoded", False),
    (b"multipart/form-data; boundary=x", False), (b"application/json, text/plain", False),
    (b"text/plain; application/json", False), (b"application/\xff", False),
]  # fmt: skip


def headers_case(case: Case, client: Client) -> list[Outcome]:
    rng = case.rng
    chat = rng.random() < 0.5
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = dumps(base_body(rng, chat, stream=rng.random() < 0.2, max_tokens=1))
    headers = client.headers(body)
    served: bool | None = True  # whether the API route is reached (None: the HTTP parser decides)
    expect: tuple[int, ...] | None = None
    well_formed, responses, version = True, 1, "HTTP/1.1"
    roll = rng.random()
    if roll < 0.25:
        host, served = rng.choice(HOSTS)
        port = str(client.address[1])
        value = host.replace("{host}", client.host.decode()).replace("{port}", port).encode("utf-8")
        headers[0] = ("Host", value)
        what = f"Host {value[:60]!r}"
        if served is False:
            expect = (403,)
    elif roll < 0.45:
        content_type, served = rng.choice(CONTENT_TYPES)
        headers = [h for h in headers if h[0] != "Content-Type"]
        if content_type is not None:
            headers.insert(1, ("Content-Type", content_type))
        what = f"Content-Type {content_type!r}"
        if not served:
            expect = (415,)
    elif roll < 0.55:
        value = rng.choice([b"Bearer x", b"Basic YTpi", b"", b"Bearer " + b"k" * rng.randint(100, 12_000),
                            b"Bearer \xe9\xff", b"bearer  ", b"Token a b c"])  # fmt: skip
        headers.insert(1, ("Authorization", value))
        what = f"Authorization {value[:40]!r} ({len(value)} bytes)"
    elif roll < 0.65:
        size = rng.choice([1000, 8000, 14_000, 20_000, 70_000, 1 << 20])
        many = rng.random() < 0.3
        if many:
            headers[1:1] = [(f"X-H{i}", b"v" * 50) for i in range(size // 60)]
        else:
            headers.insert(1, ("X-Pad", b"p" * size))
        well_formed = served = None if size > 12_000 else True  # h11 takes up to 16 KiB of headers
        what = f"{'many headers' if many else 'one header'} of {size} bytes"
    elif roll < 0.72:
        headers.insert(1, ("Expect", b"100-continue"))
        what = "Expect: 100-continue"
    elif roll < 0.8:
        headers = [h for h in headers if h[0] != "Content-Length"] + [("Transfer-Encoding", b"chunked")]
        cuts = sorted(rng.sample(range(1, len(body)), min(3, len(body) - 1)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        what = f"chunked in {len(pieces)} pieces"
    elif roll < 0.86:
        headers = [h for h in headers if h[0] != "Connection"]
        second = request("GET", "/health", [("Host", client.host)])
        body, responses, what = body + second, 2, "pipelined with GET /health"
    elif roll < 0.9:
        version, what = "HTTP/1.0", "HTTP/1.0"
        headers = [h for h in headers if h[0] != "Connection"]
    else:
        bad = rng.choice([("X-Bad", b"a\x00b"), ("Bad Name", b"x"), ("X-Fold", b"a\r\n folded"), ("", b"x"),
                          ("Content-Length", b"abc"), ("Content-Length", b"-1"),
                          ("Transfer-Encoding", b"gzip"), ("Content-Length", b"5"), ("X-Ctl", b"\x7f\x01"),
                          ("Host", b"localhost")])  # fmt: skip
        headers.insert(1, bad)
        what, well_formed, served = f"header {bad!r}", None, None
    case.what = f"POST {path} with {what}; body {body[:200]!r}"
    got = client.exchange(request("POST", path, headers, body, version), responses=responses)
    # An oversize or malformed head may be answered by the HTTP parser (a plain 400) or closed.
    outcome = judge(case.kind, got[:1] if isinstance(got, list) else got, api=served is True, chat=chat,
                    well_formed=well_formed is True, expect=expect)  # fmt: skip
    if isinstance(got, list) and responses > 1:  # the pipelined GET /health
        if len(got) < responses:
            outcome.problems.append(("malformed", "no answer to the pipelined request"))
        for extra in got[1:]:
            outcome.status += f"+{extra.status}"
            outcome.problems += judge(case.kind, [extra], expect=(200,)).problems
    return [outcome]


METHODS = ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO", "post", "POST"]
PATHS = ["/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1", "/v1/",
         "/v1/chat", "/v1/completions/", "/V1/COMPLETIONS", "/v1/completions?x=1&stream=true", "/%00", "/...",
         "/" + "a" * 8000, "/v1/%ED%A0%80", "/static/app.js", "/static/", "/static", "/index.html", "*",
         "http://evil.example/v1/models", "//v1/models", "/v1/models#frag",
         "/static/style.css?v=1"]  # fmt: skip
TRAVERSALS = ["/static/../app.py", "/static/..%2fapp.py", "/static/%2e%2e/app.py", "/static/%2e%2e%2fapp.py",
              "/static/....//app.py", "/static//etc/passwd", "/static/..%5capp.py",
              "/static/%252e%252e/app.py",
              "/static/../../../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
              "/static/..\\app.py", "/static/.%2e/app.py", "/static/%c0%ae%c0%ae/app.py",
              "/static/app.js/../../app.py", "/static/\x00", "/static/%00../app.py"]  # fmt: skip
WEB_FILES = {p.read_bytes() for p in WEB_DIR.rglob("*") if p.is_file()}


def method_path_case(case: Case, client: Client) -> list[Outcome]:
    rng = case.rng
    method = rng.choice(METHODS)
    traversal = rng.random() < 0.4
    path = rng.choice(TRAVERSALS if traversal else PATHS)
    body = b'{"prompt": "hi", "max_tokens": 1}' if method.upper() == "POST" else None
    headers = client.headers(body)
    case.what = f"{method} {path[:100]!r}"
    try:
        raw = request(method, path, headers, body or b"")
    except UnicodeEncodeError:
        raw = request(method, "/", headers, body or b"")
    got = client.exchange(raw, head=method == "HEAD")
    well_formed = all("!" <= c <= "~" for c in path) and len(path) < 8000
    outcome = judge(case.kind, got, api=False, head=method == "HEAD", well_formed=well_formed, target=path)
    if not isinstance(got, str):
        for response in got:
            if response.status == 200 and path.startswith("/static") and method in ("GET", "HEAD"):
                if method == "GET" and response.body not in WEB_FILES:
                    outcome.problems.append(("wrong", f"a /static path served a file outside the web folder: "
                                                      f"{response.body[:120]!r}"))  # fmt: skip
            if method == "POST" and response.status == 200 and path.split("?")[0] in ("/v1/completions",):
                if bad := check_answer(response, False):
                    outcome.problems.append(("malformed", bad))
    return [outcome]


def valid_stream_request(client: Client, rng: random.Random, max_tokens: int, stream: bool = True,
                         long: bool = False) -> tuple[bytes, bool]:  # fmt: skip
    chat = rng.random() < 0.5
    body = base_body(rng, chat, stream=stream, max_tokens=max_tokens)
    body.pop("stop", None)
    if long:  # no early end: sample at a high temperature among many tokens
        body |= {"temperature": 1.5, "top_k": 0, "top_p": 1, "seed": 3}
    data = dumps(body)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    return request("POST", path, client.headers(data), data), chat


def disconnect_prompt_case(case: Case, client: Client) -> list[Outcome]:
    rng = case.rng
    raw, _ = valid_stream_request(client, rng, rng.randint(1, 8), stream=rng.random() < 0.5)
    head_end = raw.index(b"\r\n\r\n") + 4
    cut = rng.randint(head_end // 2, len(raw) - 1)
    reset = rng.random() < 0.5
    case.what = f"{raw[:cut][:200]!r}... then {'reset' if reset else 'close'} after {cut} of {len(raw)} bytes"
    with client.connect() as sock:
        sock.sendall(raw[:cut])
        time.sleep(rng.choice([0, 0.01, 0.3]))
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return [Outcome(case.kind, "reset" if reset else "closed")]


def disconnect_stream_case(case: Case, client: Client) -> list[Outcome]:
    rng = case.rng
    raw, chat = valid_stream_request(client, rng, rng.randint(8, 48))
    events = rng.randint(0, 5)
    case.what = f"{raw!r}, read {events} events, then close"
    with client.connect() as sock:
        sock.sendall(raw)
        reader = Reader(sock, time.monotonic() + HANG_SECONDS)
        try:
            status, headers = read_head(reader)
            if status != 200:
                body = b"".join(iter_body(reader, status, headers, False))
                return [judge(case.kind, [Response(status, headers, body)], api=True, chat=chat)]
            seen = b""
            for piece in iter_body(reader, status, headers, False):
                seen += piece
                if seen.count(b"\n\n") >= events:
                    break
            if bad := check_sse(seen, chat, partial=True):
                return [Outcome(case.kind, "200", [("malformed", bad)])]
            if rng.random() < 0.5:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except Hang:
            return [Outcome(case.kind, "hang", [("hang", "no stream within the time")])]
        except (Closed, Malformed) as error:
            return [Outcome(case.kind, "closed", [("malformed", f"stream ended early: {error}")])]
    return [Outcome(case.kind, "200")]


def disconnect_wait_case(case: Case, client: Client) -> list[Outcome]:
    rng = case.rng
    raw, _ = valid_stream_request(client, rng, rng.randint(8, 64), stream=False)
    wait = rng.choice([0, 0.05, 0.2, 0.6, 1.2])
    case.what = f"{raw!r}, close after {wait} s"
    with client.connect() as sock:
        sock.sendall(raw)
        time.sleep(wait)
    return [Outcome(case.kind, "closed")]


def burst_case(case: Case, client: Client) -> list[Outcome]:
    rng = case.rng
    size = rng.randint(6, 20)
    requests = []
    for _ in range(size):
        stream = rng.random() < 0.3
        raw, chat = valid_stream_request(client, rng, rng.randint(1, 4), stream=stream)
        requests.append((raw, chat, stream))
    case.what = f"{size} concurrent valid requests, e.g. {requests[0][0]!r}"
    results: list[Outcome | None] = [None] * size
    start = threading.Barrier(size)

    def one(i: int) -> None:
        raw, chat, stream = requests[i]
        try:
            start.wait()
            results[i] = judge(
                case.kind, client.exchange(raw), api=True, chat=chat, expect=(200, 503), stream=stream
            )
        except Exception as error:  # noqa: BLE001 - the runner's trouble, reported with its case
            results[i] = Outcome(
                case.kind, "runner error", [("malformed", f"{type(error).__name__}: {error}")]
            )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in results if r is not None]


def stream_unread_case(case: Case, client: Client) -> list[Outcome]:
    rng = case.rng
    raw, _ = valid_stream_request(client, rng, rng.randint(8, 64))
    hold = rng.uniform(1, 10)
    case.what = f"{raw!r}, unread, held {hold:.1f} s"
    with client.connect(receive_buffer=rng.choice([None, 4096])) as sock:
        sock.sendall(raw)
        time.sleep(hold)
    return [Outcome(case.kind, "held")]


def server_side_state(server_port: int, client_port: int) -> str | None:
    """The TCP state of the server's end of a loopback connection (this machine's /proc/net/tcp):
    "established" while the server holds it open, "closing" once it has closed it, None if gone."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                local, remote, state = line.split()[1:4]
                if (
                    int(local.rsplit(":", 1)[1], 16) == server_port
                    and int(remote.rsplit(":", 1)[1], 16) == client_port
                ):
                    return "established" if state == "01" else "closing"
    return None


STALL_LIMIT = (
    SEND_SECONDS + 90
)  # the write blocks within ~30 s of generation (~800 tokens), then SEND_SECONDS


def stream_stalled_case(case: Case, client: Client) -> list[Outcome]:
    """A long stream into a tiny receive buffer, never read: once the buffers are full the server's
    write blocks, and after SEND_SECONDS it must close the connection (not merely end the job)."""
    rng = case.rng
    raw, chat = valid_stream_request(client, rng, CTX - 64, long=True)
    case.what = f"{raw!r} into a 4 KiB receive buffer, unread until the server closes it"
    started = time.monotonic()
    with client.connect(receive_buffer=4096) as sock:
        sock.sendall(raw)
        port = sock.getsockname()[1]
        while (state := server_side_state(client.address[1], port)) == "established":
            if time.monotonic() - started > STALL_LIMIT:
                what = f"an unread stream was still open after {STALL_LIMIT} s (SEND_SECONDS {SEND_SECONDS})"
                return [Outcome(case.kind, "held", [("hang", what)])]
            time.sleep(1)
        took = time.monotonic() - started
        reader = Reader(sock, time.monotonic() + SLOW_GRACE)
        try:
            status, headers = read_head(reader)
            body = b""
            for piece in iter_body(reader, status, headers, False):
                body += piece
        except Hang:
            return [
                Outcome(case.kind, "hang", [("hang", f"server side {state}, yet the stream did not end")])
            ]
        except Closed:
            return [Outcome(case.kind, f"dropped after {took:.0f} s")]  # what SEND_SECONDS is for
        except Malformed as error:
            return [Outcome(case.kind, "malformed", [("malformed", str(error))])]
    if bad := check_sse(body, chat) if status == 200 else error_shape(Response(status, headers, body)):
        return [Outcome(case.kind, str(status), [("malformed", bad)])]
    return [Outcome(case.kind, f"{status}, whole after {took:.0f} s")]  # it fitted in the buffers


def slow_case(case: Case, client: Client, headers_too: bool) -> list[Outcome]:
    """A client too slow to send its request: it must be answered 408 or dropped in time."""
    rng = case.rng
    raw, chat = valid_stream_request(client, rng, 2, stream=False)
    head_end = raw.index(b"\r\n\r\n") + 4
    if headers_too:
        variant = rng.choice(["nothing", "a byte a second", "a header line a second"])
        prefix = b"" if variant == "nothing" else raw[: raw.index(b"\r\n") + 2]
        pieces: Iterator[bytes] = iter(())
        if variant == "a byte a second":
            pieces = (bytes([b]) for b in b"X-Slow: " + b"s" * 10_000)
        elif variant == "a header line a second":
            pieces = (b"X-Line-%d: x\r\n" % i for i in range(10_000))
    else:
        variant = rng.choice(
            ["a byte a second", "half, then nothing", "a Content-Length beyond the body", "chunked"]
        )
        if variant == "chunked":  # a byte a second, in a chunk that never ends
            raw = raw.replace(b"Content-Length", b"Transfer-Encoding: chunked\r\nX-Was-Length", 1)
            head_end = raw.index(b"\r\n\r\n") + 4
            raw = raw[:head_end] + b"%x\r\n" % (len(raw) - head_end + 1000) + raw[head_end:]
        prefix, pieces = raw[:head_end], (bytes([b]) for b in raw[head_end:])
        if variant == "half, then nothing":
            prefix, pieces = raw[: (head_end + len(raw)) // 2], iter(())
        elif variant == "a Content-Length beyond the body":
            prefix, pieces = re.sub(rb"Content-Length: \d+", b"Content-Length: 9999", raw), iter(())
    case.what = (
        f"slow {'headers' if headers_too else 'body'} ({variant}): {prefix[:200]!r} then a piece a second"
    )
    started = time.monotonic()
    limit = started + BODY_SECONDS + SLOW_GRACE
    with client.connect() as sock:
        sock.sendall(prefix)
        reader = Reader(sock, limit + 5)
        while True:
            now = time.monotonic()
            if now >= limit:
                what = (
                    f"a slow client ({variant}) was neither answered nor dropped in {limit - started:.0f} s"
                )
                return [Outcome(case.kind, "held", [("hang", what)])]
            with contextlib.suppress(OSError):  # the server closed its side: read what it said
                sock.sendall(next(pieces, b""))
            sock.settimeout(min(1.0, limit - now))
            try:
                data = sock.recv(65536)  # the server's answer or its close
            except TimeoutError:
                continue
            except OSError:
                return [Outcome(case.kind, f"reset after {time.monotonic() - started:.0f} s")]
            if not data:
                return [Outcome(case.kind, f"closed after {time.monotonic() - started:.0f} s")]
            reader.buffer += data
            break
        took = time.monotonic() - started
        try:
            response = read_response(reader)
        except (Hang, Closed, Malformed) as error:
            return [
                Outcome(case.kind, "malformed", [("malformed", f"a cut answer to a slow client: {error}")])
            ]
    outcome = judge(case.kind, [response], api=True, chat=chat, well_formed=not headers_too)
    outcome.status += f" after {took:.0f} s"
    if response.status == 200:
        outcome.problems.append(("wrong", "an incomplete request was answered 200"))
    return [outcome]


KINDS: dict[str, tuple[float, Callable[[Case, Client], list[Outcome]], bool]] = {  # weight, run, background
    "body_chat": (25, lambda c, k: body_case(c, k, True), False),
    "body_completion": (25, lambda c, k: body_case(c, k, False), False),
    "raw_json": (8, raw_json_case, False),
    "headers": (12, headers_case, False),
    "method_path": (8, method_path_case, False),
    "disconnect_prompt": (4, disconnect_prompt_case, False),
    "disconnect_stream": (4, disconnect_stream_case, False),
    "disconnect_wait": (3, disconnect_wait_case, False),
    "burst": (1.5, burst_case, False),
    "stream_unread": (1.5, stream_unread_case, True),
    "stream_stalled": (0.1, stream_stalled_case, True),
    "slow_body": (0.6, lambda c, k: slow_case(c, k, False), True),
    "slow_headers": (0.3, lambda c, k: slow_case(c, k, True), True),
}
FIRST_KINDS = ["stream_stalled", "slow_headers", "slow_body", "stream_unread", *list(KINDS)[:9]]


def make_case(seed: int, index: int, kinds: list[str]) -> Case:
    rng = random.Random(f"{seed}-{index}")
    first = [k for k in FIRST_KINDS if k in kinds]
    if index < len(first):
        kind = first[index]
    else:
        kind = rng.choices(kinds, weights=[KINDS[k][0] for k in kinds])[0]
    return Case(index, kind, rng)


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Report:
    cases: int = 0
    seconds: float = 0.0
    kinds: dict[str, collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    failures: list[tuple[str, int, str, str, str]] = field(
        default_factory=list
    )  # category, case, kind, what, repro
    checks: collections.Counter = field(default_factory=collections.Counter)
    seconds_by_kind: collections.Counter = field(default_factory=collections.Counter)
    rss_kb: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def count(self, category: str) -> int:
        return sum(1 for f in self.failures if f[0] == category)

    @property
    def ok(self) -> bool:
        return not self.failures


class Runner:
    def __init__(self, seed: int, kinds: list[str], log: Callable[[str], None]) -> None:
        self.seed, self.kinds, self.log = seed, kinds, log
        self.report = Report()
        self.lock = threading.Lock()
        self.background = threading.Semaphore(BACKGROUND)
        self.active: list[threading.Thread] = []

    def record(self, case: Case, outcomes: list[Outcome]) -> None:
        with self.lock:
            for outcome in outcomes:
                self.report.kinds[case.kind][outcome.status.split(" after")[0]] += 1
                for category, what in outcome.problems:
                    self.fail(category, case, what)

    def fail(self, category: str, case: Case | None, what: str) -> None:
        index, kind, repro = (case.index, case.kind, case.what) if case else (-1, "-", "")
        first = not any(f[:2] == (category, index) for f in self.report.failures) or index < 0
        self.report.failures.append((category, index, kind, what, repro[:600]))
        if first:  # a burst's 20 answers are one line
            self.log(f"FAILED {category} case {index} ({kind}): {what[:300]}")

    def run_case(self, case: Case, client: Client) -> None:
        started = time.monotonic()
        try:
            outcomes = KINDS[case.kind][1](case, client)
        except Exception as error:  # noqa: BLE001 - the runner's own trouble is a failure too, with its case
            outcomes = [
                Outcome(case.kind, "runner error", [("malformed", f"{type(error).__name__}: {error}")])
            ]
        took = time.monotonic() - started
        with self.lock:
            self.report.seconds_by_kind[case.kind] += took
        if took > 10 and not KINDS[case.kind][2]:
            self.log(f"slow: case {case.index} ({case.kind}) took {took:.0f} s: {case.what[:200]}")
        self.record(case, outcomes)

    def in_background(self, case: Case, client: Client) -> None:
        self.background.acquire()

        def go() -> None:
            try:
                self.run_case(case, client)
            finally:
                self.background.release()

        thread = threading.Thread(target=go, daemon=True, name=f"case-{case.index}")
        self.active = [t for t in self.active if t.is_alive()] + [thread]
        thread.start()

    def known(self, server: ServerProcess) -> str:
        """The known request's answer; a 503 (slow clients' streams may fill the slots and the
        queue) is retried after its Retry-After, up to 5 times."""
        for _ in range(5):
            reply = httpx.post(server.url + "/v1/chat/completions", json=QUESTION, timeout=HANG_SECONDS)
            if reply.status_code != 503:
                break
            time.sleep(float(reply.headers.get("retry-after", 2)))
        if reply.status_code != 200:
            return f"status {reply.status_code}: {reply.text[:200]}"
        return reply.json()["choices"][0]["message"]["content"]

    def metrics(self, server: ServerProcess) -> dict[str, float]:
        text = httpx.get(server.url + "/metrics", timeout=HANG_SECONDS).text
        return {m[1]: float(m[2]) for m in re.finditer(r"^(clm_\w+) (\S+)$", text, re.M)}

    def idle(self, server: ServerProcess, within: float) -> dict[str, float]:
        """{} once nothing is held, else the last gauges seen."""
        deadline = time.monotonic() + within
        while True:
            gauges = self.metrics(server)
            held = {k: gauges[k] for k in ("clm_slots_busy", "clm_requests_waiting", "clm_kv_cache_reserved")}
            if not any(held.values()):
                return {}
            if time.monotonic() > deadline:
                return held
            time.sleep(0.2)

    def checkpoint(self, server: ServerProcess, answer: str, after: int) -> bool:
        """The known answer and /health; False if the server is dead."""
        if server.process.poll() is not None:
            self.fail("death", None, f"the server exited ({server.process.returncode}) by case {after}")
            return False
        try:
            quiet = not any(t.is_alive() for t in self.active) and not self.idle(server, IDLE_SECONDS)
            got = self.known(server)
            health = httpx.get(server.url + "/health", timeout=HANG_SECONDS).json()
        except (httpx.HTTPError, ValueError) as error:
            self.fail("hang", None, f"the check after case {after} failed: {error!r}")
            return server.process.poll() is None
        self.report.checks["known answer" if quiet else "an answer beside background clients"] += 1
        if (got != answer) if quiet else (got.startswith("status ") or not got):
            self.fail("wrong", None, f"after case {after} the known answer is {got!r}, not {answer!r}")
        if health.get("status") != "ok":
            self.fail("wrong", None, f"after case {after} /health says {health}")
        if not any(t.is_alive() for t in self.active):
            self.report.checks["idle with no client"] += 1
            if held := self.idle(server, IDLE_SECONDS):
                self.fail("leak", None, f"after case {after}, with no client, /metrics shows {held}")
        self.report.rss_kb[f"after case {after}"] = rss_kb(server)
        return True

    def run(self, cases: list[int]) -> Report:
        started = self.started = time.monotonic()
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))  # walks over bodies nested 500 deep
        server = ServerProcess(*SERVER_ARGS)
        try:
            self._run(server, cases)
        finally:
            for thread in self.active:
                thread.join(BODY_SECONDS + SLOW_GRACE + SEND_SECONDS + HANG_SECONDS)
            code = server.stop()
            if code != 0:
                self.fail("bug", None, f"the server exited {code} on SIGTERM")
            self.check_log(server.errors())
            self.report.seconds = time.monotonic() - started
        return self.report

    def _run(self, server: ServerProcess, cases: list[int]) -> None:
        client = Client(server.url)
        answer = self.known(server)
        if answer.startswith("status "):
            raise RuntimeError(f"the known request failed on a fresh server: {answer}")
        base = self.report.rss_kb["after the first known answer"] = rss_kb(server)
        self.log(
            f"server {server.url} {' '.join(SERVER_ARGS)}: known answer {answer!r}, RSS {base // 1024} MiB"
        )
        for n, index in enumerate(cases, 1):
            case = make_case(self.seed, index, self.kinds)
            if KINDS[case.kind][2]:
                self.in_background(case, client)
            else:
                self.run_case(case, client)
            self.report.cases += 1
            if n % BATCH == 0 or n == len(cases):
                if not self.checkpoint(server, answer, index):
                    return
                self.log(
                    f"{n} cases, {time.monotonic() - self.started:.0f} s, "
                    f"failures {len(self.report.failures)}"
                )
        for thread in self.active:
            thread.join(BODY_SECONDS + SLOW_GRACE + SEND_SECONDS + HANG_SECONDS)
        if server.process.poll() is not None:
            self.fail("death", None, f"the server exited ({server.process.returncode}) after the last case")
            return
        self.report.checks["end"] += 1
        if held := self.idle(server, IDLE_SECONDS):
            self.fail("leak", None, f"at the end, with every client done, /metrics shows {held}")
        if (got := self.known(server)) != answer:
            self.fail("wrong", None, f"at the end the known answer is {got!r}")
        end = self.report.rss_kb["at the end"] = rss_kb(server)
        if end > RSS_BOUND * base:
            self.fail("leak", None, f"RSS {end // 1024} MiB at the end > {RSS_BOUND} x {base // 1024} MiB")

    def check_log(self, log: str) -> None:
        lines = log.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("Traceback"):
                before = lines[i - 1] if i else ""
                after = (lines[j] for j in range(i + 1, len(lines)) if lines[j] and not lines[j][0].isspace())
                tail = next(after, "?")
                self.fail("bug", None, f"server traceback after {before[:160]!r}: {tail[:300]}")
            elif "the scheduler thread stopped" in line:
                self.fail("death", None, line)
        warnings = collections.Counter(line for line in lines if line.startswith(("WARNING", "ERROR")))
        self.report.notes += [f"server log: {count} x {line[:120]}" for line, count in warnings.items()]


def rss_kb(server: ServerProcess) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status)[1])


def summary(report: Report, seed: int) -> str:
    lines = [f"fuzz-server: {report.cases} cases, seed {seed}, {report.seconds:.0f} s "
             f"(server {' '.join(SERVER_ARGS)}, 1 thread)"]  # fmt: skip
    for kind, statuses in sorted(report.kinds.items()):
        counts = ", ".join(f"{s}: {n}" for s, n in statuses.most_common())
        lines.append(
            f"  {kind:18} {sum(statuses.values()):5} ({report.seconds_by_kind[kind]:.0f} s)  {counts}"
        )
    total = collections.Counter()
    for statuses in report.kinds.values():
        total.update(statuses)
    lines.append("  statuses: " + ", ".join(f"{s}: {n}" for s, n in total.most_common()))
    lines.append("  checks: " + ", ".join(f"{k} {n}" for k, n in report.checks.items()))
    rss = report.rss_kb
    if rss:
        base = rss.get("after the first known answer", 0)
        peak, end = max(rss.values()) // 1024, rss.get("at the end", 0) // 1024
        lines.append(f"  RSS: {base // 1024} MiB after the first answer, peak {peak} MiB, end {end} MiB "
                     f"(bound {RSS_BOUND} x: {RSS_BOUND * base / 1024:.0f} MiB)")  # fmt: skip
    lines += [f"  {note}" for note in report.notes]
    plural = {"death": "deaths", "hang": "hangs", "leak": "leaks", "malformed": "malformed", "bug": "bugs"}
    lines.append("  " + ", ".join(f"{plural.get(c, c)} {report.count(c)}" for c in FAILURES))
    groups: dict[tuple[str, str], list] = collections.defaultdict(list)
    for failure in report.failures:
        groups[(failure[0], re.sub(r"\b[0-9a-f]{12}\b|\d+", "N", failure[3])[:80])].append(failure)
    for (category, _), group in groups.items():
        category, index, kind, what, repro = group[0]
        lines.append(f"FAILED {category} x{len(group)}: case {index} ({kind}): {what[:400]}")
        if index >= 0:
            lines.append(
                f"    replay: python tests/fuzz_server.py --seed {seed} --case {index}   # {repro[:400]}"
            )
    lines.append("PASSED" if report.ok else f"FAILED: {len(report.failures)} failures")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--case", type=int, action="append", help="replay only this case (repeatable)")
    parser.add_argument("--kinds", help=f"comma-separated, of: {', '.join(KINDS)} (default: all)")
    args = parser.parse_args()
    kinds = args.kinds.split(",") if args.kinds else list(KINDS)
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    runner = Runner(args.seed, kinds, lambda line: print(line, flush=True))
    report = runner.run(args.case or list(range(args.cases)))
    print(summary(report, args.seed), flush=True)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
