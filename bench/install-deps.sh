#!/usr/bin/env bash
# Installs what `make bench` needs from Debian when it is missing: wrk (the load generator) and nginx (the C floor).
# With arguments, only those (scripts/run-tests.sh: `nginx` for tests/test_deploy_nginx.py, `php` for PHP's SoapClient
# in tests/test_soap_php.py: php-cli and php-soap, `chromium` for tests/test_console_browser.py, `valgrind` for
# tests/test_bench_instructions.py, `systemd` for systemd-analyze in tests/test_deploy_systemd.py, `pgbouncer` for
# tests/test_database_pooler.py).
# nginx is Debian's core package: on bookworm nginx-light is only nginx plus an echo module that proxy_pass does
# not need, and trixie has no nginx-light. The package must not start a server on port 80, so the install runs
# under a policy-rc.d that forbids starting services (kept if one is already there).
set -euo pipefail

wanted=("$@")
[[ ${#wanted[@]} -eq 0 ]] && wanted=(wrk nginx)
missing=()
for package in "${wanted[@]}"; do
  if [[ $package == php ]]; then
    # PHP's SoapClient, for tests/test_soap_php.py: the CLI and its soap extension.
    php -m 2>/dev/null | grep -qix soap || missing+=(php-cli php-soap)
    continue
  fi
  command -v "$package" >/dev/null 2>&1 || [[ -x /usr/sbin/$package ]] || missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ "$(id -u)" != 0 ]]; then
  echo "needed: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
policy=/usr/sbin/policy-rc.d
made_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  made_policy=1
fi
trap 'if [[ $made_policy == 1 ]]; then rm -f "$policy"; fi' EXIT
echo "installing ${missing[*]} (apt-get)" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
