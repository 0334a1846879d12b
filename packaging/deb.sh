#!/usr/bin/env bash
# make deb: target/deb/mcshm_VERSION_ARCH.deb, from a staged `make install` (PREFIX=/usr, the
# library in /usr/lib/MULTIARCH): the three tools, libmcshm.so.0 with its SONAME and dev link,
# libmcshm.a, mcshm.h, mcshm.pc, man pages, completions, the systemd units with their
# sysusers.d and tmpfiles.d entries, /etc/mcshm with an example, copyright and changelog.
# Needs dpkg-dev (dpkg-shlibdeps, dpkg-architecture). PROFILE=debug packages the debug build
# (the tests do, to skip a release build); the default is release.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROFILE="${PROFILE:-release}"
for tool in dpkg-deb dpkg-shlibdeps dpkg-architecture strip gzip; do
    command -v "$tool" >/dev/null || { echo "make deb: missing $tool: apt-get install -y dpkg-dev binutils" >&2; exit 2; }
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null)
out=target/deb
stage="$out/mcshm_${version}_${arch}"
rm -rf "$stage"
mkdir -p "$stage"
stage=$(cd "$stage" && pwd)
echo "make deb: staging make install (PROFILE=$PROFILE)" >&2
make -s install DESTDIR="$stage" PREFIX=/usr LIBDIR="/usr/lib/$multiarch" >/dev/null
lib="$stage/usr/lib/$multiarch"

# What Debian expects of the files: stripped objects, compressed manuals, docs, an example.
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
    "$stage"/usr/bin/mcadmin "$stage"/usr/bin/mclient "$stage"/usr/bin/mcproxy \
    "$lib/libmcshm.so.$version"
strip --strip-debug "$lib/libmcshm.a"
find "$stage/usr/share/man" -type f -name '*.[0-9]' -exec gzip -9n {} +
doc="$stage/usr/share/doc/mcshm"
install -d "$doc" "$stage/etc/mcshm"
install -m 0644 packaging/copyright "$doc/copyright"
sed "s/@VERSION@/$version/; s/@DATE@/$(date -uR -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")/" \
    packaging/changelog | gzip -9n > "$doc/changelog.gz"
install -m 0644 packaging/example.list "$stage/etc/mcshm/example.list"
install -m 0644 packaging/mcproxy-example.conf "$stage/etc/mcshm/mcproxy-example.conf"

# The package's metadata.
meta="$stage/DEBIAN"
install -d "$meta"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debian"
printf 'Source: mcshm\n\nPackage: mcshm\nArchitecture: any\n' > "$work/debian/control"
depends=$(cd "$work" && dpkg-shlibdeps -O "$stage"/usr/bin/* "$lib/libmcshm.so.$version" 2>/dev/null \
    | sed -n 's/^shlibs:Depends=//p')
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
    -e "s/@SIZE@/$size/" packaging/control > "$meta/control"
echo "libmcshm ${version%%.*} mcshm (>= $version)" > "$meta/shlibs"
echo "activate-noawait ldconfig" > "$meta/triggers"
printf '/etc/mcshm/example.list\n/etc/mcshm/mcproxy-example.conf\n' > "$meta/conffiles"
install -m 0755 packaging/postinst "$meta/postinst"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | sort \
    | xargs md5sum) > "$meta/md5sums"
chmod 0644 "$meta"/{control,shlibs,triggers,conffiles,md5sums}

deb="$out/mcshm_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
