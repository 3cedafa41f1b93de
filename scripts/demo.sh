#!/usr/bin/env bash
# The main job in one command: a static Go web server that believes it listens on
# TCP port 8080 runs under redirect on a Unix socket, and curl fetches a page
# through that socket file. Sets up what it needs first (Debian 12, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null

dir=$(mktemp -d /tmp/redirect-demo.XXXXXX)
sock="$dir/http.sock"
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT

echo "\$ redirect -r in,port=8080,path=$sock -- go-http-server -addr :8080 &"
.venv/bin/redirect -v -r "in,port=8080,path=$sock" -- fixtures/static-bins/out/go-http-server -addr :8080 &
server=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done

echo "\$ curl --unix-socket $sock http://app/"
curl -sS --unix-socket "$sock" http://app/
echo "\$ grep -c ':1F90 ' /proc/net/tcp /proc/net/tcp6   # sockets on port 8080"
grep -c ':1F90 ' /proc/net/tcp /proc/net/tcp6 || true
echo "\$ ls -l $sock"
ls -l "$sock"
