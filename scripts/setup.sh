#!/usr/bin/env bash
# Idempotent setup: Debian packages (when missing and we are root), .venv/, pinned requirements.
# Fast when already done: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(libusb-1.0-0 libegl1 libgl1-mesa-dri libosmesa6 libgl1 chromium ffmpeg)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages (${missing[*]}); run 'sudo apt-get install ${missing[*]}'" >&2
  fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $PY" >&2
  "$PY" -m venv .venv
fi

# Reinstall only when requirements.txt or pyproject.toml changed since the last successful install.
stamp=.venv/.setup-stamp
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "setup: installing Python requirements" >&2
  # The machine's pip config lists local wheel folders that may not exist; their warnings are noise.
  pip_quiet() { .venv/bin/python -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
  pip_quiet --upgrade pip
  # torch first and alone: the pinned CPU wheel must be in place before anything asks for torch.
  pip_quiet "$(grep -E '^torch==' requirements.txt)"
  pip_quiet -r requirements.txt
  pip_quiet --no-deps -e .
  echo "$want" >"$stamp"
fi
