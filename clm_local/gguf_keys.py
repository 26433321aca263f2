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

# Architectures whose llama.cpp graph builders end each block with build_cvec() (the hook point)
# and that the project tests end to end.
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
