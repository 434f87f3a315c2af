#!/usr/bin/env bash
# Coverage-guided fuzzing of shardwire with AFL++ (cargo-afl, stable Rust), issue 17.
#
#   scripts/fuzz.sh                          # every target, 10 minutes each, one after another
#   scripts/fuzz.sh --minutes 30 router      # one target for 30 minutes
#   scripts/fuzz.sh --minutes 2 frames startup
#   scripts/fuzz.sh --stats                  # only print the numbers of the last runs
#
# Targets (fuzz/src/bin/*.rs; their bodies are tests/fuzz_targets/mod.rs):
#   frames   client byte stream -> FrameReader (cut at input-chosen points, reads that
#            return Pending, cancelled reads) -> every client-message decoder, COPY splitter
#   startup  connection opening: startup packets, parameters, options, client_encoding,
#            session settings, SASLInitialResponse / SCRAM final / md5 password messages
#   router   SQL (+ Bind parameters) -> router::plan, the plan cache's literal templates,
#            literals::scan, resolve_keys, INSERT splits, gather final SQL, COPY plans
#
# What it does:
#   1. installs cargo-afl when missing (`cargo install cargo-afl`: AFL++ is built from the
#      crate's source with the machine's C compiler, no download) and builds the AFL
#      runtime once (`cargo afl config --build`);
#   2. builds the targets: `cargo afl build --release --manifest-path fuzz/Cargo.toml`
#      (fuzz/ is its own workspace; the main build never compiles it);
#   3. runs `cargo afl fuzz` on each target for the given time, niced, one at a time, seeded
#      from fuzz/corpus/<target>/ (plus fuzz/dict/<target>.dict when present); a second run
#      resumes the first (AFL_AUTORESUME);
#   4. prints executions, corpus size, crashes and hangs per target from AFL's fuzzer_stats.
#
# A crash is a panic (the targets abort on panic). Reproduce one without AFL:
#   cp <out>/<target>/default/crashes/id:... fuzz/regressions/<target>/
#   cargo test --test fuzz_corpus               # runs every regression input too
#
# Environment: CARGO_TARGET_DIR (default /tmp/shardwire-fuzz-target: never the main
# target/), FUZZ_OUT (AFL output, default /tmp/shardwire-fuzz-out), FUZZ_NICE (default 10),
# AFL_* variables are passed through (e.g. AFL_NO_UI=1 is set when not on a terminal).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ALL_TARGETS=(frames startup router)
MINUTES=10
STATS_ONLY=0
BUILD=1
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES=${2:?--minutes needs a number}; shift 2 ;;
        --minutes=*) MINUTES=${1#*=}; shift ;;
        --stats) STATS_ONLY=1; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")
for t in "${TARGETS[@]}"; do
    [ -f "fuzz/src/bin/$t.rs" ] || die "unknown target '$t' (targets: ${ALL_TARGETS[*]})"
done
[[ "$MINUTES" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--minutes takes a number"
SECONDS_PER_TARGET=$(awk -v m="$MINUTES" 'BEGIN { s = int(m * 60); print (s < 1 ? 1 : s) }')

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/shardwire-fuzz-target}"
case "$CARGO_TARGET_DIR" in
    "$ROOT/target"|"$ROOT/target/") die "CARGO_TARGET_DIR must not be the main build's target/" ;;
esac
OUT="${FUZZ_OUT:-/tmp/shardwire-fuzz-out}"
NICE="${FUZZ_NICE:-10}"

stat_of() { # file key
    awk -F' *: *' -v k="$2" '$1 == k { print $2 }' "$1" 2>/dev/null
}

print_stats() {
    printf '\n%-8s %14s %10s %8s %8s %8s %10s %9s %9s\n' \
        target executions exec/s corpus crashes hangs time stability coverage
    local total=0 t f
    for t in "${TARGETS[@]}"; do
        f="$OUT/$t/default/fuzzer_stats"
        if [ ! -f "$f" ]; then
            printf '%-8s %14s\n' "$t" "(no run)"
            continue
        fi
        local execs secs
        execs=$(stat_of "$f" execs_done)
        secs=$(stat_of "$f" run_time)
        total=$((total + execs))
        printf '%-8s %14s %10s %8s %8s %8s %9ss %9s %9s\n' "$t" "$execs" \
            "$(awk -v e="$execs" -v s="$secs" 'BEGIN { printf "%d", (s > 0 ? e / s : 0) }')" \
            "$(stat_of "$f" corpus_count)" "$(stat_of "$f" saved_crashes)" \
            "$(stat_of "$f" saved_hangs)" "$secs" "$(stat_of "$f" stability)" \
            "$(stat_of "$f" bitmap_cvg)"
    done
    printf '%-8s %14s\n' total "$total"
    printf '(per target, all runs in %s: a resumed run adds to the earlier ones)\n' "$OUT"
    for t in "${TARGETS[@]}"; do
        local d="$OUT/$t/default/crashes"
        if [ -d "$d" ] && ls "$d" | grep -q '^id:'; then
            printf '\ncrashes of %s (%s):\n' "$t" "$d"
            ls "$d" | grep '^id:' | sed 's/^/  /'
        fi
    done
}

if [ "$STATS_ONLY" = 1 ]; then
    print_stats
    exit 0
fi

# 1. cargo-afl and the AFL++ runtime.
if ! cargo afl --version >/dev/null 2>&1; then
    log "cargo install cargo-afl"
    cargo install cargo-afl
fi
if ! config_out=$(cargo afl config --build 2>&1); then
    # It also fails when the runtime is already built ("already built"): nothing to do then.
    grep -q 'already built' <<<"$config_out" \
        || { printf '%s\n' "$config_out" >&2; die "cargo afl config --build failed"; }
fi

# 2. Build.
if [ "$BUILD" = 1 ]; then
    log "cargo afl build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    nice -n "$NICE" cargo afl build --release --manifest-path fuzz/Cargo.toml \
        $(printf -- '--bin %s ' "${TARGETS[@]}")
fi

# 3. Fuzz, one target at a time.
export AFL_SKIP_CPUFREQ=1                        # the CPU governor is not ours to set
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1   # core_pattern may pipe to a handler
export AFL_NO_AFFINITY=1                         # shared machine: do not pin a core
export AFL_AUTORESUME=1                          # an existing output directory is resumed
export AFL_SKIP_CRASHES=1
[ -t 1 ] || export AFL_NO_UI=1
mkdir -p "$OUT"
for t in "${TARGETS[@]}"; do
    args=(-i "fuzz/corpus/$t" -o "$OUT/$t" -V "$SECONDS_PER_TARGET" -t 5000)
    [ -f "fuzz/dict/$t.dict" ] && args+=(-x "fuzz/dict/$t.dict")
    log "cargo afl fuzz $t for ${SECONDS_PER_TARGET}s -> $OUT/$t"
    nice -n "$NICE" cargo afl fuzz "${args[@]}" -- "$CARGO_TARGET_DIR/release/$t" \
        > "$OUT/$t.log" 2>&1 || {
        tail -n 30 "$OUT/$t.log" >&2
        die "afl-fuzz failed for $t (log: $OUT/$t.log)"
    }
done

# 4. Numbers.
print_stats
