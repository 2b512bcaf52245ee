#!/usr/bin/env bash
# The sanitizer builds and their suites (scripts/test.sh --sanitize KIND [ctest arguments]):
#   address,undefined  ASan + UBSan (and LeakSanitizer) in build-asan/
#   thread             TSan in build-tsan/
# Each is its own build directory (LDCP_SANITIZE_BUILD_DIR overrides), configured once with the
# sanitizer flags through CXXFLAGS/LDFLAGS by scripts/build.sh (the same libtorch, gcc, Ninja),
# and builds only the targets its tests need. The tests each build runs are the regexes below;
# extra arguments go to ctest (a later -R replaces the list: -R server_soak). ASan, LSan and TSan
# reports go to BUILD/sanitizer-logs/ (a server started by a Python test writes its stderr to a
# log the test deletes): any report there fails the run, and they are printed. UBSan beside ASan
# (gcc) always reports on stderr, so it halts instead: the process exits 1 at the first report,
# which fails its test. Suppressions: tests/sanitizers/*.supp, each entry with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
source_dir=$(pwd)
kind=${1:?"usage: scripts/test.sh --sanitize address,undefined|thread [ctest arguments]"}
shift

# Unit: the readers of untrusted files, the model folder and pipeline code that uses them, pruning,
# request validation, tokens, LoRA file planning, the PNG parameters text. Policy: the scheduler
# with the fake engine. Service: ldcp-server as a child process (streaming, cancellations,
# deadlines, hostile input, TLS, the metrics endpoint, the soak with --workers 2 and a SIGTERM
# mid-load). Left out: the parity tests (Python
# references: nothing of ours to instrument that the unit tests miss), the long and benchmark
# tests, and the model tests that only run libtorch kernels.
asan_unit=(io_parse_test io_test clip_unit_test image_codec_test test_step_schedule test_pipeline
           test_pruning test_request_validation test_server_auth lora_file_test
           generation_parameters_test)
asan_tests=("${asan_unit[@]}" test_server_policy server_integration server_hostile_requests
            server_metrics_endpoint server_security server_soak)
# TSan: only code with threads of ours (the scheduler, its control thread and model pool, the
# gRPC service and its completion handling, the metrics endpoint, the tokens file watcher).
# libtorch, OpenMP and gRPC are not instrumented: tsan.supp says what that costs.
tsan_tests=(test_server_policy test_server_auth server_integration server_hostile_requests
            server_metrics_endpoint server_soak)
# Executables the Python tests start (LDCP_SERVER, LDCP_CLIENT, LDCP_TOOL for init-demo-model).
service_targets=(ldcp-server ldcp-client ldcp)

common_flags="-fno-omit-frame-pointer"
case "$kind" in
  address,undefined | undefined,address | address | asan)
    name=asan runtime=asan
    flags="-fsanitize=address,undefined $common_flags"
    tests=("${asan_tests[@]}")
    ;;
  thread | tsan)
    name=tsan runtime=tsan
    flags="-fsanitize=thread $common_flags"
    tests=("${tsan_tests[@]}")
    ;;
  *)
    echo "scripts/test.sh --sanitize: unknown kind '$kind' (address,undefined or thread)" >&2
    exit 2
    ;;
esac
build_dir=${LDCP_SANITIZE_BUILD_DIR:-build-$name}
targets=("${service_targets[@]}")
for t in "${tests[@]}"; do
  case "$t" in server_*) ;; *) targets+=("$t") ;; esac
done

scripts/setup.sh --test
if [ -f "$build_dir/CMakeCache.txt" ] &&
  ! grep '^CMAKE_CXX_FLAGS:STRING=' "$build_dir/CMakeCache.txt" | grep -qF -- "$flags"; then
  echo "sanitize: $build_dir was configured without '$flags'; remove it or set" \
    "LDCP_SANITIZE_BUILD_DIR" >&2
  exit 2
fi
# scripts/build.sh configures once (CMake takes CXXFLAGS/LDFLAGS as the initial flags).
CXXFLAGS="$flags" LDFLAGS="$flags" LDCP_BUILD_DIR="$build_dir" scripts/build.sh \
  --target "${targets[@]}"

# A build that lost its flags would pass everything: each executable must carry the runtime.
for exe in server/ldcp-server client/ldcp-client tools/ldcp; do
  # Not `ldd | grep -q`: grep's early exit makes ldd fail on SIGPIPE under pipefail.
  if ! grep -q "lib$runtime\.so" <<<"$(ldd "$build_dir/$exe")"; then
    echo "sanitize: $build_dir/$exe is not linked with lib$runtime" >&2
    exit 2
  fi
done

logs="$source_dir/$build_dir/sanitizer-logs"
rm -rf "$logs"
mkdir -p "$logs"
supp="$source_dir/tests/sanitizers"
# Reports to files named after the sanitizer and the process id. ASan and UBSan halt at the
# first report (the test fails where it is); TSan goes on and exits 66 at the end, so that one
# run lists every race.
opts() { local IFS=:; echo "$*"; }
ASAN_OPTIONS=$(opts "log_path=$logs/asan" detect_leaks=1 detect_stack_use_after_return=1 \
  strict_string_checks=1 check_initialization_order=1)
UBSAN_OPTIONS=$(opts print_stacktrace=1 halt_on_error=1 "suppressions=$supp/ubsan.supp")
LSAN_OPTIONS=$(opts "suppressions=$supp/lsan.supp" print_suppressions=0)
TSAN_OPTIONS=$(opts "log_path=$logs/tsan" halt_on_error=0 second_deadlock_stack=1 \
  "suppressions=$supp/tsan.supp" print_suppressions=0)
export ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS TSAN_OPTIONS
# What the tests may relax under a sanitizer (the soak's RSS bound: ASan's quarantine and TSan's
# shadow memory are not the server's own).
export LDCP_SANITIZE=$name
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

regex="^($(IFS='|'; echo "${tests[*]}"))\$"
status=0
start=$(date +%s)
(cd "$build_dir" && ctest --output-on-failure --parallel "${LDCP_JOBS:-2}" -R "$regex" "$@") ||
  status=$?
echo "sanitize ($name): ctest took $(($(date +%s) - start)) s"
reports=$(find "$logs" -type f | sort)
if [ -n "$reports" ]; then
  for f in $reports; do
    echo "==== $f"
    cat "$f"
  done
  echo "sanitize ($name): $(echo "$reports" | wc -l) report file(s) in $logs"
  status=1
fi
exit "$status"
