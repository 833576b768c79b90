#!/usr/bin/env bash
# A real single-node OpenSearch on 127.0.0.1, for the OpenSearch notifier's tests and development.
#
#   deploy/opensearch/opensearch.sh fetch     fetch the pinned jars from Maven Central (once)
#   deploy/opensearch/opensearch.sh start     lay out a fresh node and start it, wait until it answers
#   deploy/opensearch/opensearch.sh stop      SIGTERM, then SIGKILL after OPENSEARCH_STOP_TIMEOUT seconds
#   deploy/opensearch/opensearch.sh status    exit 0 when running, 3 when not
#   deploy/opensearch/opensearch.sh logs [-f] the node's log (last lines, or follow)
#
# Environment:
#   OPENSEARCH_URL            an existing cluster: when it answers, `start` uses it and starts nothing
#   OPENSEARCH_PORT           HTTP port (9200); OPENSEARCH_TRANSPORT_PORT (9300)
#   FC_OPENSEARCH_DIR         node home, data, pidfile, log (/tmp/falco-correlator-opensearch)
#   OPENSEARCH_USER           the user that runs the node when started as root (nobody): OpenSearch
#                             refuses to run as root
#   OPENSEARCH_HEAP_OPTS      JVM heap (-Xms512m -Xmx512m); OPENSEARCH_JVM_OPTS: extra JVM options
#   OPENSEARCH_START_TIMEOUT  seconds to wait for the node to answer (120)
#   OPENSEARCH_STOP_TIMEOUT   seconds between SIGTERM and SIGKILL (10): this node stops its
#                             services but then waits forever for Netty's transport threads to
#                             report their end (seen with 2.19.6 assembled from Maven jars); its
#                             data is thrown away at the next start, so the SIGKILL loses nothing
#   XDG_CACHE_HOME            the jar cache lives in ${XDG_CACHE_HOME:-~/.cache}/falco-correlator
#
# No distribution tarball: the node is assembled from Maven Central the way OpenSearch's own
# distribution lays it out (lib/ for the server, modules/transport-netty4/ for HTTP and transport,
# each module with its descriptor and security policy) and started with its main class,
# org.opensearch.bootstrap.OpenSearch. Security (TLS, users) is not installed: plain HTTP on loopback.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly POM="${SCRIPT_DIR}/pom.xml"

# The pom is the one place the version is pinned.
OPENSEARCH_VERSION="$(sed -n 's:.*<opensearch.version>\(.*\)</opensearch.version>.*:\1:p' "${POM}" | head -n 1)"
readonly OPENSEARCH_VERSION
readonly CACHE_ROOT="${XDG_CACHE_HOME:-${HOME}/.cache}/falco-correlator"
readonly DIST_DIR="${CACHE_ROOT}/opensearch-${OPENSEARCH_VERSION}"
readonly NETTY_MODULE="modules/transport-netty4"

readonly PORT="${OPENSEARCH_PORT:-9200}"
readonly TRANSPORT_PORT="${OPENSEARCH_TRANSPORT_PORT:-9300}"
readonly LOCAL_URL="http://127.0.0.1:${PORT}"
readonly RUN_DIR="${FC_OPENSEARCH_DIR:-/tmp/falco-correlator-opensearch}"
readonly PID_FILE="${RUN_DIR}/opensearch.pid"
readonly LOG_FILE="${RUN_DIR}/opensearch.log"
readonly START_TIMEOUT="${OPENSEARCH_START_TIMEOUT:-120}"
readonly STOP_TIMEOUT="${OPENSEARCH_STOP_TIMEOUT:-10}"
readonly RUN_USER="${OPENSEARCH_USER:-nobody}"

log() { printf 'opensearch.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

cmd_fetch() {
    if [[ -f "${DIST_DIR}/.complete" ]]; then
        log "OpenSearch ${OPENSEARCH_VERSION} already fetched: ${DIST_DIR}"
        return 0
    fi
    command -v mvn >/dev/null || die "mvn (Apache Maven) is needed to fetch OpenSearch"
    command -v java >/dev/null || die "java (17 or newer) is needed to run OpenSearch ${OPENSEARCH_VERSION}"
    mkdir -p "${CACHE_ROOT}"
    # A scratch dir renamed into place: an interrupted fetch leaves no half-filled cache.
    local scratch
    scratch="$(mktemp -d "${CACHE_ROOT}/.fetch-opensearch-${OPENSEARCH_VERSION}.XXXXXX")"
    log "fetching OpenSearch ${OPENSEARCH_VERSION} jars from Maven Central into ${DIST_DIR}"
    # Two copies of one resolution: the server without Netty, and the Netty module on its own.
    if ! mvn -q -B -Dstyle.color=never -f "${POM}" dependency:copy-dependencies \
        -DincludeScope=runtime -DexcludeGroupIds=io.netty,org.opensearch.plugin \
        -DoutputDirectory="${scratch}/lib" >"${scratch}/mvn.log" 2>&1 ||
        ! mvn -q -B -Dstyle.color=never -f "${POM}" dependency:copy-dependencies \
            -DincludeScope=runtime -DincludeGroupIds=io.netty,org.opensearch.plugin \
            -DoutputDirectory="${scratch}/${NETTY_MODULE}" >>"${scratch}/mvn.log" 2>&1; then
        cat "${scratch}/mvn.log" >&2
        rm -rf "${scratch}"
        die "mvn could not fetch the OpenSearch ${OPENSEARCH_VERSION} jars (see the output above)"
    fi
    rm -f "${scratch}/mvn.log"
    sed "s/@VERSION@/${OPENSEARCH_VERSION}/g" "${SCRIPT_DIR}/transport-netty4/plugin-descriptor.properties" \
        >"${scratch}/${NETTY_MODULE}/plugin-descriptor.properties"
    cp "${SCRIPT_DIR}/transport-netty4/plugin-security.policy" "${scratch}/${NETTY_MODULE}/"
    chmod 755 "${scratch}"  # mktemp made it 0700; the node may run as another user
    touch "${scratch}/.complete"
    rm -rf "${DIST_DIR}"
    mv "${scratch}" "${DIST_DIR}"
    log "fetched $(find "${DIST_DIR}" -name '*.jar' | wc -l) jars"
}

# Does an OpenSearch cluster answer at $1 with status yellow or green within $2 seconds?
node_answers() {
    python3 - "$1" "$2" 2>/dev/null <<'PY'
import json
import sys
import urllib.request

url, timeout = sys.argv[1].rstrip("/"), float(sys.argv[2])
try:
    with urllib.request.urlopen(
        f"{url}/_cluster/health?wait_for_status=yellow&timeout={int(timeout)}s", timeout=timeout + 1
    ) as answer:
        health = json.load(answer)
except Exception:  # any failure means "not answering yet"
    sys.exit(1)
sys.exit(0 if health.get("status") in ("green", "yellow") else 1)
PY
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The pid of our running node, or nothing; the command line is checked so that a pid reused by
# another process after a crash is never signalled.
running_pid() {
    [[ -f "${PID_FILE}" ]] || return 1
    local pid
    pid="$(cat "${PID_FILE}")"
    [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
    kill -0 "${pid}" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -q 'org\.opensearch\.bootstrap\.OpenSearch' || return 1
    printf '%s\n' "${pid}"
}

log_tail() {
    if [[ -f "${LOG_FILE}" ]]; then
        log "last lines of ${LOG_FILE}:"
        grep -v '^\s*at \|^WARNING: ' "${LOG_FILE}" | tail -n 30 >&2
    fi
}

# Lay out the node home in RUN_DIR: the cached jars hard-linked (copied across file systems),
# a fresh config and data dir.
layout_home() {
    rm -rf "${RUN_DIR}"
    mkdir -p "${RUN_DIR}"/{config,data,logs,plugins,bin,modules}
    cp -al "${DIST_DIR}/lib" "${RUN_DIR}/lib" 2>/dev/null || cp -a "${DIST_DIR}/lib" "${RUN_DIR}/lib"
    cp -al "${DIST_DIR}/${NETTY_MODULE}" "${RUN_DIR}/${NETTY_MODULE}" 2>/dev/null ||
        cp -a "${DIST_DIR}/${NETTY_MODULE}" "${RUN_DIR}/${NETTY_MODULE}"
    cp "${SCRIPT_DIR}/log4j2.properties" "${RUN_DIR}/config/"
    cat >"${RUN_DIR}/config/opensearch.yml" <<EOF
# Written by deploy/opensearch/opensearch.sh: a single-node development node. Not for production.
cluster.name: falco-correlator-dev
node.name: local
path.data: ${RUN_DIR}/data
path.logs: ${RUN_DIR}/logs
network.host: 127.0.0.1
http.port: ${PORT}
transport.port: ${TRANSPORT_PORT}
discovery.type: single-node
# one node: no replicas, so indices are green
cluster.default_number_of_replicas: 0
action.auto_create_index: true
# a development disk may be fuller than the production watermarks allow
cluster.routing.allocation.disk.threshold_enabled: false
EOF
}

cmd_start() {
    if [[ -n "${OPENSEARCH_URL:-}" ]]; then
        if node_answers "${OPENSEARCH_URL}" 5; then
            log "OPENSEARCH_URL=${OPENSEARCH_URL} answers: using that cluster, starting nothing"
            return 0
        fi
        case "${OPENSEARCH_URL%/}" in
            "${LOCAL_URL}" | "http://localhost:${PORT}") ;;
            *) die "OPENSEARCH_URL=${OPENSEARCH_URL} does not answer; unset it to start the local node on ${LOCAL_URL}" ;;
        esac
    fi

    local pid
    if pid="$(running_pid)"; then
        if node_answers "${LOCAL_URL}" 5; then
            log "already running (pid ${pid}) on ${LOCAL_URL}"
            return 0
        fi
        die "an OpenSearch process (pid ${pid}) is running but does not answer on ${LOCAL_URL}; run '$0 stop' first"
    fi
    port_in_use "${PORT}" && die "port ${PORT} is taken by another process; set OPENSEARCH_PORT (and OPENSEARCH_URL for the tests)"
    port_in_use "${TRANSPORT_PORT}" && die "transport port ${TRANSPORT_PORT} is taken; set OPENSEARCH_TRANSPORT_PORT"

    cmd_fetch
    command -v java >/dev/null || die "java (17 or newer) is needed to run OpenSearch ${OPENSEARCH_VERSION}"
    layout_home
    : >"${LOG_FILE}"

    # OpenSearch refuses to run as root ("can not run opensearch as root"): as root, the node runs
    # as an unprivileged user that owns its home.
    local runner=()
    if [[ "$(id -u)" == 0 ]]; then
        id "${RUN_USER}" >/dev/null 2>&1 || die "user ${RUN_USER} does not exist; set OPENSEARCH_USER"
        # Only what the node writes: lib/ and modules/ are hard links into the cache, readable by all.
        chown -R "${RUN_USER}:" "${RUN_DIR}"/{config,data,logs,plugins,bin}
        chown "${RUN_USER}:" "${RUN_DIR}"
        runner=(setpriv "--reuid=$(id -u "${RUN_USER}")" "--regid=$(id -g "${RUN_USER}")" --clear-groups
            env "HOME=${RUN_DIR}")
    fi

    # shellcheck disable=SC2206 # word splitting of the option strings is intended
    local jvm_opts=(${OPENSEARCH_HEAP_OPTS:--Xms512m -Xmx512m} -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError
        -Djava.awt.headless=true -Dfile.encoding=UTF-8 -Djava.io.tmpdir="${RUN_DIR}/data"
        -Djava.security.manager=allow -Dlog4j2.formatMsgNoLookups=true
        "-Dopensearch.path.home=${RUN_DIR}" "-Dopensearch.path.conf=${RUN_DIR}/config"
        -Dopensearch.distribution.type=tar ${OPENSEARCH_JVM_OPTS:-})

    log "starting OpenSearch ${OPENSEARCH_VERSION} on ${LOCAL_URL} (home and log in ${RUN_DIR})"
    (cd "${RUN_DIR}" && exec nohup "${runner[@]}" java "${jvm_opts[@]}" -cp "${RUN_DIR}/lib/*" \
        org.opensearch.bootstrap.OpenSearch >>"${LOG_FILE}" 2>&1 </dev/null) &
    pid=$!
    printf '%s\n' "${pid}" >"${PID_FILE}"

    local deadline=$((SECONDS + START_TIMEOUT))
    until grep -q '\] started' "${LOG_FILE}" && node_answers "${LOCAL_URL}" 2; do
        if ! kill -0 "${pid}" 2>/dev/null; then
            rm -f "${PID_FILE}"
            log_tail
            die "the node exited during start-up"
        fi
        if ((SECONDS >= deadline)); then
            log_tail
            cmd_stop >/dev/null 2>&1 || true
            die "the node did not answer on ${LOCAL_URL} within ${START_TIMEOUT}s"
        fi
        sleep 0.5
    done
    log "ready on ${LOCAL_URL} (pid ${pid}); the tests use OPENSEARCH_URL=${LOCAL_URL} by default"
}

cmd_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        log "not running"
        rm -f "${PID_FILE}"
        return 0
    fi
    log "stopping the node (pid ${pid})"
    kill -TERM "${pid}"
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "${pid}" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "still running after ${STOP_TIMEOUT}s (a known hang in Netty's shutdown): SIGKILL"
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
        if node_answers "${LOCAL_URL}" 3; then
            echo "running: pid ${pid}, OpenSearch ${OPENSEARCH_VERSION} on ${LOCAL_URL}, dir ${RUN_DIR}"
        else
            echo "starting or unhealthy: pid ${pid} does not answer on ${LOCAL_URL}, log ${LOG_FILE}"
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
    tail -n "${OPENSEARCH_LOG_LINES:-200}" "${LOG_FILE}"
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
