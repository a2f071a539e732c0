# Sourced by the bench scripts: reading `busmq bench` output, quoting the
# median of a ratio measured in alternating rounds, and waiting for a port.

# The median consumed msgs/s a `busmq bench` run printed to FILE, digits
# only; nothing for a run that failed or never wrote FILE.
consumed_in() {
    if [ -f "$1" ]; then
        sed -n 's/^median of steady cycles: .*consumed \([0-9,]*\)\/s.*/\1/p' "$1" | tr -d ,
    fi
}

# 100 * TOP / BOTTOM with one decimal; nothing (and success, under
# `set -e`) when either is missing.
ratio_of() {
    if [ -n "$1" ] && [ -n "$2" ] && [ "$2" -gt 0 ]; then
        awk -v t="$1" -v b="$2" 'BEGIN { printf "%.1f\n", 100 * t / b }'
    fi
}

# Prints "LABEL: median M% of N alternating rounds (r1%, r2%, ...)" for
# the ratios read one per line.
summarize() {
    local label=$1 values list median n
    values=$(cat)
    if [ -z "$values" ]; then
        echo "$label: no rounds completed"
        return
    fi
    list=$(printf '%s\n' "$values" | awk '{ printf "%s%s%%", (NR > 1 ? ", " : ""), $1 }')
    median=$(printf '%s\n' "$values" | sort -n |
        awk '{ r[NR] = $1 } END { printf "%.1f", (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2 }')
    n=$(printf '%s\n' "$values" | wc -l)
    echo "$label: median $median% of $n alternating rounds ($list)"
}

# Waits (bounded: 10 s) until HOST:PORT accepts TCP connections; fails
# (exits under `set -e`) when nothing listens by then.
wait_port() {
    local _
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    return 1
}
