"""The `rankjax` command line: one module per command (train, plan, profile, bench, data) on top
of the library, sharing the `--config` flag plumbing in `flags`."""
