"""The default model's recipe and its evidence (`clm-local recipe ...`): prompts, sampled preference
pairs, SFT then DPO on P, and the held-out measures. It builds on training, the converters and the
runtime; nothing below it imports it.

- `prompts.py`: the recipe's own prompts and their train/dev/held-out split;
- `data_builder.py`, `preference.py`: sample answers from the base and pick the pairs;
- `recipe.py`: the whole pipeline (`recipe default`, `--ship`);
- `answers.py`, `cells.py`: batched greedy answers at many alphas and their bootstrap cells;
- `tune.py`: candidate settings judged on the dev prompts by a rule fixed in advance;
- `full_dpo.py`, `compare.py`: full-model DPO and the two-model mix against CLM, held out.
"""
