# mcshm: build and install everything under a prefix.
#   make                      build (release)
#   make install PREFIX=/usr/local [DESTDIR=/tmp/stage] [LIBDIR=/usr/local/lib]
#   make deb                  libmcshm0, libmcshm-dev and mcshm .deb files in target/deb
#                             (packaging/deb.sh; prints their paths)
#   make test                 the whole test suite (same as: cargo test --workspace)
# PROFILE=debug installs the debug build (the install test uses it).

PREFIX  ?= /usr/local
DESTDIR ?=
PROFILE ?= release
CARGO   ?= cargo

# Where the library goes, without DESTDIR (a Debian package: /usr/lib/MULTIARCH).
LIBDIR    ?= $(PREFIX)/lib
BINDIR     = $(DESTDIR)$(PREFIX)/bin
LIBDEST    = $(DESTDIR)$(LIBDIR)
INCLUDEDIR = $(DESTDIR)$(PREFIX)/include
PCDIR      = $(LIBDEST)/pkgconfig
MANDIR     = $(DESTDIR)$(PREFIX)/share/man
BASHDIR    = $(DESTDIR)$(PREFIX)/share/bash-completion/completions
ZSHDIR     = $(DESTDIR)$(PREFIX)/share/zsh/site-functions
FISHDIR    = $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
UNITDIR    = $(DESTDIR)$(PREFIX)/lib/systemd/system
TMPFILESDIR = $(DESTDIR)$(PREFIX)/lib/tmpfiles.d
SYSUSERSDIR = $(DESTDIR)$(PREFIX)/lib/sysusers.d
UNITS      = mcshm-restore@.service mcadmin-watch@.service mcadmin-sync.service mcproxy@.service

# Cargo's build directory: $CARGO_TARGET_DIR when set (cargo builds there), else target.
TARGET  = $(or $(CARGO_TARGET_DIR),target)/$(PROFILE)
VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
SOMAJOR = $(firstword $(subst ., ,$(VERSION)))
ifeq ($(PROFILE),release)
PROFILE_FLAG = --release
else
PROFILE_FLAG =
endif

.PHONY: all build test install uninstall clean deb

all: build

build:
	$(CARGO) build $(PROFILE_FLAG) --bin mcadmin --bin mclient --bin mcproxy
	$(CARGO) build $(PROFILE_FLAG) -p libmcshm-c

test:
	$(CARGO) test --workspace

install: build
	install -d $(BINDIR) $(LIBDEST) $(INCLUDEDIR) $(PCDIR) $(MANDIR)/man1 $(MANDIR)/man3 \
		$(MANDIR)/man5 $(MANDIR)/man8 $(BASHDIR) $(ZSHDIR) $(FISHDIR) $(UNITDIR) \
		$(TMPFILESDIR) $(SYSUSERSDIR)
	install -m 0755 $(TARGET)/mcadmin $(TARGET)/mclient $(TARGET)/mcproxy $(BINDIR)/
	install -m 0644 $(TARGET)/libmcshm.so $(LIBDEST)/libmcshm.so.$(VERSION)
	ln -sf libmcshm.so.$(VERSION) $(LIBDEST)/libmcshm.so.$(SOMAJOR)
	ln -sf libmcshm.so.$(SOMAJOR) $(LIBDEST)/libmcshm.so
	install -m 0644 $(TARGET)/libmcshm.a $(LIBDEST)/
	install -m 0644 include/mcshm.h $(INCLUDEDIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
		-e 's|@INCLUDEDIR@|$(PREFIX)/include|' -e 's|@VERSION@|$(VERSION)|' \
		mcshm.pc.in > $(PCDIR)/mcshm.pc
	install -m 0644 man/mclient.1 $(MANDIR)/man1/
	install -m 0644 man/libmcshm.3 $(MANDIR)/man3/
	install -m 0644 man/mcshm.5 $(MANDIR)/man5/
	install -m 0644 man/mcadmin.8 man/mcproxy.8 $(MANDIR)/man8/
	for tool in mcadmin mclient; do \
		$(TARGET)/$$tool completions bash > $(BASHDIR)/$$tool && \
		$(TARGET)/$$tool completions zsh > $(ZSHDIR)/_$$tool && \
		$(TARGET)/$$tool completions fish > $(FISHDIR)/$$tool.fish || exit 1; \
	done
	$(TARGET)/mcproxy --completions bash > $(BASHDIR)/mcproxy
	$(TARGET)/mcproxy --completions zsh > $(ZSHDIR)/_mcproxy
	$(TARGET)/mcproxy --completions fish > $(FISHDIR)/mcproxy.fish
	for unit in $(UNITS); do \
		sed 's|/usr/local/bin/|$(PREFIX)/bin/|g' contrib/$$unit > $(UNITDIR)/$$unit || exit 1; \
	done
	install -m 0644 contrib/mcshm.tmpfiles $(TMPFILESDIR)/mcshm.conf
	install -m 0644 contrib/mcshm.sysusers $(SYSUSERSDIR)/mcshm.conf
	@case "$(LIBDIR)" in /usr/lib|/usr/lib/*|/lib|/lib/*) ;; *) \
		echo "make install: $(LIBDIR) may not be on the loader's path: run ldconfig $(LIBDIR)," \
		"or add it to /etc/ld.so.conf.d/, or link with -Wl,-rpath,$(LIBDIR)";; esac

deb:
	packaging/deb.sh

uninstall:
	rm -f $(BINDIR)/mcadmin $(BINDIR)/mclient $(BINDIR)/mcproxy $(LIBDEST)/libmcshm.so \
		$(LIBDEST)/libmcshm.so.$(SOMAJOR) $(LIBDEST)/libmcshm.so.$(VERSION) $(LIBDEST)/libmcshm.a \
		$(INCLUDEDIR)/mcshm.h $(PCDIR)/mcshm.pc $(MANDIR)/man1/mclient.1 $(MANDIR)/man3/libmcshm.3 \
		$(MANDIR)/man5/mcshm.5 $(MANDIR)/man8/mcadmin.8 $(MANDIR)/man8/mcproxy.8 $(BASHDIR)/mcadmin $(BASHDIR)/mclient \
		$(ZSHDIR)/_mcadmin $(ZSHDIR)/_mclient $(FISHDIR)/mcadmin.fish $(FISHDIR)/mclient.fish \
		$(BASHDIR)/mcproxy $(ZSHDIR)/_mcproxy $(FISHDIR)/mcproxy.fish \
		$(addprefix $(UNITDIR)/,$(UNITS)) $(TMPFILESDIR)/mcshm.conf $(SYSUSERSDIR)/mcshm.conf

clean:
	$(CARGO) clean
