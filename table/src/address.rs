//! Server addresses as operators write them: `host[:port]`, `a.b.c.d[:port]`, `[v6][:port]`, or
//! an absolute unix socket path. The port defaults to 11211.
//!
//! The text is kept as written (hostnames are not resolved or lower-cased, IPv6 addresses are
//! not canonicalised; [`Address::socket_addrs`] resolves a name when a connection needs it), because clients hash the configured name (ketama point names are `host`
//! or `host:port`: libmemcached hashes `[2001:db8:0:0::1]` as "2001:db8:0:0::1"), and every
//! process of a fleet must hash the same bytes. Addresses still compare as what they name:
//! `[::1]` and `[0:0::1]` are one server.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use crate::error::{Error, Result};

/// memcached's port, used when an address has none.
pub const DEFAULT_PORT: u16 = 11211;
/// Longest hostname (bytes), as DNS allows.
pub const MAX_HOST_LEN: usize = 255;
/// Longest unix socket path (bytes): `sun_path` holds 108 including the terminating NUL.
pub const MAX_UNIX_PATH_LEN: usize = 107;

/// Where a memcached server listens.
#[derive(Clone, Debug)]
pub enum Address {
    /// A DNS name and port.
    Host { name: String, port: u16 },
    /// An IPv4 address and port.
    Ipv4 { ip: Ipv4Addr, port: u16 },
    /// An IPv6 address and port, written `[text]:port`; `text` is the address as written (what
    /// is hashed and shown), `ip` what it means (what is compared).
    Ipv6 {
        ip: Ipv6Addr,
        port: u16,
        text: String,
    },
    /// A unix domain socket path.
    Unix { path: String },
}

impl Address {
    /// Parses an address as an operator writes it; errors name what is wrong.
    pub fn parse(input: &str) -> Result<Address> {
        let bad = |why: &str| Error::invalid("address", input, why);
        if input.is_empty() {
            return Err(bad(
                "empty (expected HOST[:PORT], [IPV6][:PORT] or /unix/socket/path)",
            ));
        }
        if input.starts_with('/') {
            return parse_unix(input);
        }
        if let Some(rest) = input.strip_prefix('[') {
            let (ip, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("missing ']' after IPv6 address"))?;
            let text = ip.to_string();
            let ip: Ipv6Addr = ip
                .parse()
                .map_err(|_| bad("not an IPv6 address inside [ ]"))?;
            let port = match after {
                "" => DEFAULT_PORT,
                _ => parse_port(
                    input,
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("expected ':PORT' after ']'"))?,
                )?,
            };
            return Ok(Address::Ipv6 { ip, port, text });
        }
        if input.matches(':').count() > 1 {
            return Err(bad("IPv6 addresses need brackets, e.g. [::1]:11211"));
        }
        let (host, port) = match input.split_once(':') {
            Some((host, port)) => (host, parse_port(input, port)?),
            None => (input, DEFAULT_PORT),
        };
        Address::from_host(host, port).map_err(|why| bad(&why))
    }

    /// Parses a server list in the libmemcached tools' syntax (`MEMCACHED_SERVERS`):
    /// addresses separated by commas and/or whitespace (weights, if any, dropped: see
    /// [`Address::parse_weighted_list`]). An empty list is an error.
    pub fn parse_list(text: &str) -> Result<Vec<Address>> {
        Ok(Address::parse_weighted_list(text)?
            .into_iter()
            .map(|(address, _)| address)
            .collect())
    }

    /// Parses a server list with weights as libmemcached's `memcached_servers_parse` and the
    /// memc* tools accept it: entries separated by commas (and whitespace), each `ADDRESS`,
    /// `HOST:PORT:WEIGHT` or `ADDRESS WEIGHT` (a number after an address is its weight);
    /// weight 1 when none is given. A bad entry names the token and what is expected.
    pub fn parse_weighted_list(text: &str) -> Result<Vec<(Address, u16)>> {
        let mut list: Vec<(Address, u16)> = Vec::new();
        let mut weighted = false; // the last address already has its weight
        for token in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
        {
            if token.bytes().all(|b| b.is_ascii_digit()) {
                let Some(last) = list.last_mut().filter(|_| !weighted) else {
                    return Err(Error::invalid(
                        "server list",
                        token,
                        "a weight must follow an address (expected HOST:PORT WEIGHT)",
                    ));
                };
                last.1 = parse_weight(token)?;
                weighted = true;
                continue;
            }
            let (address, weight) = match split_weight(token) {
                Some((address, weight)) => (Address::parse(address)?, Some(parse_weight(weight)?)),
                None => (Address::parse(token)?, None),
            };
            weighted = weight.is_some();
            list.push((address, weight.unwrap_or(1)));
        }
        if list.is_empty() {
            return Err(Error::invalid(
                "server list",
                text,
                "no servers (expected HOST[:PORT][:WEIGHT],...)",
            ));
        }
        Ok(list)
    }

    /// Builds a TCP address from a host (hostname or IPv4) and a port.
    fn from_host(host: &str, port: u16) -> std::result::Result<Address, String> {
        if host.is_empty() {
            return Err("missing host before ':'".into());
        }
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            let ip: Ipv4Addr = host
                .parse()
                .map_err(|_| "not a valid IPv4 address".to_string())?;
            return Ok(Address::Ipv4 { ip, port });
        }
        check_hostname(host)?;
        Ok(Address::Host {
            name: host.to_string(),
            port,
        })
    }

    /// The port (`None` for a unix socket).
    pub fn port(&self) -> Option<u16> {
        match self {
            Address::Host { port, .. }
            | Address::Ipv4 { port, .. }
            | Address::Ipv6 { port, .. } => Some(*port),
            Address::Unix { .. } => None,
        }
    }

    /// The TCP socket addresses a server's address names, for a connect: an IP address as it
    /// is; a host name resolved by the system (std's `ToSocketAddrs`, `getaddrinfo`: a lookup,
    /// nothing is connected), its addresses in the resolver's order. An error for a unix socket,
    /// and for a name that resolves to no address.
    pub fn socket_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        match self {
            Address::Ipv4 { ip, port } => Ok(vec![SocketAddr::from((*ip, *port))]),
            Address::Ipv6 { ip, port, .. } => Ok(vec![SocketAddr::from((*ip, *port))]),
            Address::Host { name, port } => {
                let all: Vec<SocketAddr> = (name.as_str(), *port).to_socket_addrs()?.collect();
                match all.is_empty() {
                    true => Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "the host name has no address",
                    )),
                    false => Ok(all),
                }
            }
            Address::Unix { path } => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path} is a unix socket, not a TCP address"),
            )),
        }
    }

    /// The host part as written (IPv6 without brackets), or the socket path; borrowed where
    /// the address holds it as text.
    pub fn host_text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Address::Host { name, .. } => std::borrow::Cow::Borrowed(name),
            Address::Unix { path } => std::borrow::Cow::Borrowed(path),
            Address::Ipv6 { text, .. } => std::borrow::Cow::Borrowed(text),
            other => std::borrow::Cow::Owned(other.host()),
        }
    }

    /// Writes the host part (as [`Address::host`]) into `out` without allocating; returns its
    /// length, or `None` if `out` is too small.
    pub fn write_host(&self, out: &mut [u8]) -> Option<usize> {
        let text = match self {
            Address::Host { name, .. } => name.as_str(),
            Address::Ipv6 { text, .. } => text.as_str(),
            Address::Unix { path } => path.as_str(),
            Address::Ipv4 { ip, .. } => return write_ipv4(ip, out),
        };
        out.get_mut(..text.len())?.copy_from_slice(text.as_bytes());
        Some(text.len())
    }

    /// The host part as written (IPv6 without brackets), or the socket path.
    pub fn host(&self) -> String {
        match self {
            Address::Host { name, .. } => name.clone(),
            Address::Ipv4 { ip, .. } => ip.to_string(),
            Address::Ipv6 { text, .. } => text.clone(),
            Address::Unix { path } => path.clone(),
        }
    }

    /// Whether two addresses name the same server (hostnames compare case-insensitively, as DNS
    /// does).
    pub fn same_server(&self, other: &Address) -> bool {
        match (self, other) {
            (Address::Host { name: a, port: p }, Address::Host { name: b, port: q }) => {
                p == q && a.eq_ignore_ascii_case(b)
            }
            _ => self == other,
        }
    }

    /// A key equal for two addresses exactly when [`Address::same_server`] holds (for hash
    /// sets: duplicate checks stay linear in the number of servers).
    pub fn identity(&self) -> Identity<'_> {
        Identity(self)
    }

    /// Rebuilds an address from its stored parts (see [`crate::format`]); validates them as
    /// strictly as [`Address::parse`] validates text.
    pub(crate) fn from_stored(
        kind: u8,
        text: &str,
        port: u16,
    ) -> std::result::Result<Address, String> {
        let address = match kind {
            KIND_UNIX => parse_unix(text).map_err(|e| e.to_string())?,
            KIND_IPV6 => Address::Ipv6 {
                ip: text.parse().map_err(|_| "bad IPv6 address".to_string())?,
                port,
                text: text.to_string(),
            },
            KIND_HOST | KIND_IPV4 => Address::from_host(text, port)?,
            other => return Err(format!("unknown address kind {other}")),
        };
        if address.kind_code() != kind {
            return Err("address kind does not match its text".into());
        }
        if kind != KIND_UNIX && port == 0 {
            return Err("port 0".into());
        }
        Ok(address)
    }

    pub(crate) fn kind_code(&self) -> u8 {
        match self {
            Address::Host { .. } => KIND_HOST,
            Address::Ipv4 { .. } => KIND_IPV4,
            Address::Ipv6 { .. } => KIND_IPV6,
            Address::Unix { .. } => KIND_UNIX,
        }
    }
}

/// Addresses are equal when they name the same place: an IPv6 address compares by its value,
/// not by how it was written.
impl PartialEq for Address {
    fn eq(&self, other: &Address) -> bool {
        match (self, other) {
            (Address::Host { name: a, port: p }, Address::Host { name: b, port: q }) => {
                a == b && p == q
            }
            (Address::Ipv4 { ip: a, port: p }, Address::Ipv4 { ip: b, port: q }) => {
                a == b && p == q
            }
            (Address::Ipv6 { ip: a, port: p, .. }, Address::Ipv6 { ip: b, port: q, .. }) => {
                a == b && p == q
            }
            (Address::Unix { path: a }, Address::Unix { path: b }) => a == b,
            _ => false,
        }
    }
}

impl Eq for Address {}

impl std::hash::Hash for Address {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Address::Host { name, port } => (name, port).hash(state),
            Address::Ipv4 { ip, port } => (ip, port).hash(state),
            Address::Ipv6 { ip, port, .. } => (ip, port).hash(state),
            Address::Unix { path } => path.hash(state),
        }
    }
}

/// See [`Address::identity`]: hashes and compares like [`Address::same_server`].
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a>(&'a Address);

impl PartialEq for Identity<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.same_server(other.0)
    }
}

impl Eq for Identity<'_> {}

impl std::hash::Hash for Identity<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self.0 {
            Address::Host { name, port } => {
                // Lower-cased into a stack buffer and hashed in one write (names are <= 255).
                let mut lower = [0u8; MAX_HOST_LEN];
                let len = name.len().min(MAX_HOST_LEN);
                for (dst, src) in lower.iter_mut().zip(&name.as_bytes()[..len]) {
                    *dst = src.to_ascii_lowercase();
                }
                state.write(&lower[..len]);
                state.write_u16(*port);
            }
            other => other.hash(state),
        }
    }
}

pub(crate) const KIND_HOST: u8 = 1;
pub(crate) const KIND_IPV4: u8 = 2;
pub(crate) const KIND_IPV6: u8 = 3;
pub(crate) const KIND_UNIX: u8 = 4;

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Host { name, port } => write!(f, "{name}:{port}"),
            Address::Ipv4 { ip, port } => write!(f, "{ip}:{port}"),
            Address::Ipv6 { text, port, .. } => write!(f, "[{text}]:{port}"),
            Address::Unix { path } => f.write_str(path),
        }
    }
}

/// A place a server's address reaches: a TCP socket address (a host name resolved), or a unix
/// socket's path (canonical when it exists). Two addresses that reach one place are one
/// memcached under two names (see [`find_alias`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Tcp(address) => write!(f, "{address}"),
            Place::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Address {
    /// The places this address reaches: a host name resolved by the system (a lookup, nothing
    /// is connected); none when it does not resolve (it is refused when connected to).
    pub fn places(&self) -> Vec<Place> {
        match self {
            Address::Unix { path } => {
                let path = std::path::Path::new(path);
                vec![Place::Unix(
                    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
                )]
            }
            tcp => tcp
                .socket_addrs()
                .map(|all| all.into_iter().map(Place::Tcp).collect())
                .unwrap_or_default(),
        }
    }
}

/// One memcached under two names, as [`find_alias`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alias {
    /// The server of the new ones.
    pub server: Address,
    /// The one it is the same memcached as: a present server, or an earlier new one.
    pub other: Address,
    /// Where both reach.
    pub place: Place,
}

/// The first server of `new` that reaches a place (see [`Address::places`]) that a server of
/// `present`, or an earlier one of `new`, reaches under another name: listed twice, one
/// memcached gets two shares of the ring and a key is written under one name and read under the
/// other. Addresses that are the same server ([`Address::same_server`]) are left to the
/// duplicate checks; names that do not resolve are not compared, nor those whose lookup takes
/// longer than [`RESOLVE_LIMIT`] (a resolver that does not answer delays the check, never
/// blocks it). `present` is resolved only when a new server resolves.
pub fn find_alias(present: &[Address], new: &[Address]) -> Option<Alias> {
    let new_places = places_of(new, RESOLVE_LIMIT);
    if new_places.iter().all(Vec::is_empty) {
        return None;
    }
    let mut seen: std::collections::HashMap<Place, &Address> = std::collections::HashMap::new();
    for (address, places) in present.iter().zip(places_of(present, RESOLVE_LIMIT)) {
        for place in places {
            seen.entry(place).or_insert(address);
        }
    }
    for (address, places) in new.iter().zip(new_places) {
        for place in places {
            match seen.get(&place) {
                Some(other) if !other.same_server(address) => {
                    return Some(Alias {
                        server: address.clone(),
                        other: (*other).clone(),
                        place,
                    });
                }
                Some(_) => {}
                None => {
                    seen.insert(place, address);
                }
            }
        }
    }
    None
}

/// How long [`find_alias`] waits for the host names of one list to resolve.
pub const RESOLVE_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Threads that look host names up at once (see [`places_of`]).
const RESOLVERS: usize = 16;

/// The places of each address (as [`Address::places`]); host names are looked up by
/// [`RESOLVERS`] threads at once, and a name not resolved within `limit` counts as not
/// resolving (its thread is left to finish on its own).
fn places_of(addresses: &[Address], limit: std::time::Duration) -> Vec<Vec<Place>> {
    use std::sync::{Arc, Mutex, mpsc};
    let mut places: Vec<Vec<Place>> = vec![Vec::new(); addresses.len()];
    let mut names = std::collections::VecDeque::new();
    for (n, address) in addresses.iter().enumerate() {
        match address {
            Address::Host { .. } => names.push_back((n, address.clone())),
            literal => places[n] = literal.places(),
        }
    }
    let pending = names.len();
    if pending == 0 {
        return places;
    }
    let queue = Arc::new(Mutex::new(names));
    let (done, results) = mpsc::channel();
    for _ in 0..RESOLVERS.min(pending) {
        let (queue, done) = (queue.clone(), done.clone());
        let spawned = std::thread::Builder::new()
            .name("mcshm-resolve".into())
            .spawn(move || {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                    let Some((n, address)) = next else { return };
                    if done.send((n, address.places())).is_err() {
                        return;
                    }
                }
            });
        if spawned.is_err() {
            break;
        }
    }
    drop(done);
    let deadline = std::time::Instant::now() + limit;
    for _ in 0..pending {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match results.recv_timeout(left) {
            Ok((n, found)) => places[n] = found,
            Err(_) => break,
        }
    }
    // Names not looked up yet are not: the threads stop after the lookups they are in.
    if let Ok(mut rest) = queue.lock() {
        rest.clear();
    }
    places
}

impl std::str::FromStr for Address {
    type Err = Error;
    fn from_str(s: &str) -> Result<Address> {
        Address::parse(s)
    }
}

/// `a.b.c.d` into `out` (as `Ipv4Addr`'s Display writes it, without its formatter: this is on
/// the C API's per-key path); its length, or `None` if `out` is too small.
fn write_ipv4(ip: &Ipv4Addr, out: &mut [u8]) -> Option<usize> {
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    out.get_mut(..len)?.copy_from_slice(&text[..len]);
    Some(len)
}

/// `HOST:PORT:WEIGHT` (not bracketed IPv6, not a socket path) split into address and weight.
fn split_weight(token: &str) -> Option<(&str, &str)> {
    if token.starts_with('/') || token.starts_with('[') || token.matches(':').count() != 2 {
        return None;
    }
    let (address, weight) = token.rsplit_once(':')?;
    let port = address.rsplit_once(':')?.1;
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())).then_some((address, weight))
}

/// A server weight: 1 to 65535.
fn parse_weight(text: &str) -> Result<u16> {
    match text.parse::<u16>() {
        Ok(weight) if weight > 0 => Ok(weight),
        _ => Err(Error::invalid(
            "weight",
            text,
            "expected a number from 1 to 65535",
        )),
    }
}

fn parse_port(input: &str, port: &str) -> Result<u16> {
    let bad = |why: &str| Error::invalid("address", input, why);
    if port.is_empty() {
        return Err(bad("missing port after ':'"));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
        return Err(bad("port must be a number from 1 to 65535"));
    }
    match port.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(bad("port must be a number from 1 to 65535")),
    }
}

fn parse_unix(input: &str) -> Result<Address> {
    let bad = |why: &str| Error::invalid("address", input, why);
    if input.len() > MAX_UNIX_PATH_LEN {
        return Err(bad(&format!(
            "unix socket path longer than {MAX_UNIX_PATH_LEN} bytes"
        )));
    }
    if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            "unix socket path contains whitespace or control characters",
        ));
    }
    if !input.starts_with('/') || input.ends_with('/') {
        return Err(bad("unix socket path must be absolute and name a file"));
    }
    Ok(Address::Unix {
        path: input.to_string(),
    })
}

/// RFC 1123 names (underscores allowed, as in real-world service names). One pass over the
/// bytes: this also runs on every entry a reader copies out of a registry file.
fn check_hostname(host: &str) -> std::result::Result<(), String> {
    if host.len() > MAX_HOST_LEN {
        return Err(format!("hostname longer than {MAX_HOST_LEN} bytes"));
    }
    let mut label_start = 0;
    let bytes = host.as_bytes();
    for (i, &b) in bytes
        .iter()
        .enumerate()
        .chain(std::iter::once((bytes.len(), &b'.')))
    {
        match b {
            b'.' => {
                let label = &bytes[label_start..i];
                match label {
                    [] => {
                        return Err(
                            "empty label in hostname (two dots, or a leading/trailing dot)".into(),
                        );
                    }
                    [b'-', ..] | [.., b'-'] => {
                        return Err("hostname label starts or ends with '-'".into());
                    }
                    _ if label.len() > 63 => {
                        return Err("hostname label longer than 63 bytes".into());
                    }
                    _ => label_start = i + 1,
                }
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => {}
            _ => {
                let c = host[i..].chars().next().unwrap_or('?');
                return Err(format!("character {c:?} is not allowed in a hostname"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_server_under_two_names_is_found() {
        let parse = |list: &[&str]| -> Vec<super::Address> {
            list.iter()
                .map(|a| super::Address::parse(a).unwrap())
                .collect()
        };
        let present = parse(&["127.0.0.1:11312", "127.0.0.1:11313"]);
        let alias = super::find_alias(&present, &parse(&["localhost:11312"])).unwrap();
        assert_eq!(alias.other.to_string(), "127.0.0.1:11312");
        assert_eq!(alias.place.to_string(), "127.0.0.1:11312");
        // Another port, the same name twice (left to the duplicate check), an unresolvable name.
        assert_eq!(
            super::find_alias(&present, &parse(&["localhost:11314"])),
            None
        );
        assert_eq!(
            super::find_alias(&present, &parse(&["127.0.0.1:11313"])),
            None
        );
        assert_eq!(
            super::find_alias(&present, &parse(&["no-such-host.invalid:11312"])),
            None
        );
        // Two new names of one server.
        let both = parse(&[
            "[::ffff:127.0.0.1]:1",
            "127.0.0.1:2",
            "127.0.0.1:2",
            "localhost:2",
        ]);
        let alias = super::find_alias(&[], &both).unwrap();
        assert_eq!(
            (alias.server.to_string(), alias.other.to_string()),
            ("localhost:2".into(), "127.0.0.1:2".into())
        );
    }

    use super::*;

    #[test]
    fn socket_addrs_of_each_form() {
        let addrs = |text: &str| Address::parse(text).unwrap().socket_addrs();
        assert_eq!(
            addrs("10.0.0.1:5").unwrap(),
            vec!["10.0.0.1:5".parse().unwrap()]
        );
        assert_eq!(
            addrs("[0:0::1]").unwrap(),
            vec!["[::1]:11211".parse().unwrap()]
        );
        // localhost resolves from /etc/hosts, without a DNS server.
        let local = addrs("localhost:7").unwrap();
        assert!(!local.is_empty() && local.iter().all(|a| a.ip().is_loopback() && a.port() == 7));
        assert_eq!(
            addrs("/run/mc.sock").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn parses_every_form() {
        let cases = [
            ("cache1", "cache1:11211"),
            ("cache1.example.com:11212", "cache1.example.com:11212"),
            ("10.0.0.1", "10.0.0.1:11211"),
            ("10.0.0.1:1", "10.0.0.1:1"),
            ("[::1]", "[::1]:11211"),
            ("[2001:db8::1]:65535", "[2001:db8::1]:65535"),
            ("/run/memcached/mc.sock", "/run/memcached/mc.sock"),
        ];
        for (input, shown) in cases {
            assert_eq!(Address::parse(input).unwrap().to_string(), shown, "{input}");
        }
    }

    #[test]
    fn refuses_bad_addresses_with_reason() {
        let cases = [
            ("", "empty"),
            ("host:0", "1 to 65535"),
            ("host:65536", "1 to 65535"),
            ("host:", "missing port"),
            ("host:x1", "1 to 65535"),
            (":11211", "missing host"),
            ("::1", "brackets"),
            ("[::1", "missing ']'"),
            ("[::1]11211", "':PORT'"),
            ("[zz]:1", "IPv6"),
            ("bad host:1", "not allowed"),
            ("a..b", "empty label"),
            ("-a", "'-'"),
            ("300.1.1.1", "IPv4"),
            ("/tmp/has space", "whitespace"),
            ("/tmp/dir/", "absolute"),
        ];
        for (input, needle) in cases {
            let err = Address::parse(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
        }
        let long =
            "a".repeat(63) + "." + &"b".repeat(63) + "." + &"c".repeat(63) + "." + &"d".repeat(63);
        assert!(Address::parse(&long).is_ok());
        assert!(
            Address::parse(&(long + ".e"))
                .unwrap_err()
                .to_string()
                .contains("longer than 255")
        );
    }

    #[test]
    fn server_lists_split_on_commas_and_spaces() {
        let list = Address::parse_list(" a:1, b ,c:3\td ").unwrap();
        let shown: Vec<String> = list.iter().map(Address::to_string).collect();
        assert_eq!(shown, ["a:1", "b:11211", "c:3", "d:11211"]);
        assert!(Address::parse_list(" , ").is_err());
        assert!(Address::parse_list("a:1,b:0").is_err());
    }

    #[test]
    fn weights_as_libmemcached_writes_them() {
        let list = Address::parse_weighted_list("a:1 3, b:2:5,c, [::1]:4 2,/s/mc.sock 7").unwrap();
        let shown: Vec<(String, u16)> = list.iter().map(|(a, w)| (a.to_string(), *w)).collect();
        assert_eq!(
            shown,
            [
                ("a:1".to_string(), 3),
                ("b:2".to_string(), 5),
                ("c:11211".to_string(), 1),
                ("[::1]:4".to_string(), 2),
                ("/s/mc.sock".to_string(), 7),
            ]
        );
        for (bad, needle) in [
            (
                "a:1 0",
                "invalid weight '0': expected a number from 1 to 65535",
            ),
            ("a:1:70000", "invalid weight '70000'"),
            ("a:1:x", "invalid weight 'x'"),
            ("3 a:1", "'3': a weight must follow an address"),
            ("a:1 2 3", "'3': a weight must follow an address"),
            ("a:1:2 3", "'3': a weight must follow an address"),
            ("fe80::1", "IPv6 addresses need brackets"),
        ] {
            let err = Address::parse_weighted_list(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }

    #[test]
    fn hosts_are_written_without_allocating_as_host_gives_them() {
        for text in [
            "h.example:1",
            "10.20.30.40:5",
            "0.0.0.0:1",
            "255.255.255.255:1",
            "1.100.9.250:1",
            "[2001:db8:0:0::1]:7",
            "/x/y",
        ] {
            let address = Address::parse(text).unwrap();
            let mut out = [0u8; 64];
            let len = address.write_host(&mut out).unwrap();
            assert_eq!(&out[..len], address.host().as_bytes());
            assert_eq!(address.write_host(&mut out[..len - 1]), None, "too small");
        }
    }

    #[test]
    fn stored_parts_round_trip() {
        for text in ["h:1", "1.2.3.4:5", "[::1]:7", "/x/y"] {
            let a = Address::parse(text).unwrap();
            let b = Address::from_stored(a.kind_code(), &a.host(), a.port().unwrap_or(0)).unwrap();
            assert_eq!(a, b);
        }
        assert!(Address::from_stored(KIND_IPV4, "host", 1).is_err());
        assert!(Address::from_stored(KIND_HOST, "h", 0).is_err());
        assert!(Address::from_stored(9, "h", 1).is_err());
    }
}
