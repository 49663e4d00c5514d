#!/usr/bin/env bash
# Real services for the test suites, without Docker: PostgreSQL, Redis and a
# single-node Kafka (KRaft) broker assembled from Maven Central jars.
#
#   eval "$(scripts/services.sh up [--dir DIR] [--kafka-port auto|N] [--strict])"
#   scripts/services.sh status      [--dir DIR]
#   scripts/services.sh down        [--dir DIR]
#   scripts/services.sh kafka-stop  [--dir DIR] [--kill]   # stop only the broker
#   scripts/services.sh kafka-start [--dir DIR]            # same ports, same data
#   scripts/services.sh chromium                           # install/print /usr/bin/chromium
#
# `up` prints ONLY eval-able `export NAME=value` lines on stdout (also written to
# DIR/env.sh); all progress and warnings go to stderr. A service that cannot be
# had (no package, no network, ...) is reported loudly on stderr and its variable
# is left out, so suites that need it skip themselves; exit status is still 0
# unless --strict (or SERVICES_STRICT=1) is given.
#
# DIR (default: <checkout>/.services) records what this script started: pid
# files and a `started` list. `down` stops only those processes, by pid; a
# PostgreSQL or Redis that was already running before `up` is left alone.
#
# Environment read:
#   KAFKA_BROKERS        if set, no broker is started; the value is passed through.
#   KAFKA_VERSION        exact Kafka version (e.g. 3.9.1); default: newest cached
#                        3.9.x, else the newest 3.9.x that resolves on Maven Central.
#   KAFKA_START_TIMEOUT  seconds to wait for the broker (default 120).
#   KAFKA_JAVA_OPTS      extra JVM options for the broker.
#   JAVA_HOME            java to use (else `java` on PATH).
#   XDG_CACHE_HOME       Kafka jars cache: ${XDG_CACHE_HOME:-$HOME/.cache}/task-manager/kafka-<v>/libs
#   XDG_STATE_HOME       shared bookkeeping: ${XDG_STATE_HOME:-$HOME/.local/state}/task-manager
#   CI                   CI=true allows `sudo -n` to install missing packages.
#   SERVICES_STRICT      1: `up` exits 1 when any service is missing.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd -P)
KAFKA_ASSETS="$SCRIPT_DIR/kafka"

PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
DATABASE_URL_VALUE="postgres://postgres@${PG_HOST}:${PG_PORT}/postgres"
REDIS_URL_VALUE="redis://${REDIS_HOST}:${REDIS_PORT}"

: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/task-manager"
STATE_ROOT="${XDG_STATE_HOME:-$HOME/.local/state}/task-manager"
KAFKA_SERIES="3.9"
KAFKA_RANGE="[3.9.0,3.9.999]"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"

log() { printf '[services] %s\n' "$*" >&2; }
warn() { # warn HEADLINE [DETAIL...]: loud, on stderr
  {
    printf '\n[services] ********************************************************\n'
    printf '[services] WARNING: %s\n' "$1"
    shift
    if [ $# -gt 0 ]; then printf '%s\n' "$@" | sed 's/^/[services]   | /'; fi
    printf '[services] ********************************************************\n\n'
  } >&2
}
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [ "$(id -u)" -eq 0 ]; }
sudo_ok() { have sudo && sudo -n true 2>/dev/null; }

# Run a command as root: directly if we are root, else through passwordless sudo.
as_root() {
  if is_root; then "$@"
  elif sudo_ok; then sudo -n "$@"
  else return 126
  fi
}
# Installing packages: only as root, or in CI with passwordless sudo.
may_install() { is_root || { [ "${CI:-}" = true ] && sudo_ok; }; }

apt_install() { # apt_install LOGFILE PACKAGE...
  local logf=$1; shift
  log "installing $* with apt-get (log: $logf)"
  if ! { unlocked as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
         unlocked as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } \
       </dev/null >"$logf" 2>&1; then
    warn "apt-get install $* failed; last lines of $logf:" "$(tail -n 15 "$logf")"
    return 1
  fi
}

tail_file() { # tail_file FILE [N] [FROM_BYTE]
  local f=$1 n=${2:-40} from=${3:-0}
  [ -f "$f" ] || { echo "(no $f)"; return 0; }
  tail -c "+$((from + 1))" "$f" | tail -n "$n"
}

# --- process helpers ------------------------------------------------------------

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_cmdline() { tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" || true; }
read_pid() { if [ -s "$1" ]; then tr -dc '0-9' <"$1"; fi; }

# stop_pid PID NAME [GRACE_SECONDS]: SIGTERM, wait, then SIGKILL. Only ever by pid.
stop_pid() {
  local pid=$1 name=$2 grace=${3:-20} i
  pid_alive "$pid" || return 0
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    pid_alive "$pid" || { log "$name stopped"; return 0; }
    sleep 0.1
  done
  log "$name did not stop within ${grace}s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do pid_alive "$pid" || return 0; sleep 0.1; done
  warn "$name (pid $pid) is still alive after SIGKILL"
  return 1
}

# with_lock LOCKFILE TIMEOUT CMD...: run CMD holding an exclusive flock.
LOCK_FDS=()
with_lock() {
  local lockfile=$1 timeout=$2 fd rc=0; shift 2
  mkdir -p "$(dirname "$lockfile")"
  if ! have flock; then "$@"; return; fi
  exec {fd}>"$lockfile"
  if ! flock -w "$timeout" "$fd"; then
    exec {fd}>&-
    warn "could not take the lock $lockfile within ${timeout}s"
    return 1
  fi
  LOCK_FDS+=("$fd")
  "$@" || rc=$?
  unset 'LOCK_FDS[-1]'
  exec {fd}>&-
  return "$rc"
}
# unlocked CMD...: run CMD (a command or function) in a subshell with the lock fds
# closed. Everything that may leave a daemon behind goes through this, or the
# daemon would inherit the descriptor and hold the lock for its whole life.
unlocked() {
  (
    for fd in "${LOCK_FDS[@]}"; do exec {fd}>&-; done
    if [ "$(type -t "$1")" = file ]; then exec "$@"; else "$@"; fi
  )
}

# --- ports ------------------------------------------------------------------------

port_open() { # something accepts connections on 127.0.0.1:PORT
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}
port_in_use() {
  if have ss; then
    [ -n "$(ss -Htan "sport = :$1" 2>/dev/null)" ] || port_open "$1"
  else
    port_open "$1"
  fi
}
# A random free port below the kernel's ephemeral range (so outgoing connections
# never sit on it); with two concurrent runs a clash is unlikely, and a bind
# failure is retried with new ports anyway.
pick_port() {
  local lo=10000 hi=32767 eph p i
  if [ -r /proc/sys/net/ipv4/ip_local_port_range ]; then
    read -r eph _ </proc/sys/net/ipv4/ip_local_port_range
    if [ "$eph" -gt 12000 ]; then hi=$((eph - 1)); fi
  fi
  for ((i = 0; i < 200; i++)); do
    p=$(( ((RANDOM << 15) | RANDOM) % (hi - lo + 1) + lo ))
    if [ "$p" != "${1:-}" ] && ! port_in_use "$p"; then echo "$p"; return 0; fi
  done
  return 1
}

# --- shared-service bookkeeping --------------------------------------------------
# PostgreSQL and Redis are machine-wide. A DIR whose `up` started one lists it in
# DIR/started. Every DIR that used them registers in $STATE_ROOT/users, so that
# `down` of the starter hands the service over to another live DIR instead of
# pulling it from under it.

user_key() { printf '%s' "$1" | cksum | cut -d' ' -f1; }
register_user() { mkdir -p "$STATE_ROOT/users"; printf '%s\n' "$DIR" >"$STATE_ROOT/users/$(user_key "$DIR")"; }
unregister_user() { rm -f "$STATE_ROOT/users/$(user_key "$DIR")"; }
other_live_user() {
  local f d
  for f in "$STATE_ROOT"/users/*; do
    [ -f "$f" ] || continue
    d=$(cat "$f")
    if [ "$d" = "$DIR" ]; then continue; fi
    if [ -f "$d/started" ] && [ -f "$d/env.sh" ]; then echo "$d"; return 0; fi
    rm -f "$f" # stale: its DIR was deleted or brought down
  done
  return 1
}
started_has() { [ -f "$DIR/started" ] && grep -qx "$1" "$DIR/started"; }
started_add() { started_has "$1" || printf '%s\n' "$1" >>"$DIR/started"; }
started_del() {
  [ -f "$DIR/started" ] || return 0
  grep -vx "$1" "$DIR/started" >"$DIR/started.tmp" || true
  mv -f "$DIR/started.tmp" "$DIR/started"
}

# --- PostgreSQL -------------------------------------------------------------------

pg_ready() {
  if have pg_isready; then pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2 2>/dev/null
  else port_open "$PG_PORT"
  fi
}
pg_version() {
  [ -d /etc/postgresql ] || return 0
  find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n 1
}
pg_ctl_cluster() { # pg_ctl_cluster start|stop|reload
  local ver; ver=$(pg_version)
  [ -n "$ver" ] || return 1
  if is_root || sudo_ok; then
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main "$1"
  else
    pg_ctlcluster --skip-systemctl-redirect "$ver" main "$1" # works for the cluster owner
  fi
}
ensure_postgres() {
  local i installed=0 logf="$DIR/postgresql-start.log"
  if pg_ready; then log "PostgreSQL already answers on $PG_HOST:$PG_PORT"; return 0; fi
  if [ -z "$(pg_version)" ] || ! have pg_ctlcluster; then
    if ! may_install; then
      warn "PostgreSQL is not installed and we may not install it (not root; CI=true with passwordless sudo also allows it)."
      return 1
    fi
    apt_install "$DIR/apt-postgresql.log" postgresql || return 1
    installed=1
  fi
  if ! pg_ready; then
    log "starting PostgreSQL $(pg_version)"
    if ! unlocked pg_ctl_cluster start </dev/null >"$logf" 2>&1; then
      pg_ready || { warn "could not start PostgreSQL:" "$(tail -n 15 "$logf")"; return 1; }
    fi
    started_add postgresql
  fi
  if [ "$installed" = 1 ]; then
    local hba; hba="/etc/postgresql/$(pg_version)/main/pg_hba.conf"
    if ! as_root grep -q '^host all postgres 127.0.0.1/32 trust' "$hba"; then
      log "configuring trust auth for postgres@127.0.0.1 in $hba"
      as_root sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
      unlocked pg_ctl_cluster reload </dev/null >>"$logf" 2>&1 || true
    fi
  fi
  for ((i = 0; i < 600; i++)); do
    if pg_ready; then break; fi
    sleep 0.1
  done
  pg_ready || { warn "PostgreSQL did not become ready on $PG_HOST:$PG_PORT within 60s"; return 1; }
  if have psql && ! psql -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>"$DIR/psql-check.log"; then
    warn "PostgreSQL answers but user postgres cannot log in without a password on $PG_HOST:$PG_PORT:" "$(cat "$DIR/psql-check.log")" \
         "fix: put 'host all postgres 127.0.0.1/32 trust' first in /etc/postgresql/$(pg_version)/main/pg_hba.conf and reload"
    return 1
  fi
  log "PostgreSQL ready"
}

# --- Redis -------------------------------------------------------------------------

redis_ready() {
  if have redis-cli; then [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
  else port_open "$REDIS_PORT"
  fi
}
ensure_redis() {
  local i
  if redis_ready; then log "Redis already answers on $REDIS_HOST:$REDIS_PORT"; return 0; fi
  if ! have redis-server; then
    if ! may_install; then
      warn "redis-server is not installed and we may not install it (not root; CI=true with passwordless sudo also allows it)."
      return 1
    fi
    apt_install "$DIR/apt-redis.log" redis-server || return 1
    # Debian's postinst may have started its own instance already.
    if redis_ready; then log "Redis ready (started by the package)"; return 0; fi
  fi
  log "starting redis-server on $REDIS_HOST:$REDIS_PORT"
  rm -f "$DIR/redis.pid"
  if ! unlocked redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" \
      --save "" --appendonly no --dir "$DIR" --pidfile "$DIR/redis.pid" \
      --logfile "$DIR/redis.log" </dev/null >"$DIR/redis-start.log" 2>&1; then
    warn "redis-server failed to start:" "$(cat "$DIR/redis-start.log")" "$(tail_file "$DIR/redis.log" 10)"
    return 1
  fi
  started_add redis
  for ((i = 0; i < 200; i++)); do
    if redis_ready; then log "Redis ready"; return 0; fi
    sleep 0.1
  done
  warn "Redis did not answer within 20s:" "$(tail_file "$DIR/redis.log" 10)"
  return 1
}

# --- Kafka ---------------------------------------------------------------------------

KAFKA_LIBS=""
KAFKA_RESOLVED_VERSION=""

java_bin() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then echo "$JAVA_HOME/bin/java"
  elif have java; then command -v java
  else return 1
  fi
}

cached_kafka_libs() { # newest complete cache for $KAFKA_VERSION or the 3.9 series
  local d
  if [ -n "${KAFKA_VERSION:-}" ]; then
    d="$CACHE_ROOT/kafka-$KAFKA_VERSION/libs"
    [ -d "$d" ] && echo "$d"
    return 0
  fi
  for d in "$CACHE_ROOT/kafka-$KAFKA_SERIES".*/libs; do
    [ -d "$d" ] && echo "$d"
  done | sort -V | tail -n 1
}

download_kafka_libs() { # runs under the cache lock
  local cached tmp spec jar v
  cached=$(cached_kafka_libs)
  if [ -n "$cached" ]; then log "Kafka jars already cached by a concurrent run: $cached"; KAFKA_LIBS=$cached; return 0; fi
  have mvn || { warn "mvn (Maven) is not installed: cannot assemble Kafka from Maven Central."; return 1; }
  rm -rf "$CACHE_ROOT"/.kafka-download.* # left by an interrupted run (we hold the lock)
  tmp=$(mktemp -d "$CACHE_ROOT/.kafka-download.XXXXXX")
  cp "$KAFKA_ASSETS/pom.xml" "$tmp/pom.xml"
  spec=${KAFKA_VERSION:-$KAFKA_RANGE}
  log "downloading Kafka $spec from Maven Central (first run on this machine; usually 10-60 s) ..."
  if ! (cd "$tmp" && mvn -B -q -Dstyle.color=never org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies -DincludeScope=runtime \
        "-Dkafka.version=$spec" "-DoutputDirectory=$tmp/libs") </dev/null >"$tmp/mvn.log" 2>&1; then
    warn "Maven could not assemble Kafka $spec (is Maven Central reachable?). Kafka tests will be skipped." \
         "mvn said:" "$(sed -e 's/\x1b\[[0-9;]*m//g' "$tmp/mvn.log" | grep -v -e '^\[ERROR\] *$' -e 'Re-run Maven' -e 'see the full stack' -e 'read the following articles' -e '\[Help 1\] http' -e '^\s*$' | tail -n 20)"
    rm -rf "$tmp"
    return 1
  fi
  jar=$(find "$tmp/libs" -maxdepth 1 -name 'kafka_2.13-*.jar' ! -name '*-test*' | head -n 1)
  if [ -z "$jar" ]; then warn "Maven finished but no kafka_2.13 jar was copied"; rm -rf "$tmp"; return 1; fi
  v=${jar##*/kafka_2.13-}; v=${v%.jar}
  mkdir -p "$CACHE_ROOT/kafka-$v"
  if [ ! -d "$CACHE_ROOT/kafka-$v/libs" ]; then
    mv -T "$tmp/libs" "$CACHE_ROOT/kafka-$v/libs" # atomic rename: a cache dir is always complete
  fi
  rm -rf "$tmp"
  KAFKA_LIBS="$CACHE_ROOT/kafka-$v/libs"
  log "Kafka $v cached in $KAFKA_LIBS ($(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars)"
}

ensure_kafka_libs() {
  local cached
  mkdir -p "$CACHE_ROOT"
  cached=$(cached_kafka_libs)
  if [ -n "$cached" ]; then
    KAFKA_LIBS=$cached
    log "Kafka already cached: $KAFKA_LIBS"
  else
    with_lock "$CACHE_ROOT/kafka-download.lock" 1800 download_kafka_libs || return 1
  fi
  KAFKA_RESOLVED_VERSION=$(basename "$(dirname "$KAFKA_LIBS")"); KAFKA_RESOLVED_VERSION=${KAFKA_RESOLVED_VERSION#kafka-}
}

kafka_write_config() { # kafka_write_config PORT CONTROLLER_PORT
  local k="$DIR/kafka" port=$1 cport=$2
  cat >"$k/server.properties" <<EOF
# Written by scripts/services.sh: single-node KRaft broker for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$k/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
log.cleaner.dedupe.buffer.size=2097152
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
  printf '%s %s\n' "$port" "$cport" >"$k/ports"
}

kafka_java() { # kafka_java MAIN_CLASS ARGS...
  local java; java=$(java_bin) || return 1
  # shellcheck disable=SC2086 # KAFKA_JAVA_OPTS is a list of options
  "$java" -Xms256m -Xmx512m -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    "-Dlog4j.configuration=file:$DIR/kafka/log4j.properties" "-Dkafka.logs.dir=$DIR/kafka" \
    ${KAFKA_JAVA_OPTS:-} -cp "$(cat "$DIR/kafka/libs-path")/*" "$@"
}

kafka_format() {
  local k="$DIR/kafka" id
  # A Kafka cluster id is a base64url-encoded random 16-byte UUID (what `StorageTool random-uuid` prints).
  # An id starting with "-" would be read by StorageTool as an option (about 1 in 64 draws): draw again.
  id=-
  while [ "${id#-}" != "$id" ]; do id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'); done
  rm -rf "$k/data"
  if ! kafka_java kafka.tools.StorageTool format -t "$id" -c "$k/server.properties" </dev/null >"$k/format.log" 2>&1; then
    warn "kafka.tools.StorageTool format failed:" "$(tail -n 20 "$k/format.log")"
    return 1
  fi
}

kafka_pid() { # pid of this DIR's broker if it is running, else empty
  local pid; pid=$(read_pid "$DIR/kafka/kafka.pid")
  if pid_alive "$pid" && [[ "$(pid_cmdline "$pid")" == *"kafka.Kafka $DIR/kafka/server.properties"* ]]; then
    echo "$pid"
  fi
}
kafka_port() { [ -f "$DIR/kafka/ports" ] && cut -d' ' -f1 "$DIR/kafka/ports"; }

# Start the broker of DIR from its existing config and data; wait until ready.
kafka_launch() {
  local k="$DIR/kafka" port offset pid="" i deadline java
  port=$(kafka_port)
  java=$(java_bin) || { warn "java not found (set JAVA_HOME or put java on PATH)"; return 1; }
  [ -n "$java" ] || return 1
  touch "$k/kafka.log"
  offset=$(wc -c <"$k/kafka.log")
  printf '\n===== %s services.sh: starting broker on 127.0.0.1:%s =====\n' "$(date '+%F %T')" "$port" >>"$k/kafka.log"
  rm -f "$k/kafka.pid"
  log "starting Kafka $(cat "$k/version" 2>/dev/null) on 127.0.0.1:$port (controller $(cut -d' ' -f2 "$k/ports")); log: $k/kafka.log"
  # New session (setsid) so the broker survives the terminal/process group that ran `up`.
  # The wrapper writes its own pid, then execs java: the pid file holds java's pid.
  # shellcheck disable=SC2016,SC2086
  unlocked setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$k/kafka.pid" \
    "$java" -Xms256m -Xmx512m -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    "-Dlog4j.configuration=file:$k/log4j.properties" "-Dkafka.logs.dir=$k" \
    ${KAFKA_JAVA_OPTS:-} -cp "$(cat "$k/libs-path")/*" kafka.Kafka "$k/server.properties" \
    </dev/null >>"$k/kafka.log" 2>&1 &
  for ((i = 0; i < 100; i++)); do
    pid=$(read_pid "$k/kafka.pid"); [ -n "$pid" ] && break; sleep 0.05
  done
  deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while :; do
    if ! pid_alive "$pid"; then
      warn "Kafka exited during startup. Last lines of $k/kafka.log:" "$(tail_file "$k/kafka.log" 40 "$offset")"
      rm -f "$k/kafka.pid"
      return 1
    fi
    if tail -c "+$((offset + 1))" "$k/kafka.log" | grep -q 'Kafka Server started' && port_open "$port"; then
      log "Kafka ready on 127.0.0.1:$port (pid $pid, ${SECONDS}s since script start)"
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      warn "Kafka did not become ready within ${KAFKA_START_TIMEOUT}s. Last lines of $k/kafka.log:" \
           "$(tail_file "$k/kafka.log" 40 "$offset")"
      stop_pid "$pid" kafka 10 || true
      rm -f "$k/kafka.pid"
      return 1
    fi
    sleep 0.25
  done
}

KAFKA_BROKERS_VALUE=""
ensure_kafka() { # ensure_kafka auto|N
  local want=$1 k="$DIR/kafka" pid port cport attempt attempts=1
  if [ -n "${KAFKA_BROKERS:-}" ]; then
    log "KAFKA_BROKERS is set ($KAFKA_BROKERS): reusing it, not starting a broker"
    KAFKA_BROKERS_VALUE=$KAFKA_BROKERS
    return 0
  fi
  pid=$(kafka_pid)
  if [ -n "$pid" ]; then
    port=$(kafka_port)
    log "Kafka of $DIR already running on 127.0.0.1:$port (pid $pid)"
    if [ "$want" != auto ] && [ "$want" != "$port" ]; then
      warn "--kafka-port $want ignored: this DIR's broker already runs on $port (run 'down' first)"
    fi
    KAFKA_BROKERS_VALUE="127.0.0.1:$port"
    return 0
  fi
  java_bin >/dev/null || { warn "java not found (set JAVA_HOME or put java on PATH): no Kafka."; return 1; }
  ensure_kafka_libs || return 1
  # A fresh broker every `up`: old data of this DIR is discarded.
  rm -rf "$k"
  mkdir -p "$k"
  cp "$KAFKA_ASSETS/log4j.properties" "$k/log4j.properties"
  printf '%s\n' "$KAFKA_LIBS" >"$k/libs-path"
  printf '%s\n' "$KAFKA_RESOLVED_VERSION" >"$k/version"
  if [ "$want" = auto ]; then attempts=3; fi
  for ((attempt = 1; attempt <= attempts; attempt++)); do
    if [ "$want" = auto ]; then
      port=$(pick_port) || { warn "no free port found for Kafka"; return 1; }
    else
      port=$want
      if port_in_use "$port"; then warn "--kafka-port $port: port already in use on 127.0.0.1"; return 1; fi
    fi
    cport=$(pick_port "$port") || { warn "no free port found for the Kafka controller"; return 1; }
    kafka_write_config "$port" "$cport"
    kafka_format || return 1
    if kafka_launch; then
      started_add kafka
      KAFKA_BROKERS_VALUE="127.0.0.1:$port"
      return 0
    fi
    if [ "$attempt" -lt "$attempts" ] && grep -q 'Address already in use' "$k/kafka.log"; then
      log "port clash; retrying with other ports"
      continue
    fi
    return 1
  done
  return 1
}

kafka_stop() { # kafka_stop [--kill]
  local pid
  pid=$(kafka_pid)
  if [ -z "$pid" ]; then
    log "Kafka of $DIR is not running"
  elif [ "${1:-}" = --kill ]; then
    log "killing Kafka (pid $pid) with SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while pid_alive "$pid"; do sleep 0.1; done
  else
    stop_pid "$pid" kafka 20
  fi
  rm -f "$DIR/kafka/kafka.pid"
}

# --- argument parsing ------------------------------------------------------------

DIR=""
KAFKA_PORT_OPT=auto
STRICT=${SERVICES_STRICT:-0}
KILL_OPT=""
parse_args() {
  while [ $# -gt 0 ]; do
    case $1 in
      --dir) [ $# -ge 2 ] || die "--dir needs a value"; DIR=$2; shift 2 ;;
      --dir=*) DIR=${1#--dir=}; shift ;;
      --kafka-port) [ $# -ge 2 ] || die "--kafka-port needs a value"; KAFKA_PORT_OPT=$2; shift 2 ;;
      --kafka-port=*) KAFKA_PORT_OPT=${1#--kafka-port=}; shift ;;
      --strict) STRICT=1; shift ;;
      --kill) KILL_OPT=--kill; shift ;;
      -h|--help) usage; exit 0 ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
  done
  case $KAFKA_PORT_OPT in
    auto) ;;
    *[!0-9]*|'') die "--kafka-port must be auto or a port number" ;;
  esac
  DIR=${DIR:-$ROOT/.services}
}
use_dir() { mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd -P); }
existing_dir() { [ -d "$DIR" ] || die "no such services dir: $DIR"; DIR=$(cd "$DIR" && pwd -P); }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; }

# --- commands ----------------------------------------------------------------------

cmd_up() {
  local out=() missing=()
  use_dir
  touch "$DIR/started"
  log "services dir: $DIR"
  shared_up() {
    if ensure_postgres; then out+=("DATABASE_URL=$DATABASE_URL_VALUE"); else missing+=(PostgreSQL); fi
    if ensure_redis; then out+=("REDIS_URL=$REDIS_URL_VALUE"); else missing+=(Redis); fi
    register_user
  }
  with_lock "$STATE_ROOT/shared-services.lock" 900 shared_up || missing+=("PostgreSQL/Redis (lock)")
  if ensure_kafka "$KAFKA_PORT_OPT"; then out+=("KAFKA_BROKERS=$KAFKA_BROKERS_VALUE"); else missing+=(Kafka); fi

  local line lines=()
  for line in "${out[@]}"; do lines+=("export ${line%%=*}=$(printf '%q' "${line#*=}")"); done
  if [ ${#lines[@]} -gt 0 ]; then
    printf '%s\n' "${lines[@]}" >"$DIR/env.sh"
    printf '%s\n' "${lines[@]}"
  else
    : >"$DIR/env.sh"
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    warn "NOT available: ${missing[*]} (see the warnings above). The matching variables were left out."
    [ "$STRICT" = 1 ] && return 1
  fi
  log "done in ${SECONDS}s; env also in $DIR/env.sh"
}

cmd_down() {
  local pid other
  [ -d "$DIR" ] || { log "nothing to do: $DIR does not exist"; return 0; }
  existing_dir
  if [ -f "$DIR/kafka/kafka.pid" ]; then kafka_stop; fi
  started_del kafka
  shared_down() {
    unregister_user
    if started_has redis; then
      if other=$(other_live_user); then
        log "Redis was started by this DIR but $other still uses it: handing it over"
        mv -f "$DIR/redis.pid" "$other/redis.pid" 2>/dev/null || true
        printf 'redis\n' >>"$other/started"
      else
        pid=$(read_pid "$DIR/redis.pid")
        if pid_alive "$pid" && [[ "$(pid_cmdline "$pid")" == *redis-server* ]]; then
          stop_pid "$pid" redis-server 20 || true
        else
          log "Redis started by this DIR is no longer running"
        fi
      fi
      rm -f "$DIR/redis.pid"
      started_del redis
    fi
    if started_has postgresql; then
      if other=$(other_live_user); then
        log "PostgreSQL was started by this DIR but $other still uses it: handing it over"
        printf 'postgresql\n' >>"$other/started"
      else
        log "stopping PostgreSQL $(pg_version) (started by this DIR)"
        unlocked pg_ctl_cluster stop </dev/null >>"$DIR/postgresql-start.log" 2>&1 ||
          warn "could not stop PostgreSQL: $(tail -n 5 "$DIR/postgresql-start.log")"
      fi
      started_del postgresql
    fi
  }
  with_lock "$STATE_ROOT/shared-services.lock" 900 shared_down ||
    warn "PostgreSQL/Redis bookkeeping skipped (lock busy); nothing of theirs was stopped"
  rm -f "$DIR/env.sh" "$DIR/started"
  log "down: done ($DIR)"
}

cmd_status() {
  local pid port
  echo "services dir: $DIR"
  if pg_ready; then echo "postgresql: up ($PG_HOST:$PG_PORT)"; else echo "postgresql: DOWN"; fi
  if redis_ready; then echo "redis:      up ($REDIS_HOST:$REDIS_PORT)"; else echo "redis:      DOWN"; fi
  if [ -d "$DIR" ]; then
    DIR=$(cd "$DIR" && pwd -P)
    pid=$(kafka_pid); port=$(kafka_port || true)
    if [ -n "$pid" ]; then
      if port_open "$port"; then
        echo "kafka:      up (127.0.0.1:$port, pid $pid, version $(cat "$DIR/kafka/version" 2>/dev/null))"
      else
        echo "kafka:      STARTING or UNRESPONSIVE (pid $pid, port $port)"
      fi
    elif [ -n "$port" ]; then echo "kafka:      stopped (ports $(cat "$DIR/kafka/ports"); kafka-start restarts it)"
    else echo "kafka:      not started by this DIR"
    fi
    echo "started by this DIR: $(tr '\n' ' ' <"$DIR/started" 2>/dev/null)"
  else
    echo "kafka:      no DIR"
  fi
  [ -n "${KAFKA_BROKERS:-}" ] && echo "KAFKA_BROKERS (environment): $KAFKA_BROKERS"
  return 0
}

cmd_kafka_start() {
  local pid port
  existing_dir
  [ -f "$DIR/kafka/server.properties" ] || die "no broker configured in $DIR (run 'up' first)"
  pid=$(kafka_pid)
  port=$(kafka_port)
  if [ -n "$pid" ]; then
    log "Kafka already running (pid $pid)"
  else
    if [ ! -d "$(cat "$DIR/kafka/libs-path")" ]; then
      KAFKA_VERSION=$(cat "$DIR/kafka/version") ensure_kafka_libs || die "Kafka jars missing"
      printf '%s\n' "$KAFKA_LIBS" >"$DIR/kafka/libs-path"
    fi
    kafka_launch || exit 1
    started_add kafka
  fi
  echo "export KAFKA_BROKERS=127.0.0.1:$port"
}

cmd_kafka_stop() {
  existing_dir
  kafka_stop "$KILL_OPT"
}

cmd_chromium() {
  if [ ! -x /usr/bin/chromium ]; then
    if is_root || sudo_ok; then
      log "installing chromium with apt-get"
      if ! { unlocked as_root apt-get update -qq && unlocked as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } </dev/null >&2; then
        warn "apt-get install chromium failed"
        return 1
      fi
    else
      warn "/usr/bin/chromium is missing and we are not root: run 'apt-get install chromium' as root"
      return 1
    fi
  fi
  echo /usr/bin/chromium
}

main() {
  local cmd=${1:-}
  [ $# -gt 0 ] && shift
  case $cmd in
    up) parse_args "$@"; cmd_up ;;
    down) parse_args "$@"; cmd_down ;;
    status) parse_args "$@"; cmd_status ;;
    kafka-start) parse_args "$@"; cmd_kafka_start ;;
    kafka-stop) parse_args "$@"; cmd_kafka_stop ;;
    chromium) cmd_chromium ;;
    -h|--help|help) usage ;;
    *) usage; exit 2 ;;
  esac
}

main "$@"
