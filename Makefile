# mcshm: build and install everything under a prefix.
#   make                      build (release)
#   make install PREFIX=/usr/local [DESTDIR=/tmp/stage]
#   make test                 the whole test suite (same as: cargo test --workspace)
# PROFILE=debug installs the debug build (the install test uses it).

PREFIX  ?= /usr/local
DESTDIR ?=
PROFILE ?= release
CARGO   ?= cargo

BINDIR     = $(DESTDIR)$(PREFIX)/bin
LIBDIR     = $(DESTDIR)$(PREFIX)/lib
INCLUDEDIR = $(DESTDIR)$(PREFIX)/include
PCDIR      = $(LIBDIR)/pkgconfig
MANDIR     = $(DESTDIR)$(PREFIX)/share/man
BASHDIR    = $(DESTDIR)$(PREFIX)/share/bash-completion/completions
ZSHDIR     = $(DESTDIR)$(PREFIX)/share/zsh/site-functions
FISHDIR    = $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
UNITDIR    = $(DESTDIR)$(PREFIX)/lib/systemd/system

TARGET  = target/$(PROFILE)
VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ifeq ($(PROFILE),release)
PROFILE_FLAG = --release
else
PROFILE_FLAG =
endif

.PHONY: all build test install uninstall clean

all: build

build:
	$(CARGO) build $(PROFILE_FLAG) --bin mcadmin --bin mclient --bin mcproxy
	$(CARGO) build $(PROFILE_FLAG) -p libmcshm-c

test:
	$(CARGO) test --workspace

install: build
	install -d $(BINDIR) $(LIBDIR) $(INCLUDEDIR) $(PCDIR) $(MANDIR)/man1 $(MANDIR)/man3 \
		$(MANDIR)/man5 $(MANDIR)/man8 $(BASHDIR) $(ZSHDIR) $(FISHDIR) $(UNITDIR)
	install -m 0755 $(TARGET)/mcadmin $(TARGET)/mclient $(TARGET)/mcproxy $(BINDIR)/
	install -m 0755 $(TARGET)/libmcshm.so $(LIBDIR)/
	install -m 0644 $(TARGET)/libmcshm.a $(LIBDIR)/
	install -m 0644 include/mcshm.h $(INCLUDEDIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(PREFIX)/lib|' \
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
	sed 's|/usr/local/bin/|$(PREFIX)/bin/|g' contrib/mcadmin-watch@.service > $(UNITDIR)/mcadmin-watch@.service
	sed 's|/usr/local/bin/|$(PREFIX)/bin/|g' contrib/mcadmin-sync.service > $(UNITDIR)/mcadmin-sync.service
	sed 's|/usr/local/bin/|$(PREFIX)/bin/|g' contrib/mcproxy@.service > $(UNITDIR)/mcproxy@.service

uninstall:
	rm -f $(BINDIR)/mcadmin $(BINDIR)/mclient $(BINDIR)/mcproxy $(LIBDIR)/libmcshm.so $(LIBDIR)/libmcshm.a \
		$(INCLUDEDIR)/mcshm.h $(PCDIR)/mcshm.pc $(MANDIR)/man1/mclient.1 $(MANDIR)/man3/libmcshm.3 \
		$(MANDIR)/man5/mcshm.5 $(MANDIR)/man8/mcadmin.8 $(MANDIR)/man8/mcproxy.8 $(BASHDIR)/mcadmin $(BASHDIR)/mclient \
		$(ZSHDIR)/_mcadmin $(ZSHDIR)/_mclient $(FISHDIR)/mcadmin.fish $(FISHDIR)/mclient.fish \
		$(BASHDIR)/mcproxy $(ZSHDIR)/_mcproxy $(FISHDIR)/mcproxy.fish \
		$(UNITDIR)/mcadmin-watch@.service $(UNITDIR)/mcadmin-sync.service \
		$(UNITDIR)/mcproxy@.service

clean:
	$(CARGO) clean
