"""`clm-local bench`: the price of alignment control, against the base model and two models.

Four configurations of the same weights, each timed through chat's generation loop:
- base:      the base GGUF alone (what a stock llama.cpp runs);
- embed:     the CLM file in embed mode (one sequence, alpha applied at the pre-layer);
- logits:    the CLM file in logits mode (two sequences in one batch, mixed before the head);
- two_model: what a user could build without CLM: the base and the aligned GGUF in two contexts,
             logits mixed in Python (two_model.py).

suite.py runs them (interleaved, one process per run: worker.py), report.py prints the table.
settings.py imports nothing heavy, so the command line can show its defaults quickly.
"""
