#!/usr/bin/env bash
# Print the absolute path of a Python >= 3.12 interpreter (JAX 0.11 dropped 3.11).
# Tries the PATH first, then every pyenv-installed 3.12+/3.13+ version.
set -u
check='import sys; assert sys.version_info >= (3, 12); print(sys.executable)'
for exe in python3.12 python3.13 python3; do
  if command -v "$exe" >/dev/null 2>&1; then
    path=$("$exe" -c "$check" 2>/dev/null) && { echo "$path"; exit 0; }
  fi
done
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])' | sort -V); do
    path=$(PYENV_VERSION="$v" python -c "$check" 2>/dev/null) && { echo "$path"; exit 0; }
  done
fi
echo "error: no Python >= 3.12 found (install one, e.g. 'pyenv install 3.12')" >&2
exit 1
