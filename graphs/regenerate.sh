#!/usr/bin/env bash
# Regenerate the gallery: `acd discover` with its defaults (EAP-IG, 5 % of the edges, 100
# prompts, seed 0) on the embedded model, for each shipped task, into graphs/toy/<task>/eap-ig/
# (named with --out: discover's default folder is out/<model>/<task>/<method>/, outside the gallery),
# then the task's EAP-IG faithfulness curve (curve.json, curve.png/svg) and circuit.html again with
# that curve, so that the page's size slider shows the faithfulness measured at each size; and the
# positional circuit of each task (`--positions`: edges at the task's named spans) into
# graphs/toy/<task>/eap-ig-positions/, with its positional EAP-IG curve (`acd curve
# --positions`) and circuit.html again with that curve.
#
#   bash graphs/regenerate.sh            # uses `acd` from .venv/ if there is one, else PATH
set -euo pipefail
cd "$(dirname "$0")/.."
acd=acd
if [ -x .venv/bin/acd ]; then acd=.venv/bin/acd; fi
for task in ioi greater-than induction; do
  out="graphs/toy/$task/eap-ig"
  "$acd" discover "$task" --quiet --out "$out"
  "$acd" curve "$task" --methods eap-ig --out "$out/curve" >/dev/null
  "$acd" render "$out/circuit.json" --format html --curve "$out/curve.json"
  positions="graphs/toy/$task/eap-ig-positions"
  "$acd" discover "$task" --positions --quiet --out "$positions"
  "$acd" curve "$task" --positions --methods eap-ig --out "$positions/curve" >/dev/null
  "$acd" render "$positions/circuit.json" --format html --curve "$positions/curve.json"
done
