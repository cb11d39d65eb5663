# Sourced by the training scripts. `score JSON DATA ARGS...` runs `fiberflow evaluate` on
# the dataset DATA into JSON unless JSON is already written, so a rerun after a kill skips
# finished scores; $bin names the fiberflow binary.
score() {
    local json=$1 data=$2
    shift 2
    [ -s "$json" ] || "$bin" evaluate --dataset "$data" --json "$json" "$@"
}
