#!/usr/bin/env bash
# Install what the controller needs on a fresh Debian 12 machine (run as root; idempotent):
# host packages for the lab, and the pinned Python tools in ./.venv.
set -euo pipefail
cd "$(dirname "$0")"

host_pkgs=(debootstrap systemd-container iptables zstd iproute2 openssh-client python3-venv redis-server)
missing=()
for p in "${host_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "bootstrap: creating .venv" >&2
  python3 -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "bootstrap: installing Python requirements into .venv" >&2
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
# promtool and amtool (the rule and Alertmanager config checks of tests/unit/test_prometheus_rules.py)
# from the same Debian packages roles/prometheus and roles/alertmanager install on the monitoring
# hosts: unpacked into .venv/bin, so no Prometheus service is installed on this machine.
if [[ ! -x .venv/bin/promtool || ! -x .venv/bin/amtool ]]; then
  echo "bootstrap: unpacking promtool and amtool from Debian's prometheus packages" >&2
  tmp=$(mktemp -d)
  (cd "$tmp" && { apt-get download -q prometheus prometheus-alertmanager 2>/dev/null \
     || { apt-get update -q && apt-get download -q prometheus prometheus-alertmanager; }; } \
     && for d in ./*.deb; do dpkg-deb -x "$d" x; done)
  install -m 0755 "$tmp/x/usr/bin/promtool" "$tmp/x/usr/bin/amtool" .venv/bin/
  rm -rf "$tmp"
fi
echo "bootstrap: ready (.venv/bin: ansible-playbook, fab, pytest)" >&2
