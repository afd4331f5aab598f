#!/usr/bin/env bash
# On a bare larger machine (Python 3.12, root, no PostgreSQL, no internet): installs the bundle
# that tools/loadtest/scale_bundle.sh made, then runs tools.loadtest.scale with the given arguments.
# Its files (scale.json, scale.md, the logs) go to $OUT.
#
#   OUT=/tmp/out bash tools/loadtest/scale_device.sh --engines single citus --levels 10000 20000
set -euo pipefail
bundle=${SCALE_BUNDLE:-.devbundle}
out=${OUT:-/tmp/sightline-scale}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$bundle"/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
python3 - "$bundle/pgbundle.tar.xz" <<'PY'
import sys, tarfile
tarfile.open(sys.argv[1]).extractall("/tmp/pgroot")
PY
cp -a /tmp/pgroot/usr/. /usr/
[ -e /usr/share/zoneinfo/UTC ] || cp -a /tmp/pgroot/zoneinfo /usr/share/zoneinfo
# Only the libraries this system lacks: its own stay in charge of everything else.
mkdir -p /opt/sightline-libs
ldconfig -p | awk '{print $1}' > /tmp/system-libraries.txt
for lib in /tmp/pgroot/libs/*; do
    grep -qx "$(basename "$lib")" /tmp/system-libraries.txt || cp -a "$lib" /opt/sightline-libs/
done
echo /opt/sightline-libs > /etc/ld.so.conf.d/zz-sightline.conf
ldconfig
for binary in /usr/lib/postgresql/15/bin/postgres /usr/sbin/pgbouncer /usr/lib/postgresql/15/lib/citus.so; do
    if ldd "$binary" | grep "not found"; then echo "$binary: libraries missing" >&2; exit 1; fi
done
id postgres >/dev/null 2>&1 || useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/sh postgres
# Tens of thousands of connections from one loopback address to one port need the ephemeral range
# wide, with the stack's own ports kept out of it (a Citus worker's port taken by a client's
# socket of the previous run would stop `sightline up`).
echo "6432,8001-8003,55432-55440" > /proc/sys/net/ipv4/ip_local_reserved_ports || true
echo "1024 65000" > /proc/sys/net/ipv4/ip_local_port_range || true
echo "copied libraries: $(ls /opt/sightline-libs | tr '\n' ' ')"
echo "$(nproc) cores; $(python3 --version)"
exec python3 -m tools.loadtest.scale --out "$out" "$@"
