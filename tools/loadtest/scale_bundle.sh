#!/usr/bin/env bash
# Packs what tools/loadtest/scale_device.sh needs on a larger machine that has Python 3.12 but no
# PostgreSQL and no internet: PostgreSQL 15 with Citus and hll, PgBouncer, every shared library
# they load (the target copies only those it lacks), the zone database, and the Python packages
# as cp312 wheels. Run it on a Debian 12 host where `make up` and Citus work (../shared/citus/).
#
#   bash tools/loadtest/scale_bundle.sh [.devbundle]
set -euo pipefail
bundle=${1:-.devbundle}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/pgroot
pg=/usr/lib/postgresql/15
mkdir -p "$root$pg/bin" "$root$pg/lib" "$root/usr/share/postgresql" "$root/usr/sbin" "$root/libs" "$bundle/whl"
cp "$pg"/bin/{postgres,initdb,pg_ctl,psql,pg_isready} "$root$pg/bin/"
# Every module but the JIT (its LLVM is not carried; the stack runs with jit off by default).
find "$pg/lib" -maxdepth 1 -name '*.so' ! -name llvmjit.so -exec cp {} "$root$pg/lib/" \;
cp -r "$pg/lib/citus_decoders" "$root$pg/lib/"
cp -r /usr/share/postgresql/15 "$root/usr/share/postgresql/"
cp /usr/sbin/pgbouncer "$root/usr/sbin/"
cp -r /usr/share/zoneinfo "$root/zoneinfo"
# The libraries they link, less the C library itself (the target's newer glibc serves them).
find "$root/usr" -type f \( -name '*.so' -o -perm -u+x \) -exec ldd {} \; 2>/dev/null \
    | awk '/=>/ {print $3}' | sort -u \
    | grep -Ev '/(libc|libm|libpthread|libdl|librt|libresolv)\.so|ld-linux' \
    | xargs -I{} cp -L {} "$root/libs/"
tar -C "$root" -cf - . | xz -T0 -6 > "$bundle/pgbundle.tar.xz"
# The services' and the load generator's packages for CPython 3.12 on x86-64 Linux, at the versions
# this checkout's .venv holds (the target's own Python may lack any of them).
wanted='alembic|anyio|asgiref|asyncpg|click|crawler-user-agents|faker|geoip2fast|googleapis-common-protos|granian|greenlet|h11|httpcore|httpx|litestar|litestar-htmx|mako|markdown-it-py|markupsafe|maxminddb|mdurl|msgspec|multipart|opentelemetry-.*|packaging|polyfactory|protobuf|psycopg|psycopg-binary|rich|rich-click|sniffio|sqlalchemy|typing-extensions|ua-parser|ua-parser-builtins|ua-parser-rs|wrapt|multidict|psutil|uvloop|urllib3|certifi|requests|idna|charset-normalizer|pyyaml|pygments'
.venv/bin/pip freeze --exclude-editable | sed "s/_/-/g" | grep -Ei "^($wanted)==" > "$work/requirements.txt"
platforms=()
for tag in manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux2014 manylinux1 manylinux2010 manylinux_2_5 manylinux_2_12; do
    platforms+=(--platform "${tag}_x86_64")
done
# Pure-Python projects published only as source: built into wheels here.
grep -Ei '^(geoip2fast|crawler-user-agents)==' "$work/requirements.txt" \
    | xargs python3 -m pip wheel -q --no-deps -w "$bundle/whl"
grep -Evi '^(geoip2fast|crawler-user-agents)==' "$work/requirements.txt" > "$work/binary.txt"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$bundle/whl" -r "$work/binary.txt"
# geoip2fast's IPv6 and ASN databases are not read (ingest looks up IPv4 countries): 10 MB less to carry.
python3 - "$bundle"/whl/geoip2fast-*.whl <<'PY'
import os, sys, zipfile
wheel, unused = sys.argv[1], ("-asn-ipv6.dat.gz", "-asn.dat.gz", "-ipv6.dat.gz")
with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(wheel + ".new", "w", zipfile.ZIP_DEFLATED) as target:
    for item in source.infolist():
        if item.filename.endswith(unused):
            continue
        data = source.read(item.filename)
        if item.filename.endswith("RECORD"):
            data = b"\n".join(line for line in data.split(b"\n") if not any(u.encode() in line for u in unused))
        target.writestr(item, data)
os.replace(wheel + ".new", wheel)
PY
du -sh "$bundle"/*
