"""The rankjax model zoo (installed as `rankjax.models`): one Flax NNX model per file.

Each module defines `TASKS` (the tasks it serves, its default first), `default_config()`,
`validate_config(config)`, `create(config, inputs: InputSpec, *, rngs)` returning a module that maps
`ModelInputs` to `{head: logits}`, and optionally `embedding_tables(config, vocab_sizes)` and
`crossed_features(config)`; the trainer picks one by `config.model.name` (README "The model zoo").
Modules whose names start with "_" hold parts the models share.
"""
