"""The automatic post-mortem: what the policy tried, why it failed, and whether the reward is real.

- `classify`: model family and feature kinds of one experiment, from the syntax tree of its code
  (what fills `Experience.model_family` and `Experience.custom_features`).
- `tables`: the per-run and per-cycle tables from the replay buffer frame (its column contract
  is documented there).
- `plots`: the PNG plots. `report`: `build_report` (Markdown + HTML + plots + table rows for
  artifacts) and `print_report` (Rich, for the terminal).

The modules are imported one by one, so the pipeline can classify without loading matplotlib.
"""
