"""The GGUF contract between the converter and the runtime (see CLM.md, "The GGUF file").

`blk.0..K-1` are the K pre-layers (CLM uses K = 1), `blk.K..K+N-1` the N base blocks, and
`{arch}.block_count` = N + K. The keys below are all a CLM file adds to an ordinary GGUF.
"""

CLM_VERSION = 1

KEY_VERSION = "clm.version"  # u32, CLM_VERSION
KEY_PRE_LAYER_COUNT = "clm.pre_layer_count"  # u32, K (read by the patched llama.cpp)
KEY_ALPHA_DEFAULT = "clm.alpha_default"  # f32 (read by the patched llama.cpp)
KEY_MIX_DEFAULT = "clm.mix_default"  # string: "logits" or "embed"
PREFIX_BASE = "clm.base."  # provenance of the base model
PREFIX_TRAIN = "clm.train."  # provenance of the training run

MIX_MODES = ("logits", "embed")

# The one allow-list of model families (GGUF `general.architecture` names): the architectures the
# patched llama.cpp blends (its list in llama-cpp-pre-layer.patch must be the same) and that the
# project trains, converts and runs end to end. Anything else is refused by name at every entry point.
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")

# Hugging Face `model_type` -> GGUF architecture, as llama.cpp's convert_hf_to_gguf.py maps them
# (Mistral-family models are llama graphs; Gemma3ForCausalLM's text-only config is "gemma3_text").
HF_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "phi3": "phi3",
}

# Families whose block input has an RMSNorm gain stored as (1 + w) in Hugging Face and as w + 1
# in GGUF (llama.cpp's converter adds 1 to every `*norm.weight`).
GEMMA_NORM_ARCHITECTURES = ("gemma2", "gemma3")

# Families that read the per-block sliding-window flags `{arch}.attention.sliding_window_pattern`,
# with the period llama.cpp assumes when the file states neither flags nor period: block i slides
# unless i % period == period - 1.
SLIDING_WINDOW_PERIODS = {"gemma2": 2, "gemma3": 6}
