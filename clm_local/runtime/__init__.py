"""The runtime: a CLM GGUF in the patched llama.cpp. The lowest layer: it imports nothing of chat,
server, training or the CLI, and everything above it reaches llama.cpp only through it.

- `model.py`: ClmModel (`clm_local.load`): decode, logits, tokenizer. Alpha enters here:
  `sequence_coefficients` maps (file, mode, alpha) to the sequences and their pre-layer
  coefficients, which `set_alpha` hands to llama.cpp; in logits mode `decode(mix=...)` asks
  llama.cpp to mix each pair before the LM head (`mix_logits` mixes in numpy where it cannot);
- `llama-cpp-pre-layer.patch`: where alpha is applied, inside llama.cpp's graph (the per-token
  blend `h = e + alpha * (h - e)` after the pre-layer, and the logit mix before the head);
- `library.py`: the ctypes bindings of the patch's C functions and llama.cpp's log;
- `build.py`: patch, build and cache the wheel (`clm-local runtime install`);
- `threads.py`: the CPU thread count, chosen by timing decode steps on a busy machine.
"""
