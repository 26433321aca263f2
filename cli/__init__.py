"""The `clm-local` command (installed as clm_local.cli): one module per verb, each only mapping
options to the library (`main.py` wires them; `options.py` holds the options they share). The top
layer: nothing imports it, and it holds no logic a Python user could not reach without it."""
