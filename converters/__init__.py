"""Converters: one CLM GGUF (CLM.md, "The GGUF file") from whatever the user has.

Start at convert.py, which picks the path for a source:
- graft.py       (a) training checkpoint + the user's base GGUF -> base bytes kept, P added as blk.0
- hf_to_gguf.py  (b) expanded Hugging Face folder -> full conversion (hf_tokenizer.py for the vocab)
- add_keys.py    (c) GGUF from llama.cpp's converter -> the clm.* keys added
- quantize.py    --quantize: llama.cpp's own quantizer on the result
- info.py        `clm-local info`, and the summary printed after a conversion
Shared pieces: gguf_io.py (byte-exact copying, atomic writing), hf_tensors.py (names, q/k order,
stored types), safetensors_io.py, clm_metadata.py (clm.* keys, source checks),
checkpoint_manifest.py, pre_tokenizers.py (llama.cpp's pre-tokenizer fingerprints).
"""
