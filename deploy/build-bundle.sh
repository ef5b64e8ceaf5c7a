#!/bin/sh
# One-shot job: build the default bundle into $OUT (a volume) unless it is already complete.
# Used by docker-compose's `bundle` service and the Kubernetes Job; idempotent and atomic-ish:
# the bundle is built in a temporary folder and renamed into place when complete.
set -eu
OUT="${OUT:-/bundles/default}"
if [ -f "$OUT/.complete" ]; then
  echo "bundle already built at $OUT"
  exit 0
fi
TMP="${OUT}.partial"
CATALOG="${OUT}.catalog.jsonl"
rm -rf "$TMP"
crops world catalog --out "$CATALOG"
crops export --out "$TMP" --force
crops index build --bundle "$TMP" --corpus "$CATALOG"
touch "$TMP/.complete"
rm -rf "$OUT"
mv "$TMP" "$OUT"
echo "bundle built at $OUT"
