#!/usr/bin/env bash
# make deb: the three packages Debian would split mcshm into, from one staged `make install`
# (PREFIX=/usr, the library in /usr/lib/MULTIARCH), in target/deb, their paths printed one a
# line on stdout (the shared library's first, the tools' last):
#   libmcshm0     libmcshm.so.0 (the SONAME) and libmcshm.so.VERSION, with shlibs, symbols and
#                 the ldconfig trigger
#   libmcshm-dev  mcshm.h, the libmcshm.so link, libmcshm.a, mcshm.pc, libmcshm(3); depends on
#                 libmcshm0 of the same version
#   mcshm         mcadmin, mclient, mcproxy (they link the library statically: no dependency on
#                 libmcshm0), manuals 1/5/8, completions, the systemd units with their
#                 sysusers.d and tmpfiles.d entries and maintainer scripts, /etc/mcshm examples,
#                 README and docs
# each with its copyright and changelog in /usr/share/doc/PACKAGE. The staged trees stay beside
# the packages (target/deb/PACKAGE_VERSION_ARCH/).
# Needs dpkg-dev (dpkg-shlibdeps, dpkg-architecture) and binutils. PROFILE=debug packages the
# debug build (the tests do, to skip a release build); the default is release.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROFILE="${PROFILE:-release}"
for tool in dpkg-deb dpkg-shlibdeps dpkg-architecture strip nm gzip make; do
    command -v "$tool" >/dev/null || { echo "make deb: missing $tool: apt-get install -y dpkg-dev binutils make" >&2; exit 2; }
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
somajor=${version%%.*}
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null)
libdir="usr/lib/$multiarch"
out=target/deb
mkdir -p "$out"
out=$(cd "$out" && pwd)
# Packages of another version would be installed with these by `apt install ./target/deb/*.deb`.
rm -rf "$out"/*.deb "$out"/stage "$out"/libmcshm0_* "$out"/libmcshm-dev_* "$out"/mcshm_*
stage="$out/stage"
mkdir -p "$stage"
echo "make deb: staging make install (PROFILE=$PROFILE)" >&2
make -s install DESTDIR="$stage" PREFIX=/usr LIBDIR="/$libdir" >/dev/null

# What Debian expects of the files: stripped objects (no .comment in the static library
# either: lintian's static-library-has-unneeded-sections), compressed manuals.
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
    "$stage"/usr/bin/mcadmin "$stage"/usr/bin/mclient "$stage"/usr/bin/mcproxy \
    "$stage/$libdir/libmcshm.so.$version"
strip --strip-debug --remove-section=.comment "$stage/$libdir/libmcshm.a"
find "$stage/usr/share/man" -type f -name '*.[0-9]' -exec gzip -9n {} +
date=$(date -uR -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")

# tree PACKAGE: an empty staged tree for PACKAGE, with its copyright and changelog.
tree() {
    local dir="$out/${1}_${version}_${arch}"
    install -d "$dir/DEBIAN" "$dir/usr/share/doc/$1"
    install -m 0644 packaging/copyright "$dir/usr/share/doc/$1/copyright"
    sed "s/@VERSION@/$version/; s/@DATE@/$date/" packaging/changelog \
        | gzip -9n > "$dir/usr/share/doc/$1/changelog.gz"
    echo "$dir"
}
# take PACKAGE_TREE PATH...: move PATHs (relative to the stage) into the package's tree.
take() {
    local dir=$1 path
    shift
    for path in "$@"; do
        install -d "$dir/$(dirname "$path")"
        mv "$stage/$path" "$dir/$path"
    done
}

lib0=$(tree libmcshm0)
take "$lib0" "$libdir/libmcshm.so.$version" "$libdir/libmcshm.so.$somajor"
dev=$(tree libmcshm-dev)
take "$dev" usr/include/mcshm.h "$libdir/libmcshm.so" "$libdir/libmcshm.a" \
    "$libdir/pkgconfig/mcshm.pc" usr/share/man/man3
tools=$(tree mcshm)
take "$tools" usr/bin usr/share/man usr/share/bash-completion usr/share/zsh usr/share/fish \
    usr/lib/systemd usr/lib/tmpfiles.d usr/lib/sysusers.d
install -d "$tools/etc/mcshm"
install -m 0644 packaging/example.list "$tools/etc/mcshm/example.list"
install -m 0644 packaging/mcproxy-example.conf "$tools/etc/mcshm/mcproxy-example.conf"
install -m 0644 README.md docs/DESIGN.md docs/BENCHMARKS.md "$tools/usr/share/doc/mcshm/"
# As dh_compress: documents of more than 4 KiB are compressed (copyright stays as it is).
find "$tools/usr/share/doc/mcshm" -name '*.md' -size +4k -exec gzip -9n {} +
# Infos of lintian's that do not apply, each with the reason, as Debian ships them.
for package in libmcshm0 mcshm; do
    dir=$lib0
    [ "$package" = mcshm ] && dir=$tools
    install -D -m 0644 "packaging/$package.lintian-overrides" \
        "$dir/usr/share/lintian/overrides/$package"
done
# Everything the install staged has a package.
left=$(find "$stage" ! -type d)
[ -z "$left" ] || { echo "make deb: staged but in no package:" >&2; echo "$left" >&2; exit 1; }
rm -rf "$stage"

# The shared library's dependency information: shlibs (the package a program linked with it
# needs) and symbols (every exported symbol, since this version), as dh_makeshlibs writes them.
printf 'libmcshm %s libmcshm0 (>= %s)\n' "$somajor" "$version" > "$lib0/DEBIAN/shlibs"
{
    printf 'libmcshm.so.%s libmcshm0 #MINVER#\n' "$somajor"
    printf '* Build-Depends-Package: libmcshm-dev\n'
    nm -D --defined-only "$lib0/$libdir/libmcshm.so.$version" \
        | awk -v v="$version" '$2 ~ /^[TDRBVW]$/ { print " " $3 "@Base " v }' | sort
} > "$lib0/DEBIAN/symbols"
echo "activate-noawait ldconfig" > "$lib0/DEBIAN/triggers"
printf '/etc/mcshm/example.list\n/etc/mcshm/mcproxy-example.conf\n' > "$tools/DEBIAN/conffiles"
install -m 0755 packaging/postinst packaging/prerm packaging/postrm "$tools/DEBIAN/"

# shlibdeps OBJECT...: the Depends of these objects (dpkg-shlibdeps wants a debian/control).
shlibdeps() {
    local work
    work=$(mktemp -d)
    mkdir -p "$work/debian"
    printf 'Source: mcshm\n\nPackage: mcshm\nArchitecture: any\n' > "$work/debian/control"
    (cd "$work" && dpkg-shlibdeps -O "$@" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
    rm -rf "$work"
}

# build PACKAGE TREE DEPENDS: the control file from PACKAGE's paragraph of packaging/control,
# md5sums, then the .deb, whose path is printed.
build() {
    local package=$1 dir=$2 depends=$3 size deb
    size=$(du -sk --exclude=DEBIAN "$dir" | cut -f1)
    awk -v RS= -v ORS='\n' -v p="Package: $package" 'index($0, p "\n") == 1' packaging/control \
        | sed -e "s/@VERSION@/$version/g" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
            -e "s/@SIZE@/$size/" > "$dir/DEBIAN/control"
    grep -q "^Package: $package\$" "$dir/DEBIAN/control" \
        || { echo "make deb: no paragraph for $package in packaging/control" >&2; exit 1; }
    (cd "$dir" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | sort \
        | xargs md5sum) > "$dir/DEBIAN/md5sums"
    find "$dir/DEBIAN" -type f ! -name postinst ! -name prerm ! -name postrm -exec chmod 0644 {} +
    deb="$out/${package}_${version}_${arch}.deb"
    dpkg-deb --root-owner-group -Zxz --build "$dir" "$deb" >/dev/null
    echo "${deb#"$PWD"/}"
}

build libmcshm0 "$lib0" "$(shlibdeps "$lib0/$libdir/libmcshm.so.$version")"
build libmcshm-dev "$dev" ""
build mcshm "$tools" "$(shlibdeps "$tools"/usr/bin/*)"
