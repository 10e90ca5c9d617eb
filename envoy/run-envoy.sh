#!/usr/bin/env bash
# Render the Envoy bootstrap template (bootstrap.yaml next to this script) from environment
# variables and exec Envoy on it. Used unchanged by docker-compose, `gatewayctl up` and the
# tests, so every Envoy in every setting starts from the same bootstrap.
#
# Variables (defaults): NODE_ID (envoy-$(hostname)), GATEWAY (default), XDS_HOST (127.0.0.1),
# XDS_PORT (18000), ADMIN_ADDRESS (127.0.0.1), ADMIN_PORT (9901), ENVOY_BOOTSTRAP (template),
# ENVOY_RENDERED (output file), ENVOY_BIN (envoy), ENVOY_LOG_LEVEL (info),
# XDS_API_TYPE (the ADS protocol: GRPC, state of the world, or DELTA_GRPC, incremental;
# default DEFAULT_API_TYPE below, chosen by measurement: docs/decisions/0054).
# Mutual TLS to the controller: XDS_TLS_CERT, XDS_TLS_KEY (this Envoy's client certificate
# and key) and XDS_TLS_CA (the CA of the controller's certificate), all three or none; when
# set, the template defaults to bootstrap-mtls.yaml.
# Extra arguments are passed to Envoy.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

NODE_ID="${NODE_ID:-envoy-${HOSTNAME:-$(hostname)}}"
GATEWAY="${GATEWAY:-default}"
XDS_HOST="${XDS_HOST:-127.0.0.1}"
XDS_PORT="${XDS_PORT:-18000}"
ADMIN_ADDRESS="${ADMIN_ADDRESS:-127.0.0.1}"
ADMIN_PORT="${ADMIN_PORT:-9901}"
DEFAULT_API_TYPE=GRPC
XDS_API_TYPE="${XDS_API_TYPE:-$DEFAULT_API_TYPE}"
XDS_TLS_CERT="${XDS_TLS_CERT:-}"
XDS_TLS_KEY="${XDS_TLS_KEY:-}"
XDS_TLS_CA="${XDS_TLS_CA:-}"
template=bootstrap.yaml
[[ -n "${XDS_TLS_CERT}${XDS_TLS_KEY}${XDS_TLS_CA}" ]] && template=bootstrap-mtls.yaml
ENVOY_BOOTSTRAP="${ENVOY_BOOTSTRAP:-${script_dir}/${template}}"
ENVOY_RENDERED="${ENVOY_RENDERED:-/tmp/envoy-bootstrap-${NODE_ID}.yaml}"

die() {
    echo "run-envoy.sh: $*" >&2
    exit 64
}

# Values end up inside YAML scalars and sed replacements: allow only characters that are
# safe in both (no quotes, spaces, '|', '&', '\', '/', newlines).
name_re='^[A-Za-z0-9._:-]+$'
port_re='^[0-9]+$'
for var in NODE_ID GATEWAY XDS_HOST ADMIN_ADDRESS; do
    [[ "${!var}" =~ $name_re ]] || die "$var='${!var}' must match $name_re"
done
for var in XDS_PORT ADMIN_PORT; do
    [[ "${!var}" =~ $port_re ]] && (( 10#${!var} >= 0 && 10#${!var} <= 65535 )) \
        || die "$var='${!var}' must be a port number (0-65535)"
done
[[ "$XDS_API_TYPE" =~ ^(GRPC|DELTA_GRPC)$ ]] \
    || die "XDS_API_TYPE='${XDS_API_TYPE}' must be GRPC (state of the world) or DELTA_GRPC (incremental)"
[[ -r "$ENVOY_BOOTSTRAP" ]] || die "bootstrap template not readable: $ENVOY_BOOTSTRAP"

substituted=(NODE_ID GATEWAY XDS_HOST XDS_PORT ADMIN_ADDRESS ADMIN_PORT XDS_API_TYPE)
if [[ "$template" == bootstrap-mtls.yaml ]]; then
    path_re='^[A-Za-z0-9._/-]+$'
    for var in XDS_TLS_CERT XDS_TLS_KEY XDS_TLS_CA; do
        [[ -n "${!var}" ]] || die "$var is required with XDS_TLS_CERT/XDS_TLS_KEY/XDS_TLS_CA (all three or none)"
        [[ "${!var}" =~ $path_re ]] || die "$var='${!var}' must be a path matching $path_re"
        [[ -r "${!var}" ]] || die "$var: cannot read ${!var}"
    done
    # The controller's certificate must name XDS_HOST: as an IP SAN or a DNS SAN.
    if [[ "$XDS_HOST" =~ ^[0-9.]+$ || "$XDS_HOST" == *:* ]]; then
        XDS_TLS_SAN_TYPE=IP_ADDRESS
    else
        XDS_TLS_SAN_TYPE=DNS
    fi
    substituted+=(XDS_TLS_CERT XDS_TLS_KEY XDS_TLS_CA XDS_TLS_SAN_TYPE)
fi

# Escape sed replacement metacharacters anyway (defence in depth if the checks above change).
sed_escape() {
    printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'
}

sed_args=()
for var in "${substituted[@]}"; do
    sed_args+=(-e "s|\${${var}}|$(sed_escape "${!var}")|g")
done

mkdir -p "$(dirname "$ENVOY_RENDERED")"
tmp="${ENVOY_RENDERED}.tmp.$$"
sed "${sed_args[@]}" "$ENVOY_BOOTSTRAP" > "$tmp"
mv -f "$tmp" "$ENVOY_RENDERED"

if grep -q '\${[A-Za-z_][A-Za-z0-9_]*}' "$ENVOY_RENDERED"; then
    die "unsubstituted placeholder left in $ENVOY_RENDERED: $(grep -o '\${[A-Za-z_][A-Za-z0-9_]*}' "$ENVOY_RENDERED" | sort -u | tr '\n' ' ')"
fi

# Access-log lines on stdout (a gateway's access_log setting) are written within a second
# instead of Envoy's default of ten. When a listener changes, its open connections close
# after their next response (Connection: close, HTTP/2 GOAWAY) rather than over the 600 s
# drain time, so clients move to the new listener at once (docs/decisions/0017).
exec "${ENVOY_BIN:-envoy}" -c "$ENVOY_RENDERED" --disable-hot-restart \
    --log-level "${ENVOY_LOG_LEVEL:-info}" --file-flush-interval-msec 1000 \
    --drain-strategy immediate "$@"
