#!/usr/bin/env bash
# The README's first set-up command, run verbatim in a fresh clone of this checkout, as a new user would:
# it must install srd and start the daemon on its working default, and a picture dropped into ./inbox must
# come out twice as large in ./outbox. .ci/run runs this after the tests.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
picture="$repo/../shared/datasets/bench/Set5/butterfly.png"
work="$(mktemp -d)"
daemon=""
cleanup() {
    if [ -n "$daemon" ]; then kill -TERM -- "-$daemon" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

git clone -q "$repo" "$work/srd"
cd "$work/srd"
command=$(awk '/^```sh$/ {getline; print; exit}' README.md)
echo "+ $command"
setsid bash -c "$command" >"$work/daemon.log" 2>&1 &
daemon=$!

wait_for() {  # wait_for SECONDS DESCRIPTION TEST...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq "$limit"); do
        if "$@"; then return 0; fi
        if ! kill -0 "$daemon" 2>/dev/null; then
            echo "the quick start exited while waiting for $what:"; cat "$work/daemon.log"; exit 1
        fi
        sleep 1
    done
    echo "timed out after $limit s waiting for $what:"; tail -40 "$work/daemon.log"; exit 1
}
wait_for 900 "the daemon to be ready (install included)" grep -q daemon_ready "$work/daemon.log"
cp "$picture" inbox/
wait_for 120 "outbox/butterfly.png" test -s outbox/butterfly.png
size=$(python3 -c "import struct, sys; d = open(sys.argv[1], 'rb').read(24); print(*struct.unpack('>II', d[16:24]))" \
    outbox/butterfly.png)
kill -TERM -- "-$daemon"
wait "$daemon" || true
daemon=""
[ "$size" = "512 512" ] || { echo "outbox/butterfly.png is $size, expected 512 512"; exit 1; }
echo "quick start: butterfly.png 256x256 -> $size in ./outbox"
