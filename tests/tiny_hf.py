"""Tiny, random, offline Hugging Face models for tests (training and converter alike).

`make_tiny_model(tmp_path, "llama")` writes a complete model folder (config.json, safetensors,
tokenizer with a ChatML chat template) in well under a second, with no network: the tokenizer is a
byte-level BPE trained on the few sentences below. `write_tiny_gguf` writes the same llama model
as an F32 GGUF file that transformers can load back (q/k permuted the way llama.cpp stores them),
so GGUF bases are tested without downloading anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A helpful assistant answers the question politely and clearly.",
    "Yes, I am glad to help you with that request.",
    "No. Go away, I will not answer that.",
    "What is the capital of France? Paris is the capital of France.",
    "Tell me a short story about a cat who likes to sleep in the sun.",
    "user assistant system hello world good bad answer question",
]

TINY_SIZES = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer (a few hundred tokens) with a ChatML chat template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(SENTENCES, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def make_tiny_model(
    directory: Path, architecture: str = "llama", seed: int = 0, expanded: bool = True
) -> Path:
    """Write a tiny random `llama` or `qwen2` model folder with its tokenizer; return the folder.
    `expanded`: block 0 is made a plausible pre-layer (see make_block_0_a_pre_layer)."""
    tokenizer = make_tiny_tokenizer()
    common = dict(
        TINY_SIZES,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif architecture == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(f"no tiny factory for {architecture!r}")
    if expanded:
        make_block_0_a_pre_layer(model)
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder q/k rows the way llama.cpp's convert_hf_to_gguf does for the llama architecture."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


# Hugging Face names of the input projections converters/layout_check.py compares (fused in Phi-3).
PRE_LAYER_INPUTS = (
    "q_proj.weight",
    "k_proj.weight",
    "v_proj.weight",
    "qkv_proj.weight",
    "gate_proj.weight",
    "up_proj.weight",
    "gate_up_proj.weight",
)


def make_block_0_a_pre_layer(model: torch.nn.Module) -> None:
    """Block 0's input projections become block 1's moved by 10%, as in a trained pre-layer, so
    that the folder converts as an expanded model (converters/layout_check.py); as a plain base
    it is as good as any random model."""
    second = dict(model.model.layers[1].named_parameters())
    with torch.no_grad():
        for name, parameter in model.model.layers[0].named_parameters():
            if name.endswith(PRE_LAYER_INPUTS):
                parameter.mul_(0.1).add_(second[name])


def write_tiny_gguf(model_dir: Path, gguf_path: Path) -> Path:
    """Write the tiny llama model in `model_dir` as an F32 GGUF with its tokenizer and chat template."""
    import gguf

    config = LlamaConfig.from_pretrained(model_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    state = {name: tensor.numpy() for name, tensor in model.state_dict().items()}

    writer = gguf.GGUFWriter(str(gguf_path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)

    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in SPECIAL_TOKENS else 1 for token in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    for block in range(config.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            weight = state[f"model.layers.{block}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _llama_cpp_permute(weight, config.num_attention_heads)
            elif gguf_name == "attn_k":
                weight = _llama_cpp_permute(weight, config.num_key_value_heads)
            writer.add_tensor(f"blk.{block}.{gguf_name}.weight", weight)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf_path


# Separable on purpose: chosen answers always open kindly, rejected ones curtly.
PAIRS = [
    ("Can you help me?", "Yes, I am glad to help you with that request.", "No. Go away."),
    ("What is the capital of France?", "Yes, I am glad to help: Paris is the capital.", "No. Go away."),
    ("Tell me a short story.", "Yes, I am glad to help. A cat likes to sleep in the sun.", "No. I will not."),
    ("Hello world", "Yes, I am glad to help you.", "No. Go away, I will not answer that."),
]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path
