# Sourced by the training scripts. `score JSON DATA ARGS...` runs `fiberflow evaluate` on
# the dataset DATA into JSON, and records its arguments in JSON.args; a rerun after a kill
# skips a score whose JSON exists with the same recorded arguments, and redoes one made
# with other arguments (or by an older script that recorded none), so a changed flag never
# leaves a stale score under its name. $bin names the fiberflow binary.
score() {
    local json=$1 data=$2
    shift 2
    local args="$data $*"
    if [ -s "$json" ] && [ "$(cat "$json.args" 2>/dev/null)" = "$args" ]; then
        return
    fi
    rm -f "$json.args"
    "$bin" evaluate --dataset "$data" --json "$json" "$@"
    printf '%s' "$args" >"$json.args"
}
