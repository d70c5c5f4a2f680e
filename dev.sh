#!/usr/bin/env bash
# taskhost developer entry point. Every command installs what it needs and
# is safe to run again.
#
#   ./dev.sh demo    build the host and the example plugins, run them, show results
#   ./dev.sh test    the whole test suite (what CI runs)
#   ./dev.sh bench   the sandbox benchmark table
#   ./dev.sh setup   only install prerequisites (Rust target wasm32-wasip2)
set -euo pipefail
cd "$(dirname "$0")"

PLUGIN_TARGET=wasm32-wasip2
PLUGIN_DIR=target/plugins/$PLUGIN_TARGET/plugin
EXAMPLES=(uppercase word-count hello-task hello-task-raw)

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

setup() {
  if ! command -v cargo >/dev/null || ! command -v rustup >/dev/null; then
    echo "error: cargo and rustup are required (https://rustup.rs)" >&2
    exit 2
  fi
  if ! rustup target list --installed | grep -qx "$PLUGIN_TARGET"; then
    say "installing the Rust target $PLUGIN_TARGET"
    rustup target add "$PLUGIN_TARGET"
  fi
}

build_plugins() {
  # Same command, flags and target dir as tests/artifacts/build.rs, so the
  # plugins are built once and shared.
  local args=()
  for dir in plugins/* tests/plugins/*; do args+=(-p "$(basename "$dir")"); done
  cargo build --profile plugin --target "$PLUGIN_TARGET" --target-dir target/plugins "${args[@]}"
}

demo() {
  setup
  say "building the taskhost host (release) and the plugins ($PLUGIN_TARGET)"
  cargo build --release -p taskhost
  build_plugins
  local host=target/release/taskhost
  local text; text=$(mktemp); trap 'rm -f "$text"' RETURN
  python3 -c 'import json,sys; print(json.dumps({"text": open("LICENSE").read(), "top": 5}))' >"$text" 2>/dev/null \
    || printf '{"text": "the quick brown fox jumps over the lazy dog the end", "top": 3}' >"$text"

  say "uppercase: a text transform"
  echo "$ echo -n 'hello from the sandbox' | taskhost run uppercase.wasm"
  echo -n 'hello from the sandbox' | $host run "$PLUGIN_DIR/uppercase.wasm"; echo

  say "word-count: typed JSON in and out, over the Apache-2.0 LICENSE text"
  echo "$ taskhost run word_count.wasm --input <LICENSE as JSON> --stats"
  $host run "$PLUGIN_DIR/word_count.wasm" --input "$text" --stats; echo

  say "hello-task: logging and task info (logs go to stderr)"
  echo "$ echo -n Ada | taskhost run hello_task.wasm"
  echo -n Ada | $host run "$PLUGIN_DIR/hello_task.wasm"; echo
  echo "$ echo -n Ada | taskhost run hello_task_raw.wasm   # same plugin, plain wit-bindgen, no SDK"
  echo -n Ada | $host run "$PLUGIN_DIR/hello_task_raw.wasm"; echo

  say "hostile plugins end in their class; the host is unharmed"
  local case
  for case in "spin||--fuel 100000000" "spin||--timeout 300ms --fuel 1000000000000" \
              "alloc_forever||--memory 32MiB" "recurse||" "panic|order 7|" \
              "huge_output|50000000|" "log_flood|log|" "read_file|/etc/passwd|" \
              "open_socket|127.0.0.1:22|" "wrong_world||" "missing_import||"; do
    IFS='|' read -r name input flags <<<"$case"
    printf '%-15s %-40s -> ' "$name" "$flags"
    # shellcheck disable=SC2086
    echo -n "$input" | $host run "$PLUGIN_DIR/$name.wasm" $flags 2>&1 >/dev/null | grep '^error: ' | cut -c1-120 || true
  done
  say "done: see README.md for the SDK, limits and benchmarks"
}

run_tests() {
  setup
  say "running the whole test suite"
  cargo test --release
}

bench() {
  setup
  cargo bench -p taskhost --bench sandbox
}

case "${1:-}" in
  demo) demo ;;
  test) run_tests ;;
  bench) bench ;;
  setup) setup ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
