#!/usr/bin/env bash
# Boot a real systemd (Debian bookworm in systemd-nspawn) and follow README's "As a systemd service" steps
# with this checkout's unit and a wheel of this checkout, as root. Prints each scenario's outcome:
#   A  this unit with the "-" prefixes taken off, a ReadWritePaths= folder missing → 226/NAMESPACE
#   B  this unit, the README's steps in order (folders under /srv/photos, /mnt/nas/scans missing) → running,
#      a dropped image is processed, `srd status --check` 0, Documentation= files installed
#   C  the README's drop-in (folders under /data/photos, /mnt/scans missing) → running, image processed
#   D  the drop-in without its empty ReadWritePaths= line → the unit's list plus the drop-in's
#   E  `srd status --check` once stopped → 3
# Needs: apt-get install systemd-container debootstrap; network to a Debian mirror for the first run.
# Usage: scripts/verify_unit_nspawn.sh [ROOT_DIR]   (default /var/tmp/srd-nspawn-root; kept for reruns)
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-/var/tmp/srd-nspawn-root}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -x "$root/usr/bin/python3" ] || debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,python3,python3-venv,procps bookworm "$root" http://deb.debian.org/debian
python3 -m pip wheel -q . -w "$work/wheels"
mkdir -p "$work/results"
sed '/^ReadWritePaths=/ s|-/|/|g' systemd/srd.service > "$root/root/old-noprefix.service"
cp systemd/srd.service "$root/root/new.service"
python3 - "$root/root/dropin.conf" <<'PY'
import sys
from pathlib import Path
section = Path("README.md").read_text().split("### As a systemd service", 1)[1]
Path(sys.argv[1]).write_text(section.split("```ini", 1)[1].split("```", 1)[0].lstrip("\n"))
PY
cat > "$root/root/srd-check.sh" <<'INNER'
#!/bin/bash
exec > /results/log.txt 2>&1
SRD=/opt/srd/venv/bin/srd
PY=/opt/srd/venv/bin/python
drop() { $PY -c "import cv2,numpy as np,sys,zlib; cv2.imwrite(sys.argv[1], np.random.default_rng(zlib.crc32(sys.argv[1].encode())).integers(0,255,(40,50,3),dtype=np.uint8))" "$1"; chown srd:srd "$1"; }
waitfor() { for i in $(seq 60); do [ -e "$1" ] && return 0; sleep 1; done; return 1; }
systemctl --version | head -1
# start from a clean slate (a rerun of this script in the same root)
userdel srd 2>/dev/null; rm -rf /opt/srd /etc/srd /srv/photos /data /var/lib/srd /etc/systemd/system/srd.service /etc/systemd/system/srd.service.d /etc/systemd/system/multi-user.target.wants/srd.service
useradd --system --home-dir /var/lib/srd --shell /usr/sbin/nologin srd
python3 -m venv /opt/srd/venv && /opt/srd/venv/bin/pip install -q --no-index --find-links /wheels srd
install -D -m 0640 -o root -g srd /opt/srd/venv/share/doc/srd/srd.example.yaml /etc/srd/srd.yaml
echo "=== A: the unit without - prefixes, /srv/photos present, /mnt/nas/scans missing"
mkdir -p /srv/photos
cp /root/old-noprefix.service /etc/systemd/system/srd.service
systemctl daemon-reload
systemctl start srd; echo "A: start rc=$?"
systemctl show srd -p ActiveState -p Result -p ExecMainStatus -p ExecMainCode
journalctl -u srd --no-pager -n 6
systemctl stop srd; systemctl reset-failed srd
echo "=== B: the README's steps in order, the new unit, folders under /srv/photos, /mnt/nas/scans missing"
cat > /etc/srd/srd.yaml <<EOF
state_dir: /var/lib/srd
workers: 1
inboxes:
  - {path: /srv/photos/inbox, outbox: /srv/photos/outbox, failed: /srv/photos/failed}
EOF
install -d -o srd -g srd /srv/photos /srv/photos/inbox
$SRD config check /etc/srd/srd.yaml; echo "B: config check rc=$?"
cp /root/new.service /etc/systemd/system/srd.service
systemctl daemon-reload && systemctl enable --now srd; echo "B: enable --now rc=$?"
systemctl show srd -p ActiveState -p SubState -p Result -p Documentation -p ReadWritePaths
drop /srv/photos/inbox/b.png
waitfor /srv/photos/outbox/b.png && echo "B: output written" || echo "B: NO OUTPUT"
ls -la /srv/photos/outbox
$SRD status --config /etc/srd/srd.yaml; $SRD status --check --config /etc/srd/srd.yaml; echo "B: check rc=$?"
for doc in $(systemctl show srd -p Documentation --value); do f=${doc#file://}; ls -la "$f"; done
journalctl -u srd --no-pager -n 5
echo "=== C: the README's drop-in, folders under /data/photos, /mnt/scans missing"
systemctl stop srd
mkdir -p /etc/systemd/system/srd.service.d && cp /root/dropin.conf /etc/systemd/system/srd.service.d/override.conf
sed -i 's|/srv/photos|/data/photos|g' /etc/srd/srd.yaml
install -d -o srd -g srd /data/photos /data/photos/inbox
systemctl daemon-reload && systemctl start srd; echo "C: start rc=$?"
systemctl show srd -p ActiveState -p SubState -p ReadWritePaths -p RequiresMountsFor
drop /data/photos/inbox/c.png
waitfor /data/photos/outbox/c.png && echo "C: output written" || echo "C: NO OUTPUT"
$SRD status --check --config /etc/srd/srd.yaml; echo "C: check rc=$?"
ls -la /data/photos/outbox; journalctl -u srd --no-pager -n 3
echo "=== D: the same drop-in without the empty ReadWritePaths= line adds to the unit's list"
systemctl stop srd
grep -v '^ReadWritePaths=$' /root/dropin.conf > /etc/systemd/system/srd.service.d/override.conf
systemctl daemon-reload; systemctl show srd -p ReadWritePaths
echo "=== E: srd status --check while stopped"
$SRD status --check --config /etc/srd/srd.yaml; echo "E: check rc=$?"
echo DONE
systemctl poweroff
INNER
chmod +x "$root/root/srd-check.sh"
cat > "$root/etc/systemd/system/srd-check.service" <<'UNIT'
[Unit]
Description=follow README's systemd steps, then power off
[Service]
Type=oneshot
ExecStart=/root/srd-check.sh
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/srd-check.service "$root/etc/systemd/system/multi-user.target.wants/srd-check.service"
timeout 600 systemd-nspawn -q --register=no --keep-unit -D "$root" -b \
    --bind-ro="$work/wheels:/wheels" --bind="$work/results:/results" > "$work/boot.log" 2>&1 < /dev/null || true
cat "$work/results/log.txt"
for expected in "ExecMainStatus=226" "B: enable --now rc=0" "B: output written" "B: check rc=0" "C: start rc=0" \
    "C: output written" "C: check rc=0" "ReadWritePaths=-/srv/photos -/mnt/nas/scans -/data/photos -/mnt/scans" \
    "E: check rc=3" "DONE"; do
  grep -qxF "$expected" "$work/results/log.txt" || { echo "verify_unit_nspawn: expected '$expected'" >&2; exit 1; }
done
echo "verify_unit_nspawn: all scenarios as expected"
