#!/usr/bin/env bash
# Regenerate the committed state of the default run (dvc.lock and reports/) exactly as
# a fresh clone makes it: run the committed HEAD in a temporary clone, copy the results
# back. Commit them afterwards; a fresh clone's `make run` then leaves git clean.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# The run uses this checkout's environment, whose packages are this work tree: it must
# be HEAD (dvc.lock and reports/ may differ, they are what this script rewrites).
changes=$(git status --porcelain --untracked-files=no -- . ':(exclude)dvc.lock' ':(exclude)reports'
    git status --porcelain -- src)
if [ -n "$changes" ]; then
    echo "lock-run: commit or stash these first (the run must be of HEAD):" >&2
    echo "$changes" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone --quiet "$root" "$work/clone"
cd "$work/clone"
# Share this checkout's DVC remote, so the new data versions can be pushed to it.
if [ -f "$root/.dvc/config.local" ]; then cp "$root/.dvc/config.local" .dvc/; fi
echo "lock-run: running the default pipeline in a fresh clone of $(git rev-parse --short HEAD)"
MEGA_WANDB_MODE=offline "$root/.venv/bin/mega" run
if [ -f .dvc/config.local ]; then "$root/.venv/bin/mega" data push --all; fi
cp dvc.lock "$root/dvc.lock"
rm -rf "$root/reports"
cp -R reports "$root/reports"
cd "$root"
echo "lock-run: done; commit what changed:"
git status --short -- dvc.lock reports
