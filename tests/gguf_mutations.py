"""Mutated copies of valid GGUFs, described by JSON-able recipes, for the fuzz test and its regressions.

A recipe is a dict: `{"base": NAME, "op": OP, ...}`. `apply(recipe, bases)` turns the bytes of the
named base file into the mutated bytes, deterministically, so a crasher is kept as its recipe (a
line of JSON), never as a binary file. `recipes(seed, count)` yields the targeted metadata edits
that llama.cpp or the Python readers once failed on (block_count past 512, NaN or negative
epsilon, RoPE dimension unlike the head size, odd, 0 or past it, norms and biases stored as F16 or
BF16, zero soft-caps and windows, tokenizer model swaps, huge counts, type-tag changes, non-UTF-8
strings), then random truncations, byte flips and value edits. A tensor is named by its position
or (in a recipe written by hand) its name.

The file layout is walked here with a few lines of struct code, independently of the checker
under test (clm_local.gguf.header), and only ever on the valid base files.
"""

from __future__ import annotations

import math
import random
import re
import struct
from dataclasses import dataclass
from typing import Any

from gguf import GGUFValueType

Recipe = dict[str, Any]

_FMT = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class Entry:
    key: str
    start: int  # the key's length field
    type_at: int  # the value type field
    value_at: int  # the value (for an ARRAY: its item type field)
    end: int
    vtype: GGUFValueType


@dataclass(frozen=True)
class Layout:
    """Where things are in a valid GGUF."""

    entries: dict[str, Entry]
    kv_end: int
    tensor_infos: list[tuple[int, int]]  # (start, end) of each tensor info
    tensor_names: list[str]
    tensor_dims: list[int]  # n_dims of each tensor
    infos_end: int
    data_start: int
    alignment: int


def layout(data: bytes) -> Layout:
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    entries: dict[str, Entry] = {}
    for _ in range(n_kv):
        start = pos
        (length,) = struct.unpack_from("<Q", data, pos)
        key = data[pos + 8 : pos + 8 + length].decode()
        pos += 8 + length
        type_at = pos
        vtype = GGUFValueType(struct.unpack_from("<I", data, pos)[0])
        pos += 4
        value_at = pos
        pos = _skip_value(data, pos, vtype)
        entries[key] = Entry(key, start, type_at, value_at, pos, vtype)
    kv_end = pos
    infos, names, dims = [], [], []
    for _ in range(n_tensors):
        start = pos
        (length,) = struct.unpack_from("<Q", data, pos)
        names.append(data[pos + 8 : pos + 8 + length].decode())
        pos += 8 + length
        (n_dims,) = struct.unpack_from("<I", data, pos)
        dims.append(n_dims)
        pos += 4 + 8 * n_dims + 4 + 8
        infos.append((start, pos))
    alignment = 32
    if "general.alignment" in entries:
        alignment = struct.unpack_from("<I", data, entries["general.alignment"].value_at)[0]
    data_start = -(-pos // alignment) * alignment
    return Layout(entries, kv_end, infos, names, dims, pos, data_start, alignment)


def _skip_value(data: bytes, pos: int, vtype: GGUFValueType) -> int:
    if vtype == GGUFValueType.STRING:
        return pos + 8 + struct.unpack_from("<Q", data, pos)[0]
    if vtype == GGUFValueType.ARRAY:
        item = GGUFValueType(struct.unpack_from("<I", data, pos)[0])
        (count,) = struct.unpack_from("<Q", data, pos + 4)
        pos += 12
        for _ in range(count):
            pos = _skip_value(data, pos, item)
        return pos
    return pos + struct.calcsize(_FMT[vtype])


def encode_value(vtype: GGUFValueType, value: Any) -> bytes:
    """Type tag and value bytes; strings may be bytes (written as they are, UTF-8 or not)."""
    head = struct.pack("<I", vtype)
    if vtype == GGUFValueType.STRING:
        raw = value if isinstance(value, bytes) else str(value).encode()
        return head + struct.pack("<Q", len(raw)) + raw
    return head + struct.pack(_FMT[vtype], value)


def _encode_key(key: str) -> bytes:
    raw = key.encode()
    return struct.pack("<Q", len(raw)) + raw


def _rebuild(data: bytes, kv_section: bytes, n_kv: int) -> bytes:
    """The file with a new metadata section; tensor infos and data kept, padding redone."""
    where = layout(data)
    infos = data[where.kv_end : where.infos_end]
    head = data[:8] + struct.pack("<QQ", struct.unpack_from("<Q", data, 8)[0], n_kv) + kv_section + infos
    padding = -len(head) % where.alignment
    return head + b"\0" * padding + data[where.data_start :]


def set_value(data: bytes, key: str, vtype: GGUFValueType, value: Any) -> bytes:
    """Replace (or add) one key's value, re-encoding it with `vtype`."""
    where = layout(data)
    n_kv = len(where.entries)
    pieces = []
    for name, entry in where.entries.items():
        if name == key:
            pieces.append(_encode_key(key) + encode_value(vtype, value))
        else:
            pieces.append(data[entry.start : entry.end])
    if key not in where.entries:
        pieces.append(_encode_key(key) + encode_value(vtype, value))
        n_kv += 1
    return _rebuild(data, b"".join(pieces), n_kv)


def delete_key(data: bytes, key: str) -> bytes:
    where = layout(data)
    kept = [data[e.start : e.end] for name, e in where.entries.items() if name != key]
    return _rebuild(data, b"".join(kept), len(kept))


def patch(data: bytes, offset: int, raw: bytes) -> bytes:
    return data[:offset] + raw + data[offset + len(raw) :]


# --- recipes ------------------------------------------------------------------------------------

U32, I32, F32, STR = GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.FLOAT32, GGUFValueType.STRING
HUGE = 1 << 60


def targeted(base: str, arch: str, *, has_vocab: bool, vectors: list[str] = ()) -> list[Recipe]:
    """The metadata edits that once crashed or hung something, on one base file; `vectors`: the
    names of its 1-D tensors (norms, biases), each of which is also stored as F16 and BF16 once."""

    def value(key: str, vtype: GGUFValueType, v: Any) -> Recipe:
        return {"base": base, "op": "set", "key": key, "type": int(vtype), "value": v}

    recipes = [
        value(f"{arch}.block_count", U32, 513),
        value(f"{arch}.block_count", U32, 1 << 31),
        value(f"{arch}.block_count", U32, 0),
        value(f"{arch}.block_count", U32, 1),
        value(f"{arch}.attention.layer_norm_rms_epsilon", F32, "nan"),
        value(f"{arch}.attention.layer_norm_rms_epsilon", F32, -1e-5),
        value(f"{arch}.attention.layer_norm_rms_epsilon", F32, "inf"),
        value(f"{arch}.attention.layer_norm_rms_epsilon", F32, 0.0),
        value(f"{arch}.rope.dimension_count", U32, 8),
        value(f"{arch}.rope.dimension_count", U32, 0),
        value(f"{arch}.rope.freq_base", F32, "nan"),
        value(f"{arch}.rope.scaling.type", STR, "bogus"),
        value(f"{arch}.attention.head_count", U32, 0),
        value(f"{arch}.attention.head_count_kv", U32, 0),
        value(f"{arch}.attention.head_count_kv", U32, 3),
        value(f"{arch}.attention.head_count", U32, 5),
        value(f"{arch}.embedding_length", U32, 0),
        value(f"{arch}.embedding_length", U32, 1 << 31),
        value(f"{arch}.feed_forward_length", U32, 1 << 31),
        value(f"{arch}.context_length", U32, 0),
        value(f"{arch}.expert_count", U32, 4),
        value(f"{arch}.expert_used_count", U32, 2),
        value(f"{arch}.expert_count", U32, 1 << 20),
        value(f"{arch}.vocab_size", U32, 1 << 31),
        value(f"{arch}.vocab_size", U32, 0),
        value("clm.pre_layer_count", U32, 1 << 31),
        value("clm.pre_layer_count", U32, 3),
        value("clm.pre_layer_count", I32, 1),
        value("clm.pre_layer_count", STR, "1"),
        value("clm.alpha_default", F32, "nan"),
        value("clm.alpha_default", STR, "0.5"),
        value("clm.mix_default", STR, "both"),
        value("clm.mix_default", U32, 1),
        value("clm.version", U32, 99),
        value("general.architecture", STR, "gemma"),
        value("general.architecture", STR, "nonsense"),
        value("general.name", STR, "b:" + b"\xff\xfename".hex()),
        value("tokenizer.chat_template", STR, "b:" + b"{{ messages \xc3\x28 }}".hex()),
        value("general.alignment", U32, 3),
        value("general.alignment", U32, 0),
        {"base": base, "op": "delete", "key": "general.architecture"},
        {"base": base, "op": "delete", "key": f"{arch}.block_count"},
        {"base": base, "op": "delete", "key": "tokenizer.ggml.model"},
        {"base": base, "op": "delete", "key": f"{arch}.attention.layer_norm_rms_epsilon"},
        {"base": base, "op": "type_tag", "key": "general.architecture", "type": int(GGUFValueType.ARRAY)},
        {"base": base, "op": "type_tag", "key": f"{arch}.block_count", "type": int(GGUFValueType.STRING)},
        {"base": base, "op": "type_tag", "key": f"{arch}.block_count", "type": int(GGUFValueType.FLOAT64)},
        {"base": base, "op": "type_tag", "key": "clm.pre_layer_count", "type": int(GGUFValueType.ARRAY)},
        {"base": base, "op": "type_tag", "key": "general.name", "type": 77},
        {"base": base, "op": "count", "field": "n_kv", "value": HUGE},
        {"base": base, "op": "count", "field": "n_tensors", "value": HUGE},
        {"base": base, "op": "count", "field": "n_tensors", "value": 0},
        {"base": base, "op": "string_length", "key": "general.name", "value": HUGE},
        {"base": base, "op": "tensor_field", "index": 0, "field": "type", "value": 99},
        {"base": base, "op": "tensor_field", "index": 1, "field": "type", "value": 8},  # Q8_0
        {"base": base, "op": "tensor_field", "index": 0, "field": "n_dims", "value": 7},
        {"base": base, "op": "tensor_field", "index": 0, "field": "offset", "value": HUGE},
        {"base": base, "op": "tensor_field", "index": 2, "field": "offset", "value": 32},
        {"base": base, "op": "tensor_field", "index": 1, "field": "ne0", "value": 1 << 40},
        {"base": base, "op": "tensor_field", "index": 3, "field": "name", "value": "blk.9.attn_q.weight"},
        {"base": base, "op": "truncate", "fraction": 0.5},
        {"base": base, "op": "truncate", "fraction": 0.001},
        {"base": base, "op": "nan_weights", "index": 0},
    ]
    # keys that some families' graphs read (RoPE sizes, head sizes, Gemma's window and soft-caps)
    recipes += [
        value(f"{arch}.rope.dimension_count", U32, 17),  # odd, and above an 8- or 16-wide head
        value(f"{arch}.rope.dimension_count", U32, 6),  # even, below the head size
        value(f"{arch}.rope.dimension_count", U32, 4096),
        value(f"{arch}.rope.dimension_count_swa", U32, 17),
        value(f"{arch}.rope.freq_base", F32, 0.0),
        value(f"{arch}.rope.freq_base_swa", F32, "nan"),
        value(f"{arch}.rope.freq_base_swa", F32, 0.0),
        value(f"{arch}.rope.scaling.factor", F32, 1e-30),
        value(f"{arch}.rope.scaling.type", STR, "yarn"),
        value(f"{arch}.rope.scaling.type", STR, "longrope"),
        value(f"{arch}.rope.scaling.original_context_length", U32, 0),
        value(f"{arch}.rope.scaling.attn_factor", F32, "nan"),
        value(f"{arch}.attention.key_length", U32, 7),
        value(f"{arch}.attention.key_length", U32, 0),
        value(f"{arch}.attention.value_length", U32, 7),
        value(f"{arch}.attention.key_length_swa", U32, 8),
        value(f"{arch}.attention.sliding_window", U32, 0),
        value(f"{arch}.attention.sliding_window", U32, (1 << 32) - 1),
        value(f"{arch}.attn_logit_softcapping", F32, 0.0),
        value(f"{arch}.attn_logit_softcapping", F32, "nan"),
        value(f"{arch}.attn_logit_softcapping", F32, "inf"),
        value(f"{arch}.attn_logit_softcapping", F32, -50.0),
        value(f"{arch}.final_logit_softcapping", F32, 0.0),
        value(f"{arch}.final_logit_softcapping", F32, "nan"),
        value(f"{arch}.final_logit_softcapping", F32, "inf"),
    ]
    for name in vectors:
        for ggml_type in (1, 30):  # F16, BF16
            recipes.append(
                {"base": base, "op": "tensor_field", "index": name, "field": "type", "value": ggml_type}
            )
    for model in ("llama", "none", "gpt2", "bert", "t5", "nonsense"):
        recipes.append(value("tokenizer.ggml.model", STR, model))
    if has_vocab:
        recipes += [
            {"base": base, "op": "array_count", "key": "tokenizer.ggml.tokens", "value": HUGE},
            {"base": base, "op": "array_count", "key": "tokenizer.ggml.merges", "value": HUGE},
            {"base": base, "op": "array_count", "key": "tokenizer.ggml.token_type", "value": 3},
            {"base": base, "op": "type_tag", "key": "tokenizer.ggml.tokens", "type": int(U32)},
            {"base": base, "op": "item_type", "key": "tokenizer.ggml.tokens", "type": int(U32)},
            {"base": base, "op": "item_type", "key": "tokenizer.ggml.token_type", "type": int(F32)},
            {
                "base": base,
                "op": "item_type",
                "key": "tokenizer.ggml.merges",
                "type": int(GGUFValueType.ARRAY),
            },
            {"base": base, "op": "delete", "key": "tokenizer.ggml.merges"},
            {"base": base, "op": "delete", "key": "tokenizer.ggml.tokens"},
            value("tokenizer.ggml.bos_token_id", U32, 1 << 31),
            value("tokenizer.ggml.eos_token_id", U32, 1 << 31),
        ]
    return recipes


def random_recipe(rng: random.Random, base: str, size: int, keys: list[str]) -> Recipe:
    """One random mutation: a truncation, byte flips (anywhere or in the header), or a value edit."""
    kind = rng.choice(("truncate", "flips", "header_flips", "header_flips", "set_random"))
    if kind == "truncate":
        return {"base": base, "op": "truncate", "fraction": round(rng.random(), 4)}
    if kind in ("flips", "header_flips"):
        limit = size if kind == "flips" else min(size, 4096)
        flips = [[rng.randrange(limit), rng.randrange(1, 256)] for _ in range(rng.randint(1, 8))]
        return {"base": base, "op": "flips", "flips": flips}
    key = rng.choice(keys)
    vtype = rng.choice((U32, I32, F32, STR, GGUFValueType.UINT64, GGUFValueType.BOOL))
    choices = {
        U32: [0, 1, 2, 511, 512, 513, 1 << 31, (1 << 32) - 1],
        I32: [-1, 0, 1, -(1 << 31)],
        F32: ["nan", "inf", "-inf", -1.0, 0.0, 1e-30, 1e30],
        STR: ["", "llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt2", "none", "embed", "x" * 300],
        GGUFValueType.UINT64: [0, 1, HUGE, (1 << 64) - 1],
        GGUFValueType.BOOL: [True, False],
    }
    return {"base": base, "op": "set", "key": key, "type": int(vtype), "value": rng.choice(choices[vtype])}


def recipes(
    seed: int, count: int, bases: dict[str, bytes], archs: dict[str, str], *, targeted_share: float = 1.0
) -> list[Recipe]:
    """`count` recipes: the targeted edits of every base first, then seeded random ones.

    With `targeted_share` below 1, or fewer cases than targeted edits, a seeded sample of the
    targeted edits (at most that share of `count`) stands for them all: a short run still
    reaches every base file, each time with other edits."""
    chosen: list[Recipe] = []
    for name, data in bases.items():
        where = layout(data)
        has_vocab = "tokenizer.ggml.tokens" in where.entries
        vectors = _distinct_vectors(where)
        chosen += targeted(name, archs[name], has_vocab=has_vocab, vectors=vectors)
    rng = random.Random(seed)
    limit = math.floor(count * targeted_share)
    if len(chosen) > limit:
        chosen = [chosen[i] for i in sorted(rng.sample(range(len(chosen)), limit))]
    names = sorted(bases)
    keys = {name: sorted(layout(bases[name]).entries) for name in names}
    while len(chosen) < count:
        name = rng.choice(names)
        chosen.append(random_recipe(rng, name, len(bases[name]), keys[name]))
    return chosen[:count]


def _distinct_vectors(where: Layout) -> list[str]:
    """The 1-D tensors, one per kind: the last block's copy of each block tensor (a base block)."""
    last: dict[str, str] = {}
    for name, n_dims in zip(where.tensor_names, where.tensor_dims, strict=True):
        if n_dims == 1:
            last[re.sub(r"^blk\.\d+\.", "blk.N.", name)] = name
    return list(last.values())


def apply(recipe: Recipe, bases: dict[str, bytes]) -> bytes:
    """The mutated file of `recipe`."""
    data = bases[recipe["base"]]
    op = recipe["op"]
    where = layout(data)
    if op == "set":
        value = recipe["value"]
        if isinstance(value, str) and value in ("nan", "inf", "-inf"):
            value = float(value)
        if recipe["type"] == STR and isinstance(value, str) and value.startswith("b:"):
            value = bytes.fromhex(value[2:])
        return set_value(data, recipe["key"], GGUFValueType(recipe["type"]), value)
    if op == "delete":
        return delete_key(data, recipe["key"]) if recipe["key"] in where.entries else data
    if op == "type_tag":
        entry = where.entries.get(recipe["key"])
        return data if entry is None else patch(data, entry.type_at, struct.pack("<I", recipe["type"]))
    if op == "item_type":
        entry = where.entries[recipe["key"]]
        return patch(data, entry.value_at, struct.pack("<I", recipe["type"]))
    if op == "array_count":
        entry = where.entries[recipe["key"]]
        return patch(data, entry.value_at + 4, struct.pack("<Q", recipe["value"]))
    if op == "string_length":
        entry = where.entries[recipe["key"]]
        return patch(data, entry.value_at, struct.pack("<Q", recipe["value"]))
    if op == "count":
        offset = {"n_tensors": 8, "n_kv": 16}[recipe["field"]]
        return patch(data, offset, struct.pack("<Q", recipe["value"]))
    if op == "tensor_field":
        return _tensor_field(data, where, recipe["index"], recipe["field"], recipe["value"])
    if op == "truncate":
        return data[: math.floor(len(data) * recipe["fraction"])]
    if op == "flips":
        mutable = bytearray(data)
        for offset, mask in recipe["flips"]:
            mutable[offset % len(mutable)] ^= mask
        return bytes(mutable)
    if op == "nan_weights":
        start = where.data_start  # the first tensor's first values (all test bases are F32)
        return patch(data, start, struct.pack("<4f", *([math.nan] * 4)))
    raise ValueError(f"unknown mutation {op!r}")


def _tensor_field(data: bytes, where: Layout, index: int | str, field: str, value: Any) -> bytes:
    """Edit one field of a tensor's info; `index` is its position or its name."""
    if isinstance(index, str):
        index = where.tensor_names.index(index)
    start, end = where.tensor_infos[index]
    (length,) = struct.unpack_from("<Q", data, start)
    dims_at = start + 8 + length
    (n_dims,) = struct.unpack_from("<I", data, dims_at)
    type_at = dims_at + 4 + 8 * n_dims
    if field == "type":
        return patch(data, type_at, struct.pack("<I", value))
    if field == "n_dims":
        return patch(data, dims_at, struct.pack("<I", value))
    if field == "ne0":
        return patch(data, dims_at + 4, struct.pack("<Q", value))
    if field == "offset":
        return patch(data, type_at + 4, struct.pack("<Q", value))
    if field == "name":  # same length keeps the layout: pad or cut to the old length
        raw = value.encode()[:length].ljust(length, b"_")
        return patch(data, start + 8, raw)
    raise ValueError(f"unknown tensor field {field!r}")
