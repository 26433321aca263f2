"""Reading and validating GGUF files: everything clm-local knows about the file format.

- `keys`: the contract between converter and runtime (the `clm.*` keys, the supported families);
- `header`: a bounded reader of a file's metadata and tensor infos (no tensor data);
- `string_cache`: remembers where a file's vocabulary ends, so the header is read fast again;
- `constants`: gguf-py's format tables without importing the whole gguf package;
- `check`: `check_gguf(path)`, the one validator every entry point calls before llama.cpp or a
  converter touches a file (shape, type and hyperparameter rules per family);
- `file`: gguf-py's full reader (with tensor data) over a validated file, for the converters.

This package reads; it never writes a file and never calls llama.cpp.
"""
