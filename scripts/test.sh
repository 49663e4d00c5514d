#!/usr/bin/env bash
# The README's test command (`npm test`): sets up every service the tests need, runs the suites, stops what it
# started. Usage: scripts/test.sh [all|unit|integration|e2e|fuzz|faults] [extra mocha args...]
set -uo pipefail
cd "$(dirname "$0")/.."

tier="${1:-all}"
shift || true
case "$tier" in
  unit) specs=('test/unit/**/*.spec.ts') ;;
  integration) specs=('test/integration/**/*.spec.ts') ;;
  e2e) specs=('test/e2e/**/*.spec.ts') ;;
  fuzz) specs=('test/fuzz/**/*.spec.ts') ;;
  faults) specs=('test/faults/**/*.spec.ts') ;;
  all) specs=('test/unit/**/*.spec.ts' 'test/integration/**/*.spec.ts' 'test/e2e/**/*.spec.ts' 'test/fuzz/**/*.spec.ts' 'test/faults/**/*.spec.ts') ;;
  *) echo "usage: $0 [all|unit|integration|e2e|fuzz|faults] [mocha args...]" >&2; exit 2 ;;
esac

if [ "$tier" = all ]; then
  # The whole gate in one command: types and style first, since they are the cheapest failures.
  npx tsc -p . || exit 1
  npx eslint . || exit 1
  npx prettier --check . >/dev/null || { npx prettier --check . ; exit 1; }
fi

if [ "$tier" != unit ]; then
  # A directory of this run's own (pid files, Kafka's data and ports), so two runs on one machine never collide.
  run_dir="$(mktemp -d "${TMPDIR:-/tmp}/task-manager-test.XXXXXX")"
  stop_services() {
    bash scripts/services.sh down --dir "$run_dir" || true
    rm -rf "$run_dir"
  }
  trap stop_services EXIT
  trap 'exit 130' INT TERM
  if ! exports="$(bash scripts/services.sh up --dir "$run_dir")"; then
    echo "test: could not set up the services the tests need (see above)" >&2
    exit 1
  fi
  eval "$exports"
  # The fault suite stops and starts this run's services (never anyone else's).
  export TM_SERVICES_DIR="$run_dir"
  if [ "$tier" = e2e ] || [ "$tier" = all ]; then
    chromium_path="$(bash scripts/services.sh chromium)" && [ -n "$chromium_path" ] && export CHROMIUM_PATH="$chromium_path"
  fi
  echo "test: DATABASE_URL=${DATABASE_URL:-unset} REDIS_URL=${REDIS_URL:-unset} KAFKA_BROKERS=${KAFKA_BROKERS:-unset} EVENTSTORE_URL=${EVENTSTORE_URL:-unset}" >&2
fi

export KAFKAJS_NO_PARTITIONER_WARNING=1
npx mocha "$@" "${specs[@]}"
