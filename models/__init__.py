"""The rankjax model zoo (installed as `rankjax.models`): one Flax NNX model per file.

Each CTR model module provides `default_config()`, `validate_config(config)`,
`embedding_tables(config, vocab_sizes)` and `create(config, num_dense, rngs=...)`; a ranking model
(`TASK = "ranking"`, for LETOR query lists) provides `default_config()`, `validate_config(config)`,
`feature_normalization(config, manifest)` and `create(config, num_features, rngs=...)`. The
trainer picks one by `config.model.name`.
"""
