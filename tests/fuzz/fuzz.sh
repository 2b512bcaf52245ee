#!/usr/bin/env bash
# The fuzz sub-build and its runs (tests/fuzz/CMakeLists.txt calls it from CTest):
#   fuzz.sh build DIR              configure DIR with clang and LDCP_FUZZ=ON, build every target,
#                                  write the seed corpora into DIR/seeds (make_seeds.py)
#   fuzz.sh run DIR NAME SECONDS   run DIR/tests/fuzz/fuzz_NAME for SECONDS (LDCP_FUZZ_SECONDS in
#                                  the environment overrides it) on DIR/corpus/NAME (kept between
#                                  runs, so later runs start from what earlier ones found) and
#                                  the seeds; prints libFuzzer's figures; a failing input lands in
#                                  DIR/artifacts/NAME-*
# Extra libFuzzer options: LDCP_FUZZ_ARGS (e.g. "-jobs=2 -workers=2").
set -euo pipefail
source_dir="$(cd "$(dirname "$0")/../.." && pwd)"
command=$1 dir=$2

case "$command" in
  build)
    # Configured once; later runs only rebuild what changed.
    if [ ! -f "$dir/build.ninja" ]; then
      cmake -S "$source_dir" -B "$dir" -G Ninja -DLDCP_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_CXX_COMPILER="${LDCP_FUZZ_CXX:-clang++}"
    fi
    cmake --build "$dir" -j "${LDCP_JOBS:-2}"
    "${LDCP_PYTHON:-python3}" "$source_dir/tests/fuzz/make_seeds.py" "$dir/seeds"
    ;;
  run)
    name=$3 seconds=${LDCP_FUZZ_SECONDS:-$4}  # the environment overrides CTest's default
    corpus="$dir/corpus/$name"
    mkdir -p "$corpus" "$dir/artifacts"
    # The image decoders must not allocate what a header claims before the data backs it.
    limits=(-rss_limit_mb=1024)
    case "$name" in png | jpeg) limits=(-rss_limit_mb=512 -malloc_limit_mb=64) ;; esac
    log="$dir/$name.log"
    status=0
    UBSAN_OPTIONS=print_stacktrace=1 "$dir/tests/fuzz/fuzz_$name" -max_total_time="$seconds" -timeout=10 \
      -print_final_stats=1 "${limits[@]}" -artifact_prefix="$dir/artifacts/$name-" \
      ${LDCP_FUZZ_ARGS:-} "$corpus" "$dir/seeds/$name" >"$log" 2>&1 || status=$?
    if ((status != 0)); then
      tail -n 60 "$log"
      echo "fuzz_$name failed (exit $status); the input is in $dir/artifacts/, the log in $log"
      exit "$status"
    fi
    grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb|stat::new_units_added)' "$log" || true
    echo "corpus: $(find "$corpus" -type f | wc -l) inputs in $corpus"
    ;;
  *)
    echo "fuzz.sh: unknown command $command (build, run)" >&2
    exit 2
    ;;
esac
