"""The rankjax model zoo (installed as `rankjax.models`): one Flax NNX model per file.

Each model module provides `default_config()`, `validate_config(config)`,
`embedding_tables(config, vocab_sizes)` and `create(config, num_dense, rngs=...)`; the trainer
picks one by `config.model.name`.
"""
