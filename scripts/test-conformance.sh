#!/usr/bin/env bash
# Conformance: runs schemathesis (pinned, from PyPI, in a venv under .build/) against
# `target/debug/flyjobs emulator` with the vendored spec (emulator/spec/machines-openapi.json).
# Path parameters are pinned to a live app and live machines (one per mutating operation, so
# that a destroy does not take the machine the reads use). Fails on any server error, any
# response that breaks its schema, and any status neither the spec nor
# emulator/spec/extra-statuses.json (statuses Fly documents, each with its reason) lists.
#
# Operations the emulator does not serve (volumes, secrets, secretkeys, certificates,
# ip_assignments, deploy_token, memory, ps, orgs, platform, tokens) answer 501 naming the route
# (emulator/tests/fidelity.rs checks that) and are left out here.
#
# Env: FLYJOBS_BIN (default target/debug/flyjobs, built if missing), CONFORMANCE_MAX_EXAMPLES
# (default 30 per operation and phase), CONFORMANCE_CHECKS and CONFORMANCE_PHASES (schemathesis
# lists; defaults below), CONFORMANCE_EMULATOR_FLAGS, CONFORMANCE_PYTHON, CONFORMANCE_REPORT (a
# file for schemathesis' full report).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

st_version=4.32.5
# Python 3.11's parser trips over hypothesis' lambda-source reading in schemathesis' coverage
# phase ("SystemError: AST constructor recursion depth mismatch", a CPython bug); a newer
# Python does not. CONFORMANCE_PYTHON picks one; else the first Python 3.12+ found (on PATH or
# installed by pyenv), else python3.
python=${CONFORMANCE_PYTHON:-}
if [ -z "$python" ]; then
  for p in python3.13 python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3 python3; do
    if "$p" -c 'import venv' >/dev/null 2>&1; then python=$p; break; fi
  done
fi
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
phases=${CONFORMANCE_PHASES:-examples,coverage,fuzzing,stateful}
if [ "$pyver" = 3.11 ] && [ -z "${CONFORMANCE_PHASES:-}" ]; then
  echo "conformance: only Python 3.11 found: skipping the coverage phase (CPython bug)" >&2
  phases=examples,fuzzing,stateful
fi
venv=.build/schemathesis-$st_version-py$pyver
if [ ! -x "$venv/bin/schemathesis" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$st_version"
fi
py="$venv/bin/python"

bin=${FLYJOBS_BIN:-target/debug/flyjobs}
if [ ! -x "$bin" ]; then
  cargo build -p flyjobs-cli --bins --locked
fi

work=$(mktemp -d)
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The emulator's flags (CONFORMANCE_EMULATOR_FLAGS overrides them, e.g. for an older binary).
# A throwaway token: in the environment only (never on a command line or in the output).
FLYJOBS_CONFORMANCE_TOKEN=conformance-$("$py" -c 'import secrets; print(secrets.token_hex(12))')
export FLYJOBS_CONFORMANCE_TOKEN

read -r -a flags <<<"${CONFORMANCE_EMULATOR_FLAGS:---latency none --app conf-app --app conf-doomed}"
FLYJOBS_EMULATOR_TOKENS=$FLYJOBS_CONFORMANCE_TOKEN \
  "$bin" emulator --port "$port" --image "conf-image=$work" "${flags[@]}" \
  >"$work/emulator.log" 2>&1 &
emu=$!
cleanup() {
  kill -INT "$emu" 2>/dev/null || true
  wait "$emu" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Machines to pin, the patched spec and the schemathesis config.
"$py" - "$port" "$work" <<'PY'
import json, os, sys, time, urllib.request, urllib.error

port, work = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}/v1"
token = os.environ["FLYJOBS_CONFORMANCE_TOKEN"]

def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")

for _ in range(300):
    try:
        call("GET", "/apps/conf-app")
        break
    except urllib.error.HTTPError:
        break  # it answers
    except (urllib.error.URLError, ConnectionError):
        time.sleep(0.1)
else:
    sys.exit("conformance: the emulator did not come up")
for app in ("conf-app", "conf-doomed"):
    try:
        call("POST", "/apps", {"name": app, "org_slug": "personal"})
    except urllib.error.HTTPError as e:
        if e.code != 422:  # already there (--app)
            raise

def machine():
    # An image-only create would do (the image's CMD); the explicit exec keeps the script
    # usable against emulators older than image CMDs, for before/after counts.
    m = call("POST", "/apps/conf-app/machines",
             {"config": {"image": "conf-image", "init": {"exec": ["sleep", "3600"]},
                         "restart": {"policy": "always"}}})
    call("GET", f"/apps/conf-app/machines/{m['id']}/wait?state=started&timeout=30")
    return m["id"]

reads = machine()
call("PUT", f"/apps/conf-app/machines/{reads}/metadata", {"metadata": {"role": "reads"}})
own = {}  # operation -> its own machine
m = "/apps/{app_name}/machines/{machine_id}"
for op in [f"POST {m}", f"DELETE {m}", f"POST {m}/start", f"POST {m}/stop",
           f"POST {m}/suspend", f"POST {m}/restart", f"POST {m}/signal", f"POST {m}/cordon",
           f"POST {m}/uncordon", f"POST {m}/lease", f"DELETE {m}/lease", f"GET {m}/lease",
           f"POST {m}/exec", f"PUT {m}/metadata", f"PATCH {m}/metadata",
           f"POST {m}/metadata/{{key}}", f"DELETE {m}/metadata/{{key}}"]:
    own[op] = machine()

spec = json.load(open("emulator/spec/machines-openapi.json"))
extra = json.load(open("emulator/spec/extra-statuses.json"))
error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
names = [f"{meth.upper()} {path}" for path, ops in spec["paths"].items() for meth in ops
         if meth in ("get", "post", "put", "patch", "delete")]
for e in extra["statuses"]:
    ops = names if e["operations"] == "*" else e["operations"]
    for name in ops:
        meth, path = name.split(" ", 1)
        responses = spec["paths"][path][meth.lower()]["responses"]
        responses.setdefault(str(e["status"]), {
            "description": e["reason"],
            "content": {"application/json": {"schema": error_ref}},
        })
codes = spec["components"]["schemas"]["main.statusCode"]
codes["enum"] = codes.get("enum", []) + [c["value"] for c in extra["error_status_codes"]]
json.dump(spec, open(f"{work}/spec.json", "w"))

def toml_str(s):
    return json.dumps(s)

lines = [
    # Runs are independent: no state carried between them (and nothing written to the repo).
    "[cache]",
    "enabled = false",
    "[headers]",
    'Authorization = "Bearer ${FLYJOBS_CONFORMANCE_TOKEN}"',
    "[parameters]",
    f'"path.app_name" = {toml_str("conf-app")}',
    f'"path.machine_id" = {toml_str(reads)}',
    # wait blocks up to its timeout (60 s at most): one second keeps the run short.
    '"query.timeout" = 1',
    "[[operations]]",
    'include-name = "DELETE /apps/{app_name}"',
    'parameters = { "path.app_name" = "conf-doomed" }',
]
for op, mid in own.items():
    lines += ["[[operations]]", f"include-name = {toml_str(op)}",
              f'parameters = {{ "path.app_name" = "conf-app", "path.machine_id" = {toml_str(mid)} }}']
open(f"{work}/schemathesis.toml", "w").write("\n".join(lines) + "\n")
PY

not_served='/(volumes|secrets|secretkeys|certificates|ip_assignments|deploy_token|memory|ps)(/|$)|^/(orgs|platform|tokens)/'
set +e
"$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$work/spec.json" \
  --url "http://127.0.0.1:$port/v1" \
  --checks "${CONFORMANCE_CHECKS:-not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance}" \
  --exclude-path-regex "$not_served" \
  --phases "$phases" \
  --max-examples "${CONFORMANCE_MAX_EXAMPLES:-30}" \
  --request-timeout 70 --workers 2 --seed 10 --no-color \
  --output-truncate false >"$work/report.txt" 2>&1
status=$?
set -e
# The summary (cases, failures by check) goes to the log; the token is never in it.
sed -n '/SUMMARY/,$p' "$work/report.txt"
if [ -n "${CONFORMANCE_REPORT:-}" ]; then cp "$work/report.txt" "$CONFORMANCE_REPORT"; fi
if [ "$status" -ne 0 ]; then
  echo "conformance: schemathesis failed (exit $status); full report:" >&2
  cat "$work/report.txt" >&2
  echo "--- emulator log (tail)" >&2
  tail -n 50 "$work/emulator.log" >&2
  exit 1
fi
echo "conformance: ok"
