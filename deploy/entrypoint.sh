#!/bin/sh
# The images' entrypoint: build the configured index if it is missing, then serve.
#   serve [FLAGS]   (default) build $RAGSERVE_INDEX when absent and writable, then `ragserve serve`
#   build [FLAGS]   `ragserve index build` (a Kubernetes Job filling the index volume)
#   anything else   run as given (`ragserve index info NAME`, a shell)
# Settings come from RAGSERVE_* variables (see `ragserve config show`); the index is built from
# RAGSERVE_CORPUS (a JSONL file or BEIR folder) when set, else from the bundled demo corpus.
set -eu

index="${RAGSERVE_INDEX:-python-docs}"
index_dir="${RAGSERVE_INDEX_DIR:-indexes}"

build_if_missing() {
    if [ -f "$index_dir/$index/manifest.json" ]; then
        return 0
    fi
    if [ "${RAGSERVE_BUILD_INDEX:-1}" = "0" ]; then
        echo "entrypoint: index $index not found in $index_dir and RAGSERVE_BUILD_INDEX=0" >&2
        exit 2
    fi
    mkdir -p "$index_dir" 2>/dev/null || true
    if [ ! -w "$index_dir" ]; then
        echo "entrypoint: index $index not found and $index_dir is read-only;" \
            "build it first (the build command, or a Kubernetes Job)" >&2
        exit 2
    fi
    if [ -n "${RAGSERVE_CORPUS:-}" ]; then
        ragserve index build --corpus "$RAGSERVE_CORPUS" --name "$index" --if-missing --quiet
    else
        ragserve index build --demo --name "$index" --if-missing --quiet
    fi
}

command="${1:-serve}"
[ "$#" -gt 0 ] && shift
case "$command" in
    serve)
        build_if_missing
        exec ragserve serve "$@"
        ;;
    build)
        exec ragserve index build "$@"
        ;;
    *)
        exec "$command" "$@"
        ;;
esac
