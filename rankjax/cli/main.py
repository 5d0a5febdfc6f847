"""The `rankjax` command: dispatches `rankjax COMMAND ...` to the command's module. Every error
reaches the user as one line (the traceback only with RANKJAX_DEBUG=1)."""

from __future__ import annotations

import importlib
import os
import sys

from rankjax.cli.flags import EXIT_CONFIG_ERROR, EXIT_FAILURE, fail

USAGE = """usage: rankjax COMMAND ...

commands:
  train --config CFG --workdir DIR [--config.KEY=VALUE ...]
          train (or resume) the experiment of a config file in a workdir
  plan --config CFG [--devices N] [--device-memory BYTES] [--config.KEY=VALUE ...]
          print the embedding sharding plan: per table sharding and bytes per device
  bench embedding [--rows 100000,1000000,4000000] [--steps N] [--sharding S] [--collectives]
          time the sparse embedding engine against tables-as-optax-params
  bench data --path DIR       samples/s of the shuffled Grain pipeline
  bench train --config CFG    steady-state samples/s of a config's train step
  data criteo|table|letor ... ingest Criteo TSV, Parquet/CSV or LETOR/SVMlight into the binary layout
  data crosses --path DIR     which feature pairs interact: Wide & Deep's crosses, ranked
  profile --config CFG --workdir DIR [--steps N]
          XProf trace, HLO dumps and a roofline report of the train step
  config show --config CFG [--config.KEY=VALUE ...]
          every config key with its value, default and type
  plot --workdir DIR          training_curves.png of a run's metrics (train does it at the end)
  export --workdir RUN --out DIR [--step N] [--quantize bf16|int8]
          a trained run as a serving artifact (jax.export StableHLO + tensorstore weights)
  predict --model DIR --input DATASET_DIR|FILE --output scores.parquet
          score a dataset split, or a raw Criteo TSV / Parquet / CSV file, with an exported model
  serve --model DIR [--port P]  an exported model behind a loopback HTTP JSON endpoint
  bench serve --model DIR     p50/p99 latency and rows/s of an exported model per batch size

`rankjax COMMAND --help` lists a command's flags.
"""

# Command words -> the module (under rankjax.cli) whose main(argv) runs it.
COMMANDS = {("train",): "train", ("plan",): "plan", ("profile",): "profile", ("data",): "data",
            ("bench", "embedding"): "bench_embedding", ("bench", "data"): "bench_data",
            ("bench", "train"): "bench_train", ("config",): "config_show",
            ("plot",): "plot", ("export",): "export", ("predict",): "predict",
            ("serve",): "serve", ("bench", "serve"): "bench_serve"}


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if len(argv) >= 2 else EXIT_CONFIG_ERROR
  for words, module in sorted(COMMANDS.items(), key=lambda kv: -len(kv[0])):
    if tuple(argv[1:1 + len(words)]) == words:
      try:
        return importlib.import_module(f"rankjax.cli.{module}").main(argv[1 + len(words):])
      except Exception as e:  # Anything a command did not turn into its own one-line error.
        if os.environ.get("RANKJAX_DEBUG") == "1":
          raise
        user_caused = isinstance(e, (ValueError, OSError))  # Config, data, files, disk space.
        return fail(f"{type(e).__name__}: {' '.join(str(e).split())} (RANKJAX_DEBUG=1 prints the traceback)",
                    EXIT_CONFIG_ERROR if user_caused else EXIT_FAILURE)
  return fail(f"unknown command {' '.join(argv[1:3])!r}\n{USAGE}", EXIT_CONFIG_ERROR)


if __name__ == "__main__":
  sys.exit(main())
