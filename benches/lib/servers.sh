# shellcheck shell=bash
# shellcheck disable=SC2034 # the arrays are filled here for the scripts to read
# Sourced by the comparison scripts that start servers: `ovaio serve` and
# ovirt-imageio daemons on loopback, each on an ephemeral port, given their
# tickets through their control sockets. Several of each may run at once;
# each has a name and a directory of its own.
#
# The caller defines `die MESSAGE` and sets, before starting anything,
#   WORK           scratch directory (control answers go to WORK/control.out)
#   VENV           the venv holding the ovirt-imageio daemon (start_imageio)
#   START_TIMEOUT  seconds a server may take to be ready (default 30)
# For a server named N the start functions fill
#   PID[N]   its process id          PORT[N]  its data API port (TLS)
#   SOCK[N]  its control socket      CA[N]    the certificate its clients trust
#   SLOG[N]  its log file
# and stop_servers (or stop_server N) stops it again; a script's EXIT trap
# calls stop_pid on every PID left.

declare -gA PID PORT SOCK CA SLOG
START_TIMEOUT=${START_TIMEOUT:-30}

# stop_pid PID: SIGTERM, then up to 10 s for the exit, then SIGKILL.
stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}

# stop_server NAME: stops one server and forgets it.
stop_server() {
  [ -n "${PID[$1]-}" ] || return 0
  stop_pid "${PID[$1]}"
  unset "PID[$1]"
}

# stop_servers: stops every server started.
stop_servers() {
  local s
  for s in "${!PID[@]}"; do stop_server "$s"; done
}

# finish_work FIND-EXPRESSION...: the end of a script (its EXIT trap):
# stops every server, then removes WORK, or with KEEP=1 keeps it less the
# large files the expression names (e.g. \( -name '*.img' \)).
finish_work() {
  stop_servers
  if [ "${KEEP:-0}" = 1 ]; then
    find "$WORK" "$@" -delete
    echo "work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}

# wait_for FILE PATTERN PID NAME [LOG]: until FILE holds PATTERN; dies when
# PID exits first or after START_TIMEOUT, showing the end of LOG.
wait_for() {
  local file=$1 pat=$2 pid=$3 name=$4 log=${5-} i
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    grep -q "$pat" "$file" 2>/dev/null && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      [ -n "$log" ] && tail -20 "$log" >&2
      die "$name exited during start-up"
    fi
    sleep 0.1
  done
  [ -n "$log" ] && tail -20 "$log" >&2
  die "$name did not start within ${START_TIMEOUT}s"
}

# start_ovaio NAME BINARY DIR [SERVE-ARGS...]: BINARY serve on an
# ephemeral loopback port, state in DIR/state, storage root DIR/root, the
# remaining arguments passed on (e.g. --data-socket, --config). Its
# generated certificate and key stay in the state directory across
# restarts. Start-up lines in DIR/stdout, log in DIR/stderr.
start_ovaio() {
  local name=$1 bin=$2 dir=$3
  shift 3
  mkdir -p "$dir/state" "$dir/root"
  : >"$dir/stdout"
  "$bin" serve --listen 127.0.0.1:0 --state-dir "$dir/state" --root "$dir/root" "$@" \
    </dev/null >"$dir/stdout" 2>>"$dir/stderr" &
  PID[$name]=$!
  SLOG[$name]=$dir/stderr
  wait_for "$dir/stdout" 'ready' "${PID[$name]}" "$name serve" "$dir/stderr"
  PORT[$name]=$(sed -n 's|^ovaio serve: data API https://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' "$dir/stdout")
  SOCK[$name]=$(sed -n 's|^ovaio serve: control API unix:||p' "$dir/stdout")
  if [ -z "${PORT[$name]}" ] || [ ! -S "${SOCK[$name]}" ]; then
    die "cannot parse $name serve's start-up lines"
  fi
  CA[$name]=$dir/state/tls/server.crt
  [ -f "${CA[$name]}" ] || die "$name serve made no certificate in $dir/state/tls"
}

# start_imageio NAME DIR KEY CERT [--local] [--http-ca FILE] [--trust FILE]:
# an ovirt-imageio daemon from VENV with only DIR/conf/conf.d/99-local.conf
# in its conf dir (the package's defaults are in
# ovirt_imageio/_internal/config.py): TLS with KEY and CERT, the remote
# service on an ephemeral loopback port (read from its log), the control
# service on the Unix socket DIR/run/control.sock, as the current user,
# logging to DIR/daemon.log at the package's INFO level.
#   --local         also its [local] service, the data API on the Unix
#                   socket DIR/run/local.sock (advertised to clients as
#                   unix_socket); off by default
#   --http-ca FILE  [backend_http] ca_file: the CA bundle it trusts for
#                   https:// ticket urls, when it proxies to another daemon
#   --trust FILE    what its clients are to trust (CA[NAME]); default CERT
start_imageio() {
  local name=$1 dir=$2 key=$3 cert=$4 local_on=false http_ca='' trust
  trust=$cert
  shift 4
  while [ $# -gt 0 ]; do
    case $1 in
      --local) local_on=true; shift ;;
      --http-ca) http_ca=$2; shift 2 ;;
      --trust) trust=$2; shift 2 ;;
      *) die "start_imageio: unknown option $1" ;;
    esac
  done
  mkdir -p "$dir/conf/conf.d" "$dir/run"
  {
    cat <<EOF
[daemon]
run_dir = $dir/run
drop_privileges = false
systemd_enable = false

[tls]
enable = true
key_file = $key
cert_file = $cert
ca_file =

[remote]
host = 127.0.0.1
port = 0

[local]
enable = $local_on
socket = $dir/run/local.sock

[control]
transport = unix
socket = $dir/run/control.sock

[profile]
filename = $dir/run/profile

[handler_logfile]
class = logging.FileHandler
args = ('$dir/daemon.log',)
kwargs = {}
EOF
    if [ -n "$http_ca" ]; then
      printf '\n[backend_http]\nca_file = %s\n' "$http_ca"
    fi
  } >"$dir/conf/conf.d/99-local.conf"
  : >"$dir/daemon.log"
  "$VENV/bin/ovirt-imageio" --conf-dir "$dir/conf" </dev/null >>"$dir/stderr" 2>&1 &
  PID[$name]=$!
  SLOG[$name]=$dir/daemon.log
  wait_for "$dir/daemon.log" 'Ready for requests' "${PID[$name]}" "ovirt-imageio ($name)" "$dir/stderr"
  PORT[$name]=$(sed -n "s/.*remote\.service listening on ('127\.0\.0\.1', \([0-9]*\)).*/\1/p" "$dir/daemon.log" | tail -1)
  SOCK[$name]=$dir/run/control.sock
  if [ -z "${PORT[$name]}" ] || [ ! -S "${SOCK[$name]}" ]; then
    die "cannot find ovirt-imageio's port in $dir/daemon.log"
  fi
  CA[$name]=$trust
}

# control SERVER METHOD PATH [JSON]: a control API request; fails unless
# 2xx, printing the answer. The answer's body is left in WORK/control.out.
control() {
  local srv=$1 method=$2 path=$3 body=${4-} code
  local args=(-sS --unix-socket "${SOCK[$srv]}" -X "$method" -o "$WORK/control.out" -w '%{http_code}')
  if [ -n "$body" ]; then
    args+=(-H 'content-type: application/json' --data-binary "$body")
  fi
  code=$(curl "${args[@]}" "http://localhost$path") || code=000
  case $code in
    2??) ;;
    *)
      echo "  $srv: $method $path -> $code $(head -c 300 "$WORK/control.out" 2>/dev/null)" >&2
      return 1
      ;;
  esac
}

# status_kib PID FIELD: a field of /proc/PID/status in KiB (VmRSS, VmHWM).
status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
