"""Teach the served model your own preference (issue 24): collect pairs, train P, switch to it.

A person labels which of two answers they prefer; each choice is appended durably to a
preference file; training P on the collected pairs runs in a separate process while serving goes
on; the trained P becomes a new GGUF beside the old ones (a "dial"), which the server loads and
switches to without a restart.

Modules, one job each (each imports only the ones above it in this list, and the project's
training, recipe, runtime, converters and gguf packages, never the server):
- `folders`: where everything lives (`--data-dir`, one sub-folder per served base);
- `identity`: which base model the served file is made from, and where that base's GGUF is;
- `store`: the preference file (validated appends with fsync, tolerant reads);
- `settings`: the training settings for a few dozen to a few hundred pairs, and the held-out split;
- `dials`: the registry of trained preferences (`dials.json`);
- `job`: the training process itself (`python -m clm_local.teach.job SPEC`), JSON progress lines;
- `runner`: starts, watches and cancels that process from the server;
- `teacher`: what the HTTP routes call; the server gives it a function that switches the model.
"""
