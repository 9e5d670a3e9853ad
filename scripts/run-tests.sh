#!/usr/bin/env bash
# Runs the whole test suite. Under CI=true (or REQUIRE_SERVICES=1) missing PostgreSQL/Redis fail the run
# instead of skipping, and a run that collects no test fails too (pytest exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

if [[ "${CI:-}" == "true" || "${REQUIRE_SERVICES:-}" == "1" ]]; then
  export REQUIRE_SERVICES=1
  # On a fresh CI machine the services may have been stopped; start them the way this machine documents.
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && command -v redis-server >/dev/null; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
  fi
fi

# tests/test_deploy_nginx.py runs docs/deploy.md's configuration in Debian's nginx: install it when missing (it
# skips without it, or fails under CI=true / REQUIRE_SERVICES=1).
bash bench/install-deps.sh nginx || echo "nginx is missing and could not be installed" >&2
# tests/test_soap_php.py calls the SOAP façade with PHP's SoapClient: php-cli and php-soap, installed when missing.
bash bench/install-deps.sh php || echo "php-cli/php-soap are missing and could not be installed" >&2
# tests/test_console_browser.py drives Debian's chromium through Playwright (never a downloaded browser).
bash bench/install-deps.sh chromium || echo "chromium is missing and could not be installed" >&2
# tests/test_deploy_systemd.py checks docs/deploy.md's unit with systemd-analyze (Debian's systemd package).
bash bench/install-deps.sh systemd || echo "systemd-analyze is missing and could not be installed" >&2
# tests/test_bench_instructions.py runs the gateway under valgrind's callgrind (bench/instructions.py).
bash bench/install-deps.sh valgrind || echo "valgrind is missing and could not be installed" >&2
# tests/test_database_pooler.py puts Debian's PgBouncer between the gateway and PostgreSQL.
bash bench/install-deps.sh pgbouncer || echo "pgbouncer is missing and could not be installed" >&2

# One pytest worker a core (pytest-xdist), each test file whole on one worker so that its module fixtures start once,
# files in the order tests/conftest.py gives (slow files first; xdist would otherwise start the biggest files first).
# Run serially, the suite kept about half of two cores idle (vmstat): its tests wait on servers, subprocesses, sockets.
# TEST_WORKERS=0 runs in this process, serially.
set +e
"$BIN/pytest" --numprocesses "${TEST_WORKERS:-$(nproc)}" --dist loadfile --no-loadscope-reorder "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "pytest collected no tests: failing, since a run that tests nothing proves nothing" >&2
  exit 1
fi
exit $status
