# Sourced by the other scripts: one warm target directory outside the clone, so that a
# fresh clone (and CI on the same machine) reuses earlier builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/paxosdb-target}"
