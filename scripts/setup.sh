#!/usr/bin/env bash
# Everything redirect's demo and tests need on a fresh Debian 12 (run as root):
# Debian packages, a virtualenv with the Python dependencies, the fixture programs.
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(python3 python3-venv python3-dev make gcc libc6-dev musl-tools golang-go busybox-static
          curl socat libseccomp2 nginx-light systemd caddy wrk strace gdb dnsmasq-base tftpd-hpa
          tftp-hpa dnsutils openssh-server groff-base zsh pipx)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's own python3, so that the unprivileged test user can run it too.
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    /usr/bin/python3 -m venv .venv
fi
# A regular (not editable) install: an editable one costs ~20 ms at every start.
# The compiled accept (redirect/_fastpath.c) also in the checkout itself, where
# the tests run `python -m redirect` from.
if [ ! -e .venv/.installed ] || [ -n "$(find pyproject.toml setup.py redirect -newer .venv/.installed | head -1)" ]; then
    echo "setup: installing redirect and its dependencies into .venv"
    .venv/bin/pip install -q --disable-pip-version-check ".[test]"
    PYTHONWARNINGS=ignore .venv/bin/python setup.py -q build_ext --inplace
    touch .venv/.installed
fi

make -s -C fixtures/static-bins "$@"
