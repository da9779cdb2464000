#!/usr/bin/env bash
# Long fuzz run of the decoder and the C-STORE path: the properties of tests/hardening/test_fuzz.py with many
# more examples.  Usage: bench/fuzz.sh [decode examples] [C-STORE examples]   (defaults 5000 and 500)
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_DECODE_EXAMPLES="${1:-5000}" FUZZ_STORE_EXAMPLES="${2:-500}" \
    .venv/bin/pytest -q -p no:cacheprovider tests/hardening/test_fuzz.py --hypothesis-show-statistics
