#!/usr/bin/env bash
# Property-based testing of both APIs against their OpenAPI specs
# (api/openapi/daemon.yaml, api/openapi/vm.yaml) with schemathesis, plus the
# Rust API tests with the schema check made mandatory.
#
#   bash tests/api_fuzz.sh
#
# Installs what it needs (a virtualenv with pinned schemathesis, cached
# under ~/.cache/strato), builds strato and the tiny test guests, starts in
# a temporary directory a daemon with one instance (the `kbd` guest, which
# resets on Ctrl-Alt-Del, so stops are quick), an unstarted `strato vm` and
# a running one (the `ticker` guest), and bridges each unix socket to
# 127.0.0.1 with a small proxy, since schemathesis needs a base URL. Every
# run is bounded (examples per operation and wall time). Fails on any 5xx,
# non-conforming response, accepted invalid input, or a server that died.
# Only loopback traffic; everything is cleaned up on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SCHEMATHESIS_VERSION=4.32.5
SPEC_VALIDATOR_VERSION=0.7.2
MAX_EXAMPLES=${STRATO_FUZZ_EXAMPLES:-25}
MAX_TIME=${STRATO_FUZZ_SECONDS:-60}
SEED=${STRATO_FUZZ_SEED:-$RANDOM}

log() { printf '\n[api-fuzz] %s\n' "$*"; }

# --- tools -----------------------------------------------------------------
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    log "installing python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
fi
VENV=${STRATO_FUZZ_VENV:-$HOME/.cache/strato/api-fuzz-venv}
STAMP="schemathesis==$SCHEMATHESIS_VERSION openapi-spec-validator==$SPEC_VALIDATOR_VERSION"
if [ "$(cat "$VENV/.strato-stamp" 2>/dev/null)" != "$STAMP" ]; then
    log "installing $STAMP into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check $STAMP
    echo "$STAMP" > "$VENV/.strato-stamp"
fi
PY=$VENV/bin/python
ST=$VENV/bin/schemathesis

log "validating the OpenAPI documents"
"$PY" tests/api_schema.py --spec-only api/openapi/daemon.yaml api/openapi/vm.yaml

log "Rust API tests with the schema check required"
STRATO_SCHEMA_CHECK=require STRATO_SCHEMA_PYTHON="$PY" \
    cargo test --test daemon --test vm_api

# --- servers ---------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/strato-fuzz.XXXXXX")
PIDS=()
cleanup() {
    local rc=$?
    set +e
    disown -a 2>/dev/null
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
    # The daemon's VMM processes run in their own sessions.
    [ -f "$WORK/helper.py" ] && "$PY" "$WORK/helper.py" kill "$WORK/"
    if [ $rc -ne 0 ]; then
        for f in "$WORK"/daemon.log "$WORK"/vm-*.log; do
            [ -f "$f" ] && { echo "--- $f"; tail -n 30 "$f"; }
        done
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT

log "building strato and the test guests"
cargo build --quiet -p api
STRATO=$ROOT/target/debug/strato
bash tests/guests/build.sh "$WORK/guests" >/dev/null

cat > "$WORK/helper.py" <<'EOF'
"""proxy UNIX PORTFILE: TCP on 127.0.0.1 (port written to PORTFILE) to UNIX.
req UNIX METHOD PATH [BODY]: one request; prints the status, body to stderr.
kill DIR: SIGKILLs every process whose command line mentions DIR."""
import asyncio, http.client, os, signal, socket, sys

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()

async def proxy(unix_path, port_file):
    async def handle(r, w):
        try:
            ur, uw = await asyncio.open_unix_connection(unix_path)
        except OSError:
            w.close()
            return
        await asyncio.gather(pipe(r, uw), pipe(ur, w))
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    async with server:
        await server.serve_forever()

class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=60)
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self.path)

def req(unix_path, method, path, body=None):
    c = UnixConnection(unix_path)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    sys.stderr.write(r.read().decode(errors="replace"))
    print(r.status)

def kill_under(d):
    me = os.getpid()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(pid) != me and d in cmd:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass

if sys.argv[1] == "proxy":
    asyncio.run(proxy(sys.argv[2], sys.argv[3]))
elif sys.argv[1] == "req":
    try:
        req(*sys.argv[2:])
    except OSError as e:
        sys.stderr.write(str(e))
        print(0)
elif sys.argv[1] == "kill":
    kill_under(sys.argv[2])
EOF

wait_file() {
    for _ in $(seq 1 500); do [ -e "$1" ] && return 0; sleep 0.02; done
    echo "timed out waiting for $1" >&2
    return 1
}

# bridge SOCK NAME: starts a proxy, prints its port.
bridge() {
    "$PY" "$WORK/helper.py" proxy "$1" "$WORK/$2.port" >/dev/null &
    PIDS+=($!)
    wait_file "$WORK/$2.port"
    cat "$WORK/$2.port"
}

# req SOCK METHOD PATH [BODY]: prints the status; the body goes to stderr.
req() {
    "$PY" "$WORK/helper.py" req "$@" 2> "$WORK/last-body"
}

"$STRATO" --log-level info serve --api-sock "$WORK/daemon.sock" --state-dir "$WORK/state" \
    --stop-timeout-ms 300 2> "$WORK/daemon.log" &
DAEMON=$!
PIDS+=($DAEMON)
wait_file "$WORK/daemon.sock"
status=$(req "$WORK/daemon.sock" POST /v1/instances \
    "{\"id\":\"web-1\",\"memory_mib\":32,\"kernel\":\"$WORK/guests/kbd.elf\",\"cmdline\":\"timeout=3600000\"}")
[ "$status" = 201 ] || { echo "creating web-1: $status $(cat "$WORK/last-body")" >&2; exit 1; }

"$STRATO" vm --api-sock "$WORK/vm-new.sock" --id fuzz-new 2> "$WORK/vm-new.log" &
VM_NEW=$!
PIDS+=($VM_NEW)
cat > "$WORK/ticker.json" <<EOF
{"boot-source": {"kernel_image_path": "$WORK/guests/ticker.elf", "boot_args": "period=1000"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 32}}
EOF
"$STRATO" vm --api-sock "$WORK/vm-run.sock" --id fuzz-run --config-file "$WORK/ticker.json" \
    --console-log "$WORK/ticker.log" 2> "$WORK/vm-run.log" &
VM_RUN=$!
PIDS+=($VM_RUN)
wait_file "$WORK/vm-new.sock"
wait_file "$WORK/vm-run.sock"

DAEMON_PORT=$(bridge "$WORK/daemon.sock" daemon)
VM_NEW_PORT=$(bridge "$WORK/vm-new.sock" vm-new)
VM_RUN_PORT=$(bridge "$WORK/vm-run.sock" vm-run)

# --- fuzzing ---------------------------------------------------------------
# Left out: positive_data_acceptance (valid-looking bodies name files and
# taps that do not exist here, and are rightly refused), and for the
# Firecracker-compatible API unsupported_method and allow_header_conformance
# (it answers 400 to unknown methods, as Firecracker does). PUT /logger and
# PUT /metrics are not sent at all: they create the file they name, and a
# generated name could be anywhere on this machine (the Rust tests and the
# api_bodies fuzz target cover their bodies).
COMMON=(--max-examples "$MAX_EXAMPLES" --max-time "$MAX_TIME" --seed "$SEED"
        --request-timeout 60 --workers 1 --suppress-health-check all --checks all
        --generation-database none)
SKIP=positive_data_acceptance,ignored_auth,object_level_authorization
export NO_COLOR=1

failed=0
cd "$WORK" # schemathesis and hypothesis keep caches in the working directory
log "schemathesis: daemon API (seed $SEED)"
"$ST" run "$ROOT/api/openapi/daemon.yaml" --url "http://127.0.0.1:$DAEMON_PORT" "${COMMON[@]}" \
    --exclude-checks "$SKIP" || failed=1
for vm in new run; do
    port_var=VM_${vm^^}_PORT
    log "schemathesis: per-instance API, $vm VM (seed $SEED)"
    "$ST" run "$ROOT/api/openapi/vm.yaml" --url "http://127.0.0.1:${!port_var}" "${COMMON[@]}" \
        --exclude-checks "$SKIP,unsupported_method,allow_header_conformance" \
        --exclude-operation-id putLogger --exclude-operation-id putMetrics \
        || failed=1
done

# --- nothing crashed --------------------------------------------------------
log "servers still up"
for pid in $DAEMON $VM_NEW $VM_RUN; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "process $pid died during fuzzing" >&2
        failed=1
    fi
done
[ "$(req "$WORK/daemon.sock" GET /v1/instances)" = 200 ] || { echo "daemon not answering" >&2; failed=1; }
[ "$(req "$WORK/vm-run.sock" GET /)" = 200 ] || { echo "running VM not answering" >&2; failed=1; }
if grep -q panicked "$WORK"/daemon.log "$WORK"/vm-*.log "$WORK"/state/*/vmm.log 2>/dev/null; then
    echo "a panic was logged" >&2
    failed=1
fi
if [ $failed -ne 0 ]; then
    log "API fuzzing FAILED (seed $SEED; rerun with STRATO_FUZZ_SEED=$SEED)"
    exit 1
fi
log "API fuzzing passed"
