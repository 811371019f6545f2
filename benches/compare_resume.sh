#!/usr/bin/env bash
# Measures what resumption and HTTP/2 cost an OVA upload into an
# `ova-import` ticket of `ovaio serve`, in one run:
#   cut      the package uploaded through a TCP proxy that cuts CUTS
#            connections (evenly spread over the package), each resumed by
#            curl as the README shows: HEAD for Upload-Offset, then
#            `curl -T pkg -C offset`; against the same upload through the
#            same proxy uncut. Target: cut/uncut >= 0.9.
#   client   the same cut and uncut uploads with `ovaio upload`, which
#            resumes by itself (HEAD, then the rest). Target >= 0.9.
#   h2       `curl --http2 -T pkg` against `curl --http1.1 -T pkg`, direct.
#            Target: h2/http1.1 >= 0.9.
# Best of REPS for each; every target is checked with `qemu-img compare`.
#
# Environment:
#   SIZE_MIB   virtual disk size in MiB (default 1024; about half is data,
#              so the package, a qcow2 in an OVA, is about half of it)
#   CUTS       connections cut in the cut upload (default 10)
#   REPS       timed runs of each, best kept (default 3)
#   PARTS      which comparisons: "cut client h2" (default), or some of them
#   OVAIO      ovaio binary (default target/release/ovaio, rebuilt)
#   BENCH_DIR  parent of the work directory (default /tmp/ovaio-bench)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=${SIZE_MIB:-1024}
CUTS=${CUTS:-10}
REPS=${REPS:-3}
PARTS=${PARTS:-cut client h2}
OVAIO=${OVAIO:-$ROOT/target/release/ovaio}
BENCH_DIR=${BENCH_DIR:-/tmp/ovaio-bench}

die() { echo "compare_resume: $*" >&2; exit 1; }
[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 8 ]] || die "SIZE_MIB must be an integer >= 8"
[[ $CUTS =~ ^[0-9]+$ ]] || die "CUTS must be an integer"
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || die "REPS must be an integer >= 1"
for t in qemu-img curl python3 awk; do
  command -v "$t" >/dev/null 2>&1 || die "$t is required"
done
curl -V | grep -q '^Features:.*HTTP2' || die "curl without HTTP/2"
if [ "$OVAIO" = "$ROOT/target/release/ovaio" ]; then
  (cd "$ROOT" && cargo build --release --quiet)
fi

mkdir -p "$BENCH_DIR"
WORK=$(mktemp -d "$BENCH_DIR/resume.XXXXXX")
SERVER_PID=""
PROXY_PID=""
PROXY=""
cleanup() {
  # Proxies are started in the subshells that run the uploads.
  [ -f "$WORK/proxies" ] && xargs -r kill <"$WORK/proxies" 2>/dev/null || true
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  # The server's log of the last run (pauses and resumes with times).
  cp "$WORK/serve.log" "$BENCH_DIR/resume-last-serve.log" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The source: half random data in 1 MiB runs, half holes; a qcow2 in an OVA.
SRC=$WORK/src.raw
python3 - "$SRC" "$SIZE_MIB" <<'EOF'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    f.truncate(mib << 20)
    for i in range(0, mib, 2):
        f.seek(i << 20)
        f.write(os.urandom(1 << 20))
EOF
qemu-img convert -f raw -O qcow2 "$SRC" "$WORK/src.qcow2"
"$OVAIO" export --name vm --disk disk1.qcow2="$WORK/src.qcow2" -o "$WORK/bench.ova" -q
PKG=$WORK/bench.ova
LEN=$(stat -c %s "$PKG")
echo "package: $LEN bytes (disk of $SIZE_MIB MiB)"

mkdir -p "$WORK/state" "$WORK/storage"
"$OVAIO" serve --listen 127.0.0.1:0 --state-dir "$WORK/state" --root "$WORK/storage" \
  >"$WORK/serve.out" 2>"$WORK/serve.log" &
SERVER_PID=$!
for _ in $(seq 300); do grep -q ready "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
PORT=$(sed -n 's|^ovaio serve: data API https://127.0.0.1:\([0-9]*\)/.*|\1|p' "$WORK/serve.out")
[ -n "$PORT" ] || die "server did not start: $(cat "$WORK/serve.log")"
SOCK=$WORK/state/control.sock
CERT=$WORK/state/tls/server.crt

# A relay that cuts the first CUTS connections carrying more than
# LEN/(CUTS+1) bytes each, at that many bytes; the rest pass.
cat >"$WORK/proxy.py" <<'EOF'
import socket, sys, threading
target, length, cuts = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
at = length // (cuts + 1) if cuts else 0
lock = threading.Lock()
state = {"left": cuts}
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0)); ls.listen(64)
print(ls.getsockname()[1], flush=True)
def pipe(a, b, cut):
    n = 0
    try:
        while True:
            d = a.recv(1 << 20)
            if not d:
                break
            if cut:
                with lock:
                    go = state["left"] > 0 and n + len(d) >= at
                    if go:
                        state["left"] -= 1
                if go:
                    b.sendall(d[: at - n]); break
            n += len(d)
            b.sendall(d)
    except OSError:
        pass
    # Shut down and closed (a socket only shut down would let the
    # client's writes go on into a full window and hang it).
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
        s.close()
def serve(c):
    s = socket.create_connection(("127.0.0.1", target))
    threading.Thread(target=pipe, args=(s, c, False), daemon=True).start()
    pipe(c, s, True)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
# Starts a proxy cutting $1 connections; sets PROXY (its port).
start_proxy() {
  [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null || true
  rm -f "$WORK/proxy.out"
  python3 "$WORK/proxy.py" "$PORT" "$LEN" "$1" >"$WORK/proxy.out" &
  PROXY_PID=$!
  echo "$PROXY_PID" >>"$WORK/proxies"
  for _ in $(seq 100); do [ -s "$WORK/proxy.out" ] && break; sleep 0.1; done
  PROXY=$(head -1 "$WORK/proxy.out")
}

ticket() { # ID [CUTS-ENABLED]
  rm -f "$WORK/storage/$1.qcow2"
  curl -sf --unix-socket "$SOCK" -X PUT -H 'content-type: application/json' \
    --data "{\"uuid\":\"$1\",\"kind\":\"ova-import\",\"ops\":[\"write\"],\"timeout\":600,\"ova\":{\"disks\":[{\"href\":\"disk1.qcow2\",\"url\":\"file://$WORK/storage/$1.qcow2\",\"format\":\"qcow2\"}]}}" \
    "http://localhost/tickets/$1" >/dev/null
}
state() { # the ticket's own state (the first "state" in its JSON; disks follow)
  curl -sf --unix-socket "$SOCK" "http://localhost/tickets/$1" | grep -o '"state":"[a-z]*"' | head -1 | cut -d'"' -f4
}
now() { date +%s.%N; }

# Uploads through PORT_ (the proxy or the server), resuming after cuts;
# prints the seconds it took and the number of PUTs.
upload() { # ID PORT CURL-ARGS...
  local id=$1 port=$2; shift 2
  local url="https://127.0.0.1:$port/images/$id" puts=0 t0 off code
  t0=$(now)
  while :; do
    off=$(curl -sS --cacert "$CERT" -I "$url" | tr -d '\r' | awk -F': ' 'tolower($1)=="upload-offset"{print $2}')
    puts=$((puts + 1))
    code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$CERT" "$@" -T "$PKG" -C "${off:-0}" "$url" 2>/dev/null || true)
    [ "$code" = 200 ] && break
    # 409: the server has not yet seen the last cut; wait until it has.
    if [ "$code" = 409 ]; then
      for _ in $(seq 500); do [ "$(state "$id")" = active ] || break; sleep 0.01; done
    fi
    [ $puts -lt $((CUTS + 30)) ] || die "no end after $puts PUTs (last answer $code)"
  done
  [ "$(state "$id")" = succeeded ] || die "upload $id: $(state "$id")"
  echo "$(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}') $puts"
}

# The same with `ovaio upload`, which resumes by itself; prints the
# seconds and the connections the proxy saw.
upload_client() { # ID PORT
  local id=$1 port=$2 t0
  t0=$(now)
  "$OVAIO" upload "$PKG" "https://127.0.0.1:$port/images/$id" --cacert "$CERT" -q ||
    die "ovaio upload $id failed"
  [ "$(state "$id")" = succeeded ] || die "upload $id: $(state "$id")"
  echo "$(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}') -"
}

best() { sort -n | head -1; }
run() { # NAME proxy|direct CUTS CURL-ARGS...: best seconds over REPS
  # (NAME client-*: `ovaio upload` instead of curl)
  local name=$1 via=$2 cuts=$3; shift 3
  local i out port secs=()
  for i in $(seq "$REPS"); do
    port=$PORT
    if [ "$via" = proxy ]; then
      start_proxy "$cuts"
      port=$PROXY
    fi
    ticket "$name-$i"
    case $name in
      client-*) out=$(upload_client "$name-$i" "$port") ;;
      *) out=$(upload "$name-$i" "$port" "$@") ;;
    esac
    qemu-img compare -q -f raw -F qcow2 "$SRC" "$WORK/storage/$name-$i.qcow2" || die "$name-$i differs"
    rm -f "$WORK/storage/$name-$i.qcow2"
    echo "  $name run $i: ${out% *} s, ${out#* } PUTs" >&2
    secs+=("${out% *}")
  done
  printf '%s\n' "${secs[@]}" | best
}

mbs() { awk -v l="$LEN" -v s="$1" 'BEGIN{printf "%.0f", l/s/1e6}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b/a}'; }

printf '\n%-28s %8s %8s\n' "upload of $((LEN >> 20)) MiB" "s" "MB/s"
if [[ " $PARTS " == *" cut "* ]]; then
  echo "uncut and cut uploads through the proxy (HTTP/1.1), $CUTS cuts:" >&2
  UNCUT=$(run uncut proxy 0 --http1.1)
  CUT=$(run cut proxy "$CUTS" --http1.1)
  printf '%-28s %8s %8s\n' "uncut (proxy, http/1.1)" "$UNCUT" "$(mbs "$UNCUT")"
  printf '%-28s %8s %8s\n' "$CUTS cuts (proxy, http/1.1)" "$CUT" "$(mbs "$CUT")"
  printf 'cut/uncut throughput: %s (target >= 0.9)\n' "$(ratio "$CUT" "$UNCUT")"
fi
if [[ " $PARTS " == *" client "* ]]; then
  echo "ovaio upload through the proxy, uncut and with $CUTS cuts:" >&2
  CUNCUT=$(run client-uncut proxy 0)
  CCUT=$(run client-cut proxy "$CUTS")
  printf '%-28s %8s %8s\n' "ovaio upload uncut (proxy)" "$CUNCUT" "$(mbs "$CUNCUT")"
  printf '%-28s %8s %8s\n' "ovaio upload, $CUTS cuts" "$CCUT" "$(mbs "$CCUT")"
  printf 'ovaio upload cut/uncut throughput: %s (target >= 0.9)\n' "$(ratio "$CCUT" "$CUNCUT")"
fi
if [[ " $PARTS " == *" h2 "* ]]; then
  echo "HTTP/2 and HTTP/1.1 uploads, direct:" >&2
  H1=$(run h1 direct 0 --http1.1)
  H2=$(run h2 direct 0 --http2)
  printf '%-28s %8s %8s\n' "http/1.1 (direct)" "$H1" "$(mbs "$H1")"
  printf '%-28s %8s %8s\n' "h2 (direct)" "$H2" "$(mbs "$H2")"
  printf 'h2/http1.1 throughput: %s (target >= 0.9)\n' "$(ratio "$H2" "$H1")"
fi
