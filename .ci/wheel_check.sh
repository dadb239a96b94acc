#!/usr/bin/env bash
# CI: the package as users get it. Build the wheel (from a copy of the checkout: no stale build/ files),
# install it, not editable, into a fresh venv with the extras tools, serve and eval, and run the
# installed `specfuse` from a folder where only the installed package can be imported: help texts,
# one answer from the default ensemble, one served chat completion and the served page. Runs after
# `make test`, whose run has put the default members' weights into the cache (~/.cache/specfuse or
# $SPECFUSE_CACHE_DIR): offline. Its files (about 2.7 GB, mostly torch and triton) go to the
# checkout's disk, in .wheel-check/ (ignored by git, removed at the end), not to a /tmp that may be
# a small tmpfs; pip's own temporary files go there too.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
REPO_PY="$REPO/.venv/bin/python"   # builds the wheel (`make setup` made it)
BASE_PY="${PYTHON:-python3}"       # the fresh venv's interpreter
mkdir -p "$REPO/.wheel-check"
WORK="$(mktemp -d "$REPO/.wheel-check/run.XXXXXX")"
mkdir -p "$WORK/tmp"
export TMPDIR="$WORK/tmp"
SERVER_PID=""

cleanup() {
	if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
		kill "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
	fi
	rm -rf "$WORK"
	rmdir "$REPO/.wheel-check" 2>/dev/null || true
}
trap cleanup EXIT

ok() { echo "wheel check: ok: $*"; }
fail() {
	echo "wheel check: FAILED: $*" >&2
	echo "wheel check: disk free where its files go: $(df -Ph "$WORK" | awk 'NR == 2 {print $4}')" >&2
	exit 1
}

# 1. The wheel, built in an isolated environment from the checkout's files (tracked and untracked, not ignored).
"$REPO_PY" -m build --version >/dev/null 2>&1 || "$REPO_PY" -m pip install -qq --disable-pip-version-check build
mkdir -p "$WORK/src" "$WORK/dist" "$WORK/run"
(cd "$REPO" && git ls-files -z -c -o --exclude-standard | while IFS= read -r -d '' f; do
	[ -f "$f" ] && printf '%s\0' "$f"
done | xargs -0 cp --parents -t "$WORK/src")
"$REPO_PY" -m build --wheel --outdir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 || {
	cat "$WORK/build.log"
	fail "python -m build --wheel"
}
WHEELS=("$WORK"/dist/specfuse-*.whl)
[ "${#WHEELS[@]}" -eq 1 ] && [ -f "${WHEELS[0]}" ] || fail "expected one wheel in $WORK/dist"
WHEEL="${WHEELS[0]}"
ok "built $(basename "$WHEEL")"

"$REPO_PY" - "$WHEEL" <<'EOF' || fail "wheel contents"
import sys
import zipfile

names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = [
    "specfuse_core/__init__.py", "specfuse_core/py.typed",
    "specfuse_integrations/cli.py", "specfuse_integrations/py.typed", "specfuse_integrations/server/page.html",
    "specfuse_eval/py.typed",
]
missing = [n for n in need if n not in names]
if not any(n.startswith("specfuse_eval/") and n.endswith(".py") for n in names):
    missing.append("specfuse_eval/*.py")
if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
    missing.append("*.dist-info/licenses/LICENSE")
strays = sorted({n.split("/")[0] for n in names if n.split("/")[0] in ("tests", "benchmarks", "notebooks", "docs")})
if missing or strays:
    sys.exit(f"missing: {missing}; should not be there: {strays}")
EOF
ok "wheel holds specfuse_core, specfuse_integrations (server/page.html), specfuse_eval, py.typed files, LICENSE"

# 2. A fresh venv: the CPU torch wheel first (from the local pip cache; a plain `torch` would pull CUDA), then the wheel.
"$BASE_PY" -m venv "$WORK/venv"
VPIP=("$WORK/venv/bin/python" -m pip --disable-pip-version-check)
"${VPIP[@]}" install -qq torch==2.13.0 || fail "pip install torch==2.13.0"
"${VPIP[@]}" install -qq "$WHEEL[tools,serve,eval]" || fail "pip install the wheel with [tools,serve,eval]"
ok "installed the wheel with [tools,serve,eval] into a fresh venv ($(du -sh "$WORK/venv" | cut -f1))"

cd "$WORK/run"  # no package sources here or in sys.path: only the installed package can be imported
SPECFUSE="$WORK/venv/bin/specfuse"
where="$("$WORK/venv/bin/python" -c 'import specfuse_core, specfuse_integrations; print(specfuse_core.__file__, specfuse_integrations.__file__)')"
case "$where" in
"$WORK/venv/"*" $WORK/venv/"*) ok "specfuse_core and specfuse_integrations import from the venv" ;;
*) fail "specfuse imports from outside the fresh venv: $where" ;;
esac
version="$("$WORK/venv/bin/python" -c 'import specfuse_core; print(specfuse_core.__version__)')"
wheel_version="$(basename "$WHEEL" | cut -d- -f2)"
[ "$version" = "$wheel_version" ] || fail "specfuse_core.__version__ $version differs from the wheel's $wheel_version"
ok "specfuse_core.__version__ is $version, as the wheel says"

# 3. The command line.
"$SPECFUSE" --help >"$WORK/help.txt" || fail "specfuse --help"
ok "specfuse --help"
"$SPECFUSE" eval --help >"$WORK/eval-help.txt" || fail "specfuse eval --help"
ok "specfuse eval --help"
answer="$("$SPECFUSE" ask "What is 2+2?" --max-tokens 16 --temperature 0 2>"$WORK/ask.log")" || {
	cat "$WORK/ask.log" >&2
	fail "specfuse ask"
}
[ -n "${answer//[[:space:]]/}" ] || fail "specfuse ask printed no answer"
ok "specfuse ask answered: $(printf '%s' "$answer" | tr '\n' ' ' | cut -c1-80)"

# 4. `specfuse serve` (default ensemble) on a free loopback port: one chat completion and the page.
PORT="$("$WORK/venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
env -u SPECFUSE_SERVER_API_KEY "$SPECFUSE" serve --host 127.0.0.1 --port "$PORT" >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
"$WORK/venv/bin/python" - "http://127.0.0.1:$PORT" "$SERVER_PID" <<'EOF' || {
import json
import os
import sys
import time
import urllib.error
import urllib.request

base, pid = sys.argv[1], int(sys.argv[2])


def get(path, timeout=10):
    with urllib.request.urlopen(base + path, timeout=timeout) as response:
        return response.status, response.read().decode()


deadline = time.monotonic() + 600
while True:  # /health: 503 while the members load, 200 once ready
    try:
        if get("/health")[0] == 200:
            break
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("the server exited while loading")
    if time.monotonic() > deadline:
        sys.exit("the server was not ready after 600 s")
    time.sleep(1)
print("wheel check: ok: specfuse serve is ready (/health 200)")

body = {"model": "specfuse", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 8, "temperature": 0}
request = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=300) as response:
    status, reply = response.status, json.load(response)
content = reply["choices"][0]["message"]["content"]
if status != 200 or not isinstance(content, str) or not content.strip():
    sys.exit(f"/v1/chat/completions answered {status}: {reply}")
print(f"wheel check: ok: POST /v1/chat/completions 200: {content.strip()[:80]!r}")

status, page = get("/")
if status != 200 or "specfuse: who wrote what" not in page:
    sys.exit(f"GET / answered {status} without the page's title")
print("wheel check: ok: GET / 200, the who-wrote-what page")
EOF
	cat "$WORK/serve.log" >&2
	fail "specfuse serve"
}
kill "$SERVER_PID"
status=0
wait "$SERVER_PID" || status=$?
SERVER_PID=""
[ "$status" -eq 0 ] || {
	cat "$WORK/serve.log" >&2
	fail "specfuse serve exited with $status after SIGTERM"
}
ok "specfuse serve stopped cleanly on SIGTERM"
echo "wheel check: all checks passed"
