//! The committed man pages match what the code says. `man/mcadmin.8` is generated from the
//! clap definitions plus the hand-written sections below; `man/mcshm.5` must carry the byte
//! table of `table/src/format.rs`. Refresh with: MCSHM_UPDATE_MAN=1 cargo test --test man
//! (which also runs man/update-mcshm-5.py).

#[allow(dead_code)]
#[path = "../mcadmin/src/cli.rs"]
mod cli;

#[allow(dead_code)]
#[path = "../mclient/src/cli.rs"]
mod mclient_cli;

#[allow(dead_code)]
#[path = "../mcproxy/src/cli.rs"]
mod mcproxy_cli;

use std::path::Path;

use clap::CommandFactory;

const REFRESH: &str = "MCSHM_UPDATE_MAN=1 cargo test --test man";

const MCADMIN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
.B 0
Success; for \fBstatus\fR the server is up; for \fBwait\fR the version changed.
.TP
.B 1
The answer is no: for \fBstatus\fR the server is down or draining; for \fBwait\fR the timeout
passed; \fBdrain\fR was interrupted (the server stays draining; run it again to resume);
\fBbuckets\fR: a move was interrupted, or this host's table did not mirror the staged map within
\fB\-\-mirror\-timeout\fR (the moves stay staged: \fBbuckets finish\fR completes them);
\fBdomains remove\fR: processes use the domain (nothing removed).
.TP
.B 2
Usage error or bad input (address, domain name, weight, reason, list line; for \fBload\fR a list
cut short or edited without \fB\-\-partial\fR, over 64 MiB or with a line over 4096 bytes, or of
no servers without \fB\-\-allow\-empty\fR; \fBadd\fR of a server that holds items without
\fB\-\-flush\fR or \fB\-\-no\-flush\fR). Nothing was changed.
.TP
.B 3
Not found: no such domain (the message names the directory looked in) or server, or \fBadd\fR
of a server already present, under its name or another that resolves to it. Nothing was
changed. \fBwatch\fR of a domain that does not exist or was removed.
.TP
.B 4
Registry failure: permission denied, a corrupt, truncated or unsafe file (symlink, foreign owner
in a world-writable directory), a file of a newer format, or another I/O error.
.TP
.B 5
A server failed: \fBup\fR could not flush it (it stays down), \fBdrain\fR could not reach it,
\fBbuckets\fR could not move some keys (the moves stay staged).
.TP
.B 6
etcd failure (with \fB\-\-etcd\fR): unreachable, refused the request, or holds an invalid
value. Nothing was changed.
.SH ENVIRONMENT
.TP
.B MCSHM_DIR
Registry directory when \fB\-\-dir\fR is not given.
.TP
.B MCSHM_DOMAIN
Domain when \fB\-\-domain\fR is not given (default \fBdefault\fR).
.TP
.B XDG_RUNTIME_DIR
For users other than root, when \fI/run/mcshm\fR does not exist, the registry directory is
\fI$XDG_RUNTIME_DIR/mcshm\fR.
.SH FILES
.TP
.I /run/mcshm/DOMAIN.mcshm
The server table of a domain (format in \fBmcshm\fR(5)); files 0644, directory 0755. It lives on
tmpfs: keep the durable list in a config file and replay it at boot with \fBmcadmin load\fR.
.TP
.I /etc/mcshm/DOMAIN.list
The durable server list, written by \fBdump\fR and loaded at boot by \fBmcshm\-restore@DOMAIN\fR
(\fBload \-\-initial\fR). One server per line, then the end line
.RS
.PP
.nf
# end: 3 servers, crc32 0x1c291ca3
.fi
.PP
which counts the server lines and holds the CRC\-32 (zlib's \fBcrc32\fR) of every byte before it.
\fBload\fR refuses a list without it, with a count or checksum that does not match, or with more
than blank lines after it: a list cut short changes no table, and at boot leaves the domain
absent. A list written or edited by hand loads with \fB\-\-partial\fR; \fBdump\fR writes it
back with a new end line.
.RE
.SH EXAMPLES
.nf
mcadmin \-\-domain myapp add cache1:11211 cache2:11211 \-\-weight 2
mcadmin \-\-domain myapp add cache3 \-\-down \-\-retry\-interval \-1
mcadmin \-\-domain myapp down cache1:11211 \-\-reason 'disk failure'
mcadmin \-\-domain myapp status cache1:11211 || echo "cache1 is down"
mcadmin \-\-domain myapp list \-\-json | jq '.servers[].address'
mcadmin \-\-domain myapp explain user:42           # which server owns the key, and why
mcadmin metrics > /var/lib/prometheus/node\-exporter/mcshm.prom.tmp   # then mv it in place
mcadmin \-\-domain myapp watch \-\-metrics 127.0.0.1:9152   # the same page over HTTP
mcadmin \-\-domain myapp dump > /etc/mcshm/myapp.list
mcadmin \-\-domain myapp load /etc/mcshm/myapp.list   # at boot
mcadmin \-\-domain myapp load \-\-partial hand\-written.list
mcadmin \-\-domain myapp load \-\-dry\-run new.list    # what would change
mcadmin \-\-domain myapp add \-\-no\-flush cache1:11211   # adopt a cache in use
mcadmin domains remove oldapp
v=$(mcadmin \-\-domain myapp \-\-json list | jq .version); mcadmin \-\-domain myapp wait \-\-since "$v"
.fi
.SH "SEE ALSO"
\fBmcshm\fR(5), \fBmclient\fR(1)
"#;

const MCLIENT_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
.B 0
Hit, stored, deleted or touched; for several keys, every key hit.
.TP
.B 1
Miss, not stored, not found, or cas mismatch; for several keys, some missed.
.TP
.B 2
Usage error or bad input: a bad key (empty, over 250 bytes, whitespace or control bytes, or in
mcshm's reserved namespace: with the domain's key prefix before it, starting with
\fBmcshm.fence.\fR), a bad number or address, an unknown domain. Nothing was sent.
.TP
.B 3
Server, network or registry error: the key's server is down (failover none), a timeout, a refused
connection, SERVER_ERROR (e.g. a value over the item size limit).
.SH OUTPUT
One key: \fBget\fR writes the value's bytes and nothing else. Several keys (\fBget\fR,
\fBgets\fR, \fBbulk\-get\fR): one record per hit, binary\-safe,
.PP
.nf
KEY FLAGS LENGTH [CAS]\en<LENGTH bytes>\en
.fi
.PP
in the order asked; misses are left out. \fBbulk\-set\fR reads the same records. With
\fB\-\-json\fR, values that are not UTF\-8 are given as \fBvalue_base64\fR.
.SH ENVIRONMENT
.TP
.B MEMCACHED_SERVERS
Server list when \fB\-\-servers\fR is not given (the libmemcached tools' syntax:
HOST[:PORT],...). Overrides the domain.
.TP
.B MCSHM_DIR
Registry directory when \fB\-\-dir\fR is not given.
.TP
.B MCSHM_DOMAIN
Domain when \fB\-\-domain\fR is not given (default \fBdefault\fR).
.SH FILES
.TP
.I /run/mcshm/DOMAIN.mcshm
The domain's server table (\fBmcshm\fR(5)). Reading needs read permission; counting failures
and marking servers down for every process needs write permission.
.SH EXAMPLES
.nf
echo hello | mclient \-\-domain myapp set greeting    # stores "hello\en"
mclient \-\-domain myapp get greeting > greeting.txt || echo miss
mclient \-\-servers 10.0.0.1,10.0.0.2:11212 incr visits
mclient which user:42
seq 1 100000 | sed 's/^/k/' | mclient bulk\-get > values.records
mclient \-\-domain old get a b c | mclient \-\-domain new bulk\-set
.fi
.SH "SEE ALSO"
\fBmcadmin\fR(8), \fBmcshm\fR(5)
"#;

/// Escapes text for roff.
fn roff(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('-', "\\-")
        .replace('\n', "\n.br\n")
        .replace("\n.br\n\n.br\n", "\n.PP\n")
}

fn commands_section(cmd: &mut clap::Command) -> String {
    let mut out = String::from(".SH COMMANDS\n");
    for sub in cmd.get_subcommands_mut().filter(|s| !s.is_hide_set()) {
        let usage = sub.render_usage().to_string();
        let usage = usage.trim_start_matches("Usage: ");
        out += &format!(".SS \"{}\"\n", roff(usage));
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        out += &format!("{}\n", roff(&about));
        for arg in sub
            .get_arguments()
            .filter(|a| !a.is_global_set() && a.get_id() != "help")
        {
            let Some(long) = arg.get_long() else { continue };
            let value = match (arg.get_action().takes_values(), arg.get_value_names()) {
                (true, Some(names)) => format!(" \\fI{}\\fR", names[0]),
                _ => String::new(),
            };
            out += &format!(".TP\n\\fB\\-\\-{}\\fR{value}\n", roff(long));
            out += &format!(
                "{}\n",
                roff(&arg.get_help().map(|h| h.to_string()).unwrap_or_default())
            );
        }
    }
    out
}

fn page(cmd: clap::Command, section: &str, extra: &str) -> Vec<u8> {
    let mut cmd = cmd.version(env!("CARGO_PKG_VERSION"));
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .manual("mcshm")
        .source(format!("mcshm {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out).unwrap();
    man.render_name_section(&mut out).unwrap();
    man.render_synopsis_section(&mut out).unwrap();
    man.render_description_section(&mut out).unwrap();
    man.render_options_section(&mut out).unwrap();
    out.extend(commands_section(&mut cmd).into_bytes());
    out.extend(extra.as_bytes());
    out
}

/// Compares a generated page with the committed one (or writes it when refreshing).
fn check(path: &str, generated: &[u8]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    if std::env::var_os("MCSHM_UPDATE_MAN").is_some() {
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date; refresh it with: {REFRESH}",
        path.display()
    );
}

#[test]
fn mcadmin_8_is_current() {
    cli::Cli::command().debug_assert();
    check(
        "man/mcadmin.8",
        &page(cli::Cli::command(), "8", MCADMIN_EXTRA),
    );
}

#[test]
fn mclient_1_is_current() {
    mclient_cli::Cli::command().debug_assert();
    check(
        "man/mclient.1",
        &page(mclient_cli::Cli::command(), "1", MCLIENT_EXTRA),
    );
}

const MCPROXY_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
.B 0
Stopped by SIGTERM or SIGINT, after answering the requests in flight.
.TP
.B 2
Usage error or bad input (listen address, domain name, size).
.TP
.B 3
A domain to serve does not exist: create it with \fBmcadmin add\fR.
.TP
.B 4
Registry failure: permission denied, a corrupt or unsafe file, a file of a newer format.
.TP
.B 5
An address cannot be listened on (in use, permission denied).
.SH PROTOCOL
The memcached text protocol: \fBget gets gat gats\fR (many keys: split per server, the hits
merged in the order the keys were asked), \fBset add replace append prepend cas\fR,
\fBdelete incr decr touch flush_all\fR (every up server), \fBnoreply\fR, \fBversion\fR
(\fB1.6.0 mcproxy\-\fIversion\fR), \fBverbosity\fR, \fBquit\fR; the meta commands
\fBmg ms md ma me mn\fR, with quiet mode (\fBq\fR) applied by the proxy; \fBstats\fR (the
proxy's counters: connections, commands, hits, errors, and per server requests, errors,
connections and mean latency); \fBconfig get cluster\fR in ElastiCache's auto-discovery format
(the table version, then \fIhost\fR|\fIip\fR|\fIport\fR of each up server). A server that
fails or times out answers \fBSERVER_ERROR\fR \fIserver\fR: \fIwhat\fR for the requests it
carried; the failure counts against it in the shared table as for every libmcshm process.
Malformed input gets memcached's own replies (\fBERROR\fR, \fBCLIENT_ERROR bad command line
format\fR, \fBCLIENT_ERROR bad data chunk\fR, \fBSERVER_ERROR object too large for cache\fR);
a key in mcshm's reserved namespace (\fBmcshm.fence.\fR, each domain's fencing epoch on the
servers; the key as sent, a base64 key decoded, or with the domain's key prefix before it) is
answered \fBCLIENT_ERROR keys starting with mcshm.fence. are reserved by mcshm (fencing)\fR
(binary: "invalid arguments") and never reaches a server;
a line longer than 64 KiB (2 MiB for \fBget gets gat gats\fR: 100 000 keys) is refused and
the connection closed; a client that takes longer than \fB\-\-client\-timeout\fR over one
command, however its bytes trickle in, is disconnected.
.PP
The binary protocol, recognised per connection by its first byte (0x80): \fBget getq getk
getkq\fR (with the cas), \fBset add replace\fR and their quiet forms (a non\-zero cas makes a
cas), \fBappend prepend delete\fR (and quiet), \fBincrement decrement\fR with initial value
and expiration, \fBtouch gat gatq gatk gatkq\fR, \fBnoop version flush stat quit\fR, and SASL
(\fBlist mechs\fR: PLAIN; \fBauth\fR PLAIN checked against \fB\-\-client\-auth\fR; without it,
"auth error" at once). Each request goes to the servers as the text command it stands for,
through the same routing, so the servers need nothing. Quiet requests answer only errors (and a
get only its hits). An unknown opcode is answered "unknown command" and logged; a body over
\fB\-\-max\-item\-size\fR is answered "value too large" and skipped; a frame whose lengths lie
closes the connection. PHP sessions (php\-memcached's defaults: binary protocol, locking) work
through the proxy as configured: \fBsession.save_path\fR = the proxy's address.
.PP
Keys are placed by the domain's distribution (\fBmcadmin policy \-\-distribution\fR). With a
key prefix (\fBmcadmin policy \-\-prefix\fR) clients send bare keys: the servers get them
after the prefix and the replies name them bare; a meta command with a base64 key (\fBb\fR) is
refused on such a domain. With credentials (\fBmcadmin auth\fR) every server connection
authenticates first (memcached \fB\-Y\fR); with TLS settings (\fBmcadmin tls\fR) every
connection to a TCP server speaks TLS (memcached \fB\-Z\fR) while clients speak to the proxy in
clear; both are read when a connection opens.
.SH SIGNALS
.TP
.B SIGTERM, SIGINT
Stop accepting, stop reading new commands, answer the commands already read (at most
\fB\-\-shutdown\-timeout\fR seconds), exit 0.
.SH FILES
.TP
.I /run/mcshm/DOMAIN.mcshm
The domain's table, read on every request (one atomic load when it did not change).
.TP
.I /usr/local/lib/systemd/system/mcproxy@.service
\fBsystemctl enable \-\-now mcproxy@myapp\fR serves domain myapp on 127.0.0.1:11211.
.SH EXAMPLES
.nf
mcproxy \-\-domain myapp \-\-listen 127.0.0.1:11211
mcproxy \-\-listen myapp=127.0.0.1:11211 \-\-listen sessions=unix:/run/mcshm/sessions.sock
php \-r '$m = new Memcache; $m\->addServer("127.0.0.1", 11211); var_dump($m\->get("k"));'
.fi
.SH "SEE ALSO"
\fBmcadmin\fR(8), \fBmclient\fR(1), \fBlibmcshm\fR(3), \fBmcshm\fR(5), \fBmemcached\fR(1)
"#;

#[test]
fn mcproxy_8_is_current() {
    mcproxy_cli::Cli::command().debug_assert();
    check(
        "man/mcproxy.8",
        &page(mcproxy_cli::Cli::command(), "8", MCPROXY_EXTRA),
    );
}

#[test]
fn mcshm_5_carries_the_byte_table_of_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("table/src/format.rs")).unwrap();
    let table: Vec<String> = source
        .lines()
        .skip_while(|l| !l.starts_with("//! ```text"))
        .skip(1)
        .take_while(|l| !l.starts_with("//! ```"))
        .map(|l| {
            l.strip_prefix("//! ")
                .unwrap_or(l.trim_start_matches("//!"))
                .to_string()
        })
        .collect();
    assert!(table.len() > 40, "byte table not found in format.rs");
    if std::env::var_os("MCSHM_UPDATE_MAN").is_some() {
        let status = std::process::Command::new("python3")
            .arg(root.join("man/update-mcshm-5.py"))
            .status()
            .unwrap();
        assert!(status.success());
    }
    let page = std::fs::read_to_string(root.join("man/mcshm.5")).unwrap();
    let page_lines: Vec<String> = page
        .lines()
        .map(|l| l.replace("\\-", "-").replace("\\e", "\\"))
        .collect();
    let start = page_lines
        .iter()
        .position(|l| *l == table[0])
        .unwrap_or_else(|| panic!("man/mcshm.5 lacks the byte table; refresh with: {REFRESH}"));
    assert_eq!(
        &page_lines[start..start + table.len()],
        &table[..],
        "man/mcshm.5's byte table differs from table/src/format.rs"
    );
}
