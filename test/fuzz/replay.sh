#!/bin/sh
# Runs a fuzz target once over every input file of the given directories (seed corpus,
# regressions): the regression check of CTest (fuzz_replay_*) and of tools/fuzz.
# Usage: replay.sh TARGET DIR...   (missing directories are skipped)
# Exit status 0 when every input passed; otherwise 1, after the target's report.
set -eu
target=$1
shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for dir in "$@"; do
  [ -d "$dir" ] || continue
  find "$dir" -type f ! -name '.*' ! -name '*.md' | sort >>"$tmp/inputs"
done
count=$(wc -l <"$tmp/inputs" 2>/dev/null || echo 0)
if [ "$count" -eq 0 ]; then
  echo "replay: $(basename "$target"): no inputs in $*" >&2
  exit 1
fi
# libFuzzer runs each file given as an argument once (no fuzzing) and stops at the first
# failure. -timeout is a backstop for a hang; time budgets are asserted by the targets.
if tr '\n' '\0' <"$tmp/inputs" |
  xargs -0 "$target" -timeout=5 -rss_limit_mb=2048 >"$tmp/log" 2>&1; then
  echo "replay: $(basename "$target"): $count inputs passed"
else
  grep -v '^Running: \|^Executed .* in [0-9]* ms$' "$tmp/log" | tail -n 60 >&2
  echo "replay: $(basename "$target"): FAILED (after $(grep -c '^Executed ' "$tmp/log") of $count inputs)" >&2
  exit 1
fi
