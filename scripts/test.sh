#!/usr/bin/env bash
# Installs what the tests need, then runs the format check, lint, types and the whole test suite.
# Needs the local PostgreSQL (127.0.0.1:5432, user postgres), Redis (6379) and Mosquitto (1883).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "test: could not install chromium; browser tests will fail" >&2
fi
python -m pip install -q --disable-pip-version-check -e '.[dev]'

ruff format --check .
ruff check .
mypy
set +e
python -m pytest -q -p no:cacheprovider -p no:benchmark -n 2 --dist loadfile "$@"  # two workers, a file each
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
