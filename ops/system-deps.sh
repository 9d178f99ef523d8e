#!/usr/bin/env bash
# Debian packages that the test suite, `make up` and `make deploy` run for real: Prometheus + promtool,
# docker-compose (validates ops/deploy/compose.yaml) and kubectl (renders ops/kustomization.yaml).
# Installs only what is missing; `make install` and .ci/run call it.
set -euo pipefail
need=()
{ command -v prometheus && command -v promtool; } >/dev/null || need+=(prometheus)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v kubectl >/dev/null || need+=(kubernetes-client)
((${#need[@]})) || exit 0
if ! command -v apt-get >/dev/null; then
    echo "system-deps: install ${need[*]} with your package manager (the tests and 'make up' need them)" >&2
    exit 1
fi
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
echo "system-deps: installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq || true  # a stale or unreachable mirror list still lets cached indexes install
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
