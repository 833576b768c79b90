#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, no ZooKeeper) on 127.0.0.1, for development and CI.
#
#   deploy/kafka/kafka.sh fetch          fetch the pinned broker jars from Maven Central (once)
#   deploy/kafka/kafka.sh start [--keep] format a fresh data dir and start the broker, wait until it answers
#   deploy/kafka/kafka.sh stop           SIGTERM, then SIGKILL after KAFKA_STOP_TIMEOUT seconds
#   deploy/kafka/kafka.sh status         exit 0 when running, 3 when not
#   deploy/kafka/kafka.sh logs [-f]      the broker log (last lines, or follow)
#
# Environment:
#   KAFKA_BOOTSTRAP_SERVERS  an existing cluster: when it answers, `start` uses it and starts nothing
#   KAFKA_HOME               an unpacked Kafka installation whose libs/ is used instead of fetching
#   KAFKA_PORT               client listener port (9092); KAFKA_CONTROLLER_PORT (9093)
#   FC_KAFKA_DIR             data dir, pidfile, log (/tmp/falco-correlator-kafka)
#   FC_KAFKA_KEEP=1          keep the data of the previous run (same as `start --keep`)
#   KAFKA_HEAP_OPTS          JVM heap (-Xms256m -Xmx512m); KAFKA_JVM_OPTS: extra JVM options
#   KAFKA_START_TIMEOUT      seconds to wait for the broker to answer (90)
#   KAFKA_STOP_TIMEOUT       seconds between SIGTERM and SIGKILL (30)
#   PYTHON                   a Python with confluent-kafka for the readiness check (else python3)
#   XDG_CACHE_HOME           the jar cache lives in ${XDG_CACHE_HOME:-~/.cache}/falco-correlator
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly POM="${SCRIPT_DIR}/pom.xml"
readonly LOG4J_CONFIG="${SCRIPT_DIR}/log4j2.properties"

# The pom is the one place the version is pinned.
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "${POM}" | head -n 1)"
readonly KAFKA_VERSION
readonly CACHE_ROOT="${XDG_CACHE_HOME:-${HOME}/.cache}/falco-correlator"
readonly DIST_DIR="${CACHE_ROOT}/kafka-${KAFKA_VERSION}"

readonly PORT="${KAFKA_PORT:-9092}"
readonly CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
readonly BOOTSTRAP="127.0.0.1:${PORT}"
readonly RUN_DIR="${FC_KAFKA_DIR:-/tmp/falco-correlator-kafka}"
readonly PID_FILE="${RUN_DIR}/kafka.pid"
readonly LOG_FILE="${RUN_DIR}/kafka.log"
readonly PROPERTIES="${RUN_DIR}/server.properties"
readonly START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
readonly STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

libs_dir() {
    if [[ -n "${KAFKA_HOME:-}" && -d "${KAFKA_HOME}/libs" ]]; then
        printf '%s\n' "${KAFKA_HOME}/libs"
    else
        printf '%s\n' "${DIST_DIR}/libs"
    fi
}

cmd_fetch() {
    if [[ -n "${KAFKA_HOME:-}" && -d "${KAFKA_HOME}/libs" ]]; then
        log "using the Kafka installation at KAFKA_HOME=${KAFKA_HOME}"
        return 0
    fi
    if [[ -f "${DIST_DIR}/.complete" ]]; then
        log "Kafka ${KAFKA_VERSION} already fetched: ${DIST_DIR}/libs"
        return 0
    fi
    command -v mvn >/dev/null || die "mvn (Apache Maven) is needed to fetch Kafka; install it or set KAFKA_HOME"
    command -v java >/dev/null || die "java (17 or newer) is needed to run Kafka ${KAFKA_VERSION}"
    mkdir -p "${CACHE_ROOT}"
    # Download into a scratch dir and rename it into place, so an interrupted fetch leaves no
    # half-filled cache that a later run would take as complete.
    local scratch
    scratch="$(mktemp -d "${CACHE_ROOT}/.fetch-${KAFKA_VERSION}.XXXXXX")"
    log "fetching Kafka ${KAFKA_VERSION} broker jars from Maven Central into ${DIST_DIR}"
    if ! mvn -q -B -Dstyle.color=never -f "${POM}" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="${scratch}/libs" >"${scratch}/mvn.log" 2>&1; then
        cat "${scratch}/mvn.log" >&2
        rm -rf "${scratch}"
        die "mvn could not fetch the Kafka ${KAFKA_VERSION} jars (see the output above)"
    fi
    rm -f "${scratch}/mvn.log"
    touch "${scratch}/.complete"
    rm -rf "${DIST_DIR}"
    mv "${scratch}" "${DIST_DIR}"
    log "fetched $(find "${DIST_DIR}/libs" -name '*.jar' | wc -l) jars"
}

# The Python that runs the readiness check: one that can import confluent_kafka, if any.
find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python; do
        [[ -n "${candidate}" ]] || continue
        if command -v "${candidate}" >/dev/null && "${candidate}" -c 'import confluent_kafka' 2>/dev/null; then
            printf '%s\n' "${candidate}"
            return 0
        fi
    done
    return 1
}

# Does a Kafka cluster answer at $1 within $2 seconds? A metadata request through confluent-kafka
# when it is installed; otherwise a TCP connect to every listed host:port, which is weaker.
broker_answers() {
    local bootstrap="$1" timeout="$2" python
    if python="$(find_python)"; then
        "${python}" - "${bootstrap}" "${timeout}" 2>/dev/null <<'PY'
import sys

from confluent_kafka.admin import AdminClient

admin = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0})
try:
    admin.list_topics(timeout=float(sys.argv[2]))
except Exception:  # any failure means "not answering yet"
    sys.exit(1)
PY
        return
    fi
    local server host port servers
    IFS=',' read -r -a servers <<<"${bootstrap}"
    for server in "${servers[@]}"; do
        server="${server#*://}"
        host="${server%:*}"
        port="${server##*:}"
        if timeout "${timeout}" bash -c "exec 3<>/dev/tcp/${host}/${port}" 2>/dev/null; then
            return 0
        fi
    done
    return 1
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The pid of our running broker, or nothing. Checks the command line so that a pid reused by
# another process after a crash is never signalled.
running_pid() {
    [[ -f "${PID_FILE}" ]] || return 1
    local pid
    pid="$(cat "${PID_FILE}")"
    [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
    kill -0 "${pid}" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
    printf '%s\n' "${pid}"
}

log_tail() {
    if [[ -f "${LOG_FILE}" ]]; then
        log "last lines of ${LOG_FILE}:"
        tail -n 40 "${LOG_FILE}" >&2
    fi
}

write_properties() {
    cat >"${PROPERTIES}" <<EOF
# Written by deploy/kafka/kafka.sh: a single-node development broker. Not for production.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${CONTROLLER_PORT}
listeners=PLAINTEXT://127.0.0.1:${PORT},CONTROLLER://127.0.0.1:${CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://127.0.0.1:${PORT}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=${RUN_DIR}/data

num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true

offsets.topic.replication.factor=1
# Fewer internal partitions than the default 50: the first consumer group starts faster.
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# Two cores: fewer threads than the server defaults.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
}

cmd_start() {
    local keep="${FC_KAFKA_KEEP:-0}"
    while (($#)); do
        case "$1" in
            --keep) keep=1 ;;
            *) die "start: unknown option $1" ;;
        esac
        shift
    done

    if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
        if broker_answers "${KAFKA_BOOTSTRAP_SERVERS}" 5; then
            log "KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS} answers: using that cluster, starting nothing"
            return 0
        fi
        case "${KAFKA_BOOTSTRAP_SERVERS}" in
            "${BOOTSTRAP}" | "localhost:${PORT}" | "PLAINTEXT://${BOOTSTRAP}") ;;
            *) die "KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS} does not answer; unset it to start the local broker on ${BOOTSTRAP}" ;;
        esac
    fi

    local pid
    if pid="$(running_pid)"; then
        if broker_answers "${BOOTSTRAP}" 5; then
            log "already running (pid ${pid}) on ${BOOTSTRAP}"
            return 0
        fi
        die "a broker process (pid ${pid}) is running but does not answer on ${BOOTSTRAP}; run '$0 stop' first"
    fi
    if port_in_use "${PORT}"; then
        die "port ${PORT} is taken by another process; stop it, or set KAFKA_PORT (and KAFKA_BOOTSTRAP_SERVERS for the tests)"
    fi
    if port_in_use "${CONTROLLER_PORT}"; then
        die "controller port ${CONTROLLER_PORT} is taken by another process; set KAFKA_CONTROLLER_PORT"
    fi

    cmd_fetch
    local libs
    libs="$(libs_dir)"
    command -v java >/dev/null || die "java (17 or newer) is needed to run Kafka ${KAFKA_VERSION}"

    if [[ "${keep}" == 1 && -f "${RUN_DIR}/data/meta.properties" ]]; then
        log "keeping the data in ${RUN_DIR}/data"
    else
        rm -rf "${RUN_DIR}"
    fi
    mkdir -p "${RUN_DIR}/data"
    write_properties
    : >"${LOG_FILE}"

    # shellcheck disable=SC2206 # word splitting of the option strings is intended
    local jvm_opts=(${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} -XX:+ExitOnOutOfMemoryError
        -Djava.awt.headless=true "-Dlog4j2.configurationFile=${LOG4J_CONFIG}" ${KAFKA_JVM_OPTS:-})

    if [[ ! -f "${RUN_DIR}/data/meta.properties" ]]; then
        # A random cluster id: 16 bytes, URL-safe base64 without padding, as Kafka's Uuid prints it.
        # Not starting with '-' (1 in 64 would): the storage tool would take it for an option
        # ("argument --cluster-id/-t: expected one argument"); Kafka's Uuid.randomUuid() skips those
        # too.
        local cluster_id="-"
        while [[ "${cluster_id}" == -* ]]; do
            cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        done
        if ! java "${jvm_opts[@]}" -cp "${libs}/*" kafka.tools.StorageTool format \
            --cluster-id "${cluster_id}" --config "${PROPERTIES}" >>"${LOG_FILE}" 2>&1; then
            log_tail
            die "formatting the KRaft storage in ${RUN_DIR}/data failed"
        fi
    fi

    log "starting Kafka ${KAFKA_VERSION} on ${BOOTSTRAP} (data and log in ${RUN_DIR})"
    nohup java "${jvm_opts[@]}" -cp "${libs}/*" kafka.Kafka "${PROPERTIES}" \
        >>"${LOG_FILE}" 2>&1 </dev/null &
    pid=$!
    printf '%s\n' "${pid}" >"${PID_FILE}"

    local deadline=$((SECONDS + START_TIMEOUT))
    # The log line first: it is cheap, and a bare TCP check (no confluent-kafka) would pass as
    # soon as the listener socket is bound, before the broker serves requests.
    until grep -q 'Kafka Server started' "${LOG_FILE}" && broker_answers "${BOOTSTRAP}" 2; do
        if ! kill -0 "${pid}" 2>/dev/null; then
            rm -f "${PID_FILE}"
            log_tail
            die "the broker exited during start-up"
        fi
        if ((SECONDS >= deadline)); then
            log_tail
            cmd_stop >/dev/null 2>&1 || true
            die "the broker did not answer on ${BOOTSTRAP} within ${START_TIMEOUT}s"
        fi
        sleep 0.5
    done
    log "ready on ${BOOTSTRAP} (pid ${pid}); the tests use KAFKA_BOOTSTRAP_SERVERS=${BOOTSTRAP} by default"
}

cmd_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        log "not running"
        rm -f "${PID_FILE}"
        return 0
    fi
    log "stopping the broker (pid ${pid})"
    kill -TERM "${pid}"
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "${pid}" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "still running after ${STOP_TIMEOUT}s: SIGKILL"
            kill -KILL "${pid}" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "${PID_FILE}"
    log "stopped"
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        if broker_answers "${BOOTSTRAP}" 3; then
            echo "running: pid ${pid}, Kafka ${KAFKA_VERSION} on ${BOOTSTRAP}, dir ${RUN_DIR}"
        else
            echo "starting or unhealthy: pid ${pid} does not answer on ${BOOTSTRAP}, log ${LOG_FILE}"
        fi
        return 0
    fi
    echo "not running"
    return 3
}

cmd_logs() {
    [[ -f "${LOG_FILE}" ]] || die "no log at ${LOG_FILE}"
    if [[ "${1:-}" == "-f" ]]; then
        exec tail -n 100 -F "${LOG_FILE}"
    fi
    tail -n "${KAFKA_LOG_LINES:-200}" "${LOG_FILE}"
}

main() {
    local command="${1:-}"
    if (($#)); then shift; fi
    case "${command}" in
        fetch) cmd_fetch "$@" ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        logs) cmd_logs "$@" ;;
        -h | --help | help) usage ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"
