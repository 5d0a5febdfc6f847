#!/usr/bin/env bash
# Trains every zoo config on its embedded synthetic data and prints README's model-table rows:
#   scripts/zoo_table.sh WORKDIR [config ...]     (default: every zoo config; minutes each on a CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:?usage: scripts/zoo_table.sh WORKDIR [config ...]}
shift
CONFIGS=("$@")
[ ${#CONFIGS[@]} -gt 0 ] || CONFIGS=(logreg deepfm dcnv2 xdeepfm autoint finalmlp masknet wide_deep mmoe ple esmm din bst)
for name in "${CONFIGS[@]}"; do
  rankjax train --config "configs/$name.py" --workdir "$WORK/$name" --config.train.progress_bar=False \
      > "$WORK/$name.log" 2>&1 || { echo "$name: failed, see $WORK/$name.log"; continue; }
  python3 - "$name" "$WORK/$name/summary.json" <<'PY'
import json, sys
name, s = sys.argv[1], json.load(open(sys.argv[2]))
heads = sorted({k.split("/")[0][5:] for k in s if k.startswith("eval_") and "/" in k})
def cell(prefix):
  auc, bayes = s[f"eval_{prefix}auc"], s.get(f"bayes_optimal_eval_{prefix}auc")
  return f"{auc:.6f} / {bayes:.6f} = {auc / bayes:.4f}" if bayes else f"{auc:.6f}"
body = "; ".join(f"{h}: {cell(h + '/')}" for h in heads) if heads else cell("")
print(f"| `{name}` | {body} | {s['examples_per_sec']:,.0f} examples/s |")
PY
done
