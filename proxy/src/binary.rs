//! memcached's binary protocol on the client side of the proxy (php-memcached's session handler
//! speaks it by default), as pure code: a request frame decoded into the text [`Command`] the
//! proxy routes (so the servers need nothing new), and the text reply turned back into the
//! binary response the request expects. No I/O here; [`crate::session`] feeds it.
//!
//! Frame (request magic 0x80, response 0x81), 24 bytes of header then the body, big-endian:
//!
//! ```text
//! offset size field
//!      0    1 magic
//!      1    1 opcode
//!      2    2 key length
//!      4    1 extras length
//!      5    1 data type        0
//!      6    2 vbucket / status (request / response)
//!      8    4 total body       extras + key + value
//!     12    4 opaque           copied into the response
//!     16    8 cas
//! ```
//!
//! Bounded as the text protocol is: a body over the item limit is answered "value too large"
//! and its bytes are discarded as they arrive; a frame whose lengths lie (key and extras longer
//! than the body, a bad magic) closes the connection.

use crate::command::{Command, GetVerb, Limits};

pub const HEADER: usize = 24;
/// The message of the "invalid arguments" answer to a request for a key in mcshm's reserved
/// namespace (the fences, [`libmcshm::fence`]), as [`crate::command::RESERVED`] is the text
/// protocol's.
const RESERVED: &str =
    "Invalid arguments: keys starting with mcshm.fence. are reserved by mcshm (fencing)";
pub const MAGIC_REQUEST: u8 = 0x80;
const RESPONSE: u8 = 0x81;

/// Response statuses (memcached's protocol_binary.h).
pub mod status {
    pub const OK: u16 = 0x0000;
    pub const NOT_FOUND: u16 = 0x0001;
    pub const EXISTS: u16 = 0x0002;
    pub const TOO_LARGE: u16 = 0x0003;
    pub const INVALID: u16 = 0x0004;
    pub const NOT_STORED: u16 = 0x0005;
    pub const NON_NUMERIC: u16 = 0x0006;
    pub const AUTH_ERROR: u16 = 0x0020;
    pub const UNKNOWN: u16 = 0x0081;
    pub const INTERNAL: u16 = 0x0084;
}

/// The opcodes served.
mod op {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const SASL_LIST: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
}

/// What a request is, for its response: the fields a response copies, and how to read the
/// text reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub opcode: u8,
    pub opaque: u32,
    /// Quiet: a success (or a get's miss) sends nothing.
    pub quiet: bool,
    /// GetK/GetKQ/GATK/GATKQ: the response carries the key.
    pub with_key: bool,
    pub key: Vec<u8>,
    /// Increment/decrement: create the counter with this value when it is missing (`None`:
    /// expiration 0xffffffff, "fail when missing").
    pub initial: Option<(u64, i64)>,
}

/// What the session does with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Route this text command and answer its reply as `Request` expects.
    Route(Command),
    /// Answer at once (noop, version, an error, SASL without credentials).
    Answer(Vec<u8>),
    /// Answer the proxy's counters as stat responses.
    Stats,
    /// The client quits (QuitQ: without a response).
    Quit,
    /// SASL: list the mechanisms, or authenticate with `mechanism` and `data`.
    Sasl {
        list: bool,
        mechanism: Vec<u8>,
        data: Vec<u8>,
    },
}

/// The outcome of decoding the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Incomplete,
    /// A request in the first `used` bytes.
    Request(Request, Action, usize),
    /// Answer `reply`, drop `used` bytes, then discard `skip` more as they arrive.
    Swallow {
        reply: Vec<u8>,
        used: usize,
        skip: usize,
    },
    /// The stream cannot be trusted any more: close (after `reply`, when there is one).
    Close(Vec<u8>),
}

/// Decodes the frame at the start of `buf`.
pub fn parse(buf: &[u8], limits: Limits) -> Parsed {
    if buf.len() < HEADER {
        return match buf.first() {
            Some(&m) if m != MAGIC_REQUEST => Parsed::Close(Vec::new()),
            _ => Parsed::Incomplete,
        };
    }
    if buf[0] != MAGIC_REQUEST {
        return Parsed::Close(Vec::new());
    }
    let opcode = buf[1];
    let key_len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let extras_len = usize::from(buf[4]);
    let body = u32::from_be_bytes(buf[8..12].try_into().unwrap()) as usize;
    let opaque = u32::from_be_bytes(buf[12..16].try_into().unwrap());
    let cas = u64::from_be_bytes(buf[16..24].try_into().unwrap());
    if key_len + extras_len > body {
        return Parsed::Close(response(opcode, status::INVALID, opaque, 0, &[], &[], &[]));
    }
    if body > limits.max_item + 512 {
        let reply = response(opcode, status::TOO_LARGE, opaque, 0, &[], &[], &[]);
        let here = buf.len() - HEADER;
        return Parsed::Swallow {
            reply,
            used: buf.len().min(HEADER + body),
            skip: body.saturating_sub(here),
        };
    }
    if buf.len() < HEADER + body {
        return Parsed::Incomplete;
    }
    let extras = &buf[HEADER..HEADER + extras_len];
    let key = &buf[HEADER + extras_len..HEADER + extras_len + key_len];
    let value = &buf[HEADER + extras_len + key_len..HEADER + body];
    let used = HEADER + body;
    let mut request = Request {
        opcode,
        opaque,
        quiet: false,
        with_key: false,
        key: key.to_vec(),
        initial: None,
    };
    let action = decode(&mut request, extras, key, value, cas);
    Parsed::Request(request, action, used)
}

/// The action of a request (its fields checked as memcached checks them).
fn decode(request: &mut Request, extras: &[u8], key: &[u8], value: &[u8], cas: u64) -> Action {
    let opcode = request.opcode;
    let invalid = |r: &Request| Action::Answer(error(r, status::INVALID, "Invalid arguments"));
    let be32 = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap());
    let keyed = !key.is_empty() && libmcshm::proto::check_key(key).is_ok();
    request.quiet = matches!(
        opcode,
        op::GETQ
            | op::GETKQ
            | op::SETQ
            | op::ADDQ
            | op::REPLACEQ
            | op::DELETEQ
            | op::INCREMENTQ
            | op::DECREMENTQ
            | op::QUITQ
            | op::FLUSHQ
            | op::APPENDQ
            | op::PREPENDQ
            | op::GATQ
            | op::GATKQ
    );
    request.with_key = matches!(opcode, op::GETK | op::GETKQ | op::GATK | op::GATKQ);
    if keyed && libmcshm::fence::is_reserved(key) {
        return Action::Answer(error(request, status::INVALID, RESERVED));
    }
    match opcode {
        op::GET | op::GETQ | op::GETK | op::GETKQ => {
            if !keyed || !extras.is_empty() || !value.is_empty() {
                return invalid(request);
            }
            Action::Route(Command::Get {
                verb: GetVerb::Gets,
                exptime: None,
                keys: vec![key.to_vec()],
            })
        }
        op::GAT | op::GATQ | op::GATK | op::GATKQ | op::TOUCH => {
            if !keyed || extras.len() != 4 || !value.is_empty() {
                return invalid(request);
            }
            let exptime = i64::from(be32(extras));
            match opcode {
                op::TOUCH => Action::Route(Command::Touch {
                    key: key.to_vec(),
                    exptime,
                    noreply: false,
                }),
                _ => Action::Route(Command::Get {
                    verb: GetVerb::Gats,
                    exptime: Some(exptime),
                    keys: vec![key.to_vec()],
                }),
            }
        }
        op::SET | op::SETQ | op::ADD | op::ADDQ | op::REPLACE | op::REPLACEQ => {
            if !keyed || extras.len() != 8 {
                return invalid(request);
            }
            let verb = match opcode {
                op::SET | op::SETQ if cas != 0 => "cas",
                op::SET | op::SETQ => "set",
                op::ADD | op::ADDQ => "add",
                _ if cas != 0 => "cas",
                _ => "replace",
            };
            Action::Route(Command::Store {
                verb,
                key: key.to_vec(),
                flags: be32(&extras[..4]),
                exptime: i64::from(be32(&extras[4..])),
                cas: (verb == "cas").then_some(cas),
                value: value.to_vec(),
                noreply: false,
            })
        }
        op::APPEND | op::APPENDQ | op::PREPEND | op::PREPENDQ => {
            if !keyed || !extras.is_empty() {
                return invalid(request);
            }
            let verb = match opcode {
                op::APPEND | op::APPENDQ => "append",
                _ => "prepend",
            };
            Action::Route(Command::Store {
                verb,
                key: key.to_vec(),
                flags: 0,
                exptime: 0,
                cas: None,
                value: value.to_vec(),
                noreply: false,
            })
        }
        op::DELETE | op::DELETEQ => {
            if !keyed || !extras.is_empty() || !value.is_empty() {
                return invalid(request);
            }
            Action::Route(Command::Delete {
                key: key.to_vec(),
                noreply: false,
            })
        }
        op::INCREMENT | op::INCREMENTQ | op::DECREMENT | op::DECREMENTQ => {
            if !keyed || extras.len() != 20 || !value.is_empty() {
                return invalid(request);
            }
            let expiration = be32(&extras[16..]);
            request.initial =
                (expiration != u32::MAX).then(|| (be64(&extras[8..16]), i64::from(expiration)));
            Action::Route(Command::Arith {
                decr: matches!(opcode, op::DECREMENT | op::DECREMENTQ),
                key: key.to_vec(),
                delta: be64(&extras[..8]),
                noreply: false,
            })
        }
        op::FLUSH | op::FLUSHQ => {
            if !key.is_empty() || !value.is_empty() || !matches!(extras.len(), 0 | 4) {
                return invalid(request);
            }
            let delay = (extras.len() == 4).then(|| be32(extras)).filter(|d| *d > 0);
            Action::Route(Command::FlushAll {
                delay,
                noreply: false,
            })
        }
        op::NOOP => Action::Answer(response(
            opcode,
            status::OK,
            request.opaque,
            0,
            &[],
            &[],
            &[],
        )),
        op::VERSION => {
            let version = crate::command::VERSION_REPLY
                .trim_start_matches("VERSION ")
                .trim_end();
            Action::Answer(response(
                opcode,
                status::OK,
                request.opaque,
                0,
                &[],
                &[],
                version.as_bytes(),
            ))
        }
        op::STAT => Action::Stats,
        op::QUIT | op::QUITQ => Action::Quit,
        op::SASL_LIST | op::SASL_AUTH => Action::Sasl {
            list: opcode == op::SASL_LIST,
            mechanism: key.to_vec(),
            data: value.to_vec(),
        },
        op::SASL_STEP => Action::Answer(error(request, status::AUTH_ERROR, "Auth failure")),
        _ => Action::Answer(error(request, status::UNKNOWN, "Unknown command")),
    }
}

/// The answer to a SASL request: `list` the mechanisms (PLAIN), or check PLAIN credentials;
/// without credentials configured every SASL request is an auth error. `true` in the second
/// place when the client is now authenticated.
pub fn sasl(
    request: &Request,
    auth: Option<&crate::client_auth::ClientAuth>,
    list: bool,
    mechanism: &[u8],
    data: &[u8],
) -> (Vec<u8>, bool) {
    let Some(auth) = auth else {
        let why = "Auth failure: mcproxy was started without --client-auth";
        return (error(request, status::AUTH_ERROR, why), false);
    };
    let ok = |value: &[u8]| {
        response(
            request.opcode,
            status::OK,
            request.opaque,
            0,
            &[],
            &[],
            value,
        )
    };
    if list {
        return (ok(b"PLAIN"), false);
    }
    if mechanism == b"PLAIN" && auth.check_plain(data) {
        return (ok(b"Authenticated"), true);
    }
    (error(request, status::AUTH_ERROR, "Auth failure"), false)
}

/// A response frame.
pub fn response(
    opcode: u8,
    status: u16,
    opaque: u32,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) -> Vec<u8> {
    let body = extras.len() + key.len() + value.len();
    let mut out = Vec::with_capacity(HEADER + body);
    out.push(RESPONSE);
    out.push(opcode);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.push(extras.len() as u8);
    out.push(0);
    out.extend_from_slice(&status.to_be_bytes());
    out.extend_from_slice(&(body as u32).to_be_bytes());
    out.extend_from_slice(&opaque.to_be_bytes());
    out.extend_from_slice(&cas.to_be_bytes());
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

/// An error response with its message as the value (as memcached sends them). Quiet requests
/// get their errors too.
pub fn error(request: &Request, status: u16, message: &str) -> Vec<u8> {
    response(
        request.opcode,
        status,
        request.opaque,
        0,
        &[],
        &[],
        message.as_bytes(),
    )
}

/// The binary response to `request` from the text reply the servers gave its command (`text`:
/// one reply as [`crate::service`] answers it). Empty when a quiet request's outcome is not
/// sent.
pub fn answer(request: &Request, text: &[u8]) -> Vec<u8> {
    let line_end = text
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(text.len());
    let line = &text[..line_end];
    let ok = |cas: u64, extras: &[u8], key: &[u8], value: &[u8]| {
        response(
            request.opcode,
            status::OK,
            request.opaque,
            cas,
            extras,
            key,
            value,
        )
    };
    let quiet_ok = |bytes: Vec<u8>| if request.quiet { Vec::new() } else { bytes };
    if line.starts_with(b"VALUE ") {
        let Some(item) = libmcshm::proto::frame::items(text).into_iter().next() else {
            return error(request, status::INTERNAL, "malformed reply");
        };
        let key: &[u8] = if request.with_key { &request.key } else { &[] };
        return ok(item.cas, &item.flags.to_be_bytes(), key, item.data);
    }
    match line {
        b"END" | b"EN" => match request.quiet {
            true => Vec::new(),
            false => {
                let key: &[u8] = if request.with_key { &request.key } else { &[] };
                response(
                    request.opcode,
                    status::NOT_FOUND,
                    request.opaque,
                    0,
                    &[],
                    key,
                    b"Not found",
                )
            }
        },
        b"STORED" | b"DELETED" | b"TOUCHED" | b"OK" => quiet_ok(ok(0, &[], &[], &[])),
        b"NOT_STORED" => error(request, status::NOT_STORED, "Not stored."),
        b"EXISTS" => error(request, status::EXISTS, "Data exists for key."),
        b"NOT_FOUND" => error(request, status::NOT_FOUND, "Not found"),
        _ if !line.is_empty() && line.iter().all(u8::is_ascii_digit) => {
            let n: u64 = std::str::from_utf8(line)
                .ok()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            quiet_ok(ok(0, &[], &[], &n.to_be_bytes()))
        }
        _ if line.starts_with(b"CLIENT_ERROR cannot increment or decrement non-numeric value") => {
            error(
                request,
                status::NON_NUMERIC,
                "Non-numeric server-side value for incr or decr",
            )
        }
        _ if line.starts_with(b"CLIENT_ERROR") => {
            error(request, status::INVALID, &String::from_utf8_lossy(line))
        }
        _ if line.starts_with(b"SERVER_ERROR object too large") => {
            error(request, status::TOO_LARGE, "Too large.")
        }
        _ => error(request, status::INTERNAL, &String::from_utf8_lossy(line)),
    }
}

/// The proxy's counters (`STAT name value` lines) as stat responses, ended by an empty one.
pub fn stats(request: &Request, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(text).lines() {
        let mut words = line.splitn(3, ' ');
        if let (Some("STAT"), Some(name), Some(value)) = (words.next(), words.next(), words.next())
        {
            out.extend(response(
                request.opcode,
                status::OK,
                request.opaque,
                0,
                &[],
                name.as_bytes(),
                value.as_bytes(),
            ));
        }
    }
    out.extend(response(
        request.opcode,
        status::OK,
        request.opaque,
        0,
        &[],
        &[],
        &[],
    ));
    out
}

/// Whether `request` and its `action` are a quiet get (getq, getkq): consecutive ones are
/// routed as one multi-get (libmemcached's mget sends a run of them and a noop).
pub fn is_quiet_get(request: &Request, action: &Action) -> bool {
    request.quiet && matches!(action, Action::Route(Command::Get { exptime: None, .. }))
}

/// The responses to a run of quiet gets from the text reply of the one multi-get they were
/// routed as: a response per hit (the proxy answers hits in the order of the keys asked), none
/// per miss; a reply that is an error is every request's error.
pub fn answer_quiet_gets(requests: &[Request], text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let items = libmcshm::proto::frame::items(text);
    if items.is_empty() && !text.starts_with(b"END") {
        for request in requests {
            out.extend(answer(request, text));
        }
        return out;
    }
    let mut next = items.into_iter().peekable();
    for request in requests {
        if let Some(item) = next.peek()
            && item.key == request.key.as_slice()
        {
            out.extend(answer(request, item.bytes));
            next.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, extras: &[u8], key: &[u8], value: &[u8], cas: u64) -> Vec<u8> {
        let mut out = response(opcode, 0, 7, cas, extras, key, value);
        out[0] = MAGIC_REQUEST;
        out
    }

    fn parsed(bytes: &[u8]) -> (Request, Action, usize) {
        match parse(bytes, Limits::default()) {
            Parsed::Request(r, a, used) => (r, a, used),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_getk_is_a_gets_and_its_hit_carries_the_key_flags_and_cas() {
        let bytes = frame(op::GETK, &[], b"k", &[], 0);
        let (request, action, used) = parsed(&bytes);
        assert_eq!(used, bytes.len());
        assert!(matches!(
            action,
            Action::Route(Command::Get {
                verb: GetVerb::Gets,
                ..
            })
        ));
        let reply = answer(&request, b"VALUE k 5 3 99\r\nabc\r\nEND\r\n");
        assert_eq!(
            reply,
            response(op::GETK, 0, 7, 99, &5u32.to_be_bytes(), b"k", b"abc")
        );
        let miss = answer(&request, b"END\r\n");
        assert_eq!(u16::from_be_bytes([miss[6], miss[7]]), status::NOT_FOUND);
    }

    #[test]
    fn quiet_requests_send_nothing_on_success_or_a_miss_but_their_errors() {
        let (getq, _, _) = parsed(&frame(op::GETQ, &[], b"k", &[], 0));
        assert!(answer(&getq, b"END\r\n").is_empty());
        let extras = [0u8; 8];
        let (setq, action, _) = parsed(&frame(op::SETQ, &extras, b"k", b"v", 0));
        assert!(matches!(
            action,
            Action::Route(Command::Store { verb: "set", .. })
        ));
        assert!(answer(&setq, b"STORED\r\n").is_empty());
        let failed = answer(&setq, b"SERVER_ERROR out of memory\r\n");
        assert_eq!(u16::from_be_bytes([failed[6], failed[7]]), status::INTERNAL);
    }

    #[test]
    fn a_set_with_cas_is_a_cas_and_an_increment_carries_its_initial_value() {
        let mut extras = 3u32.to_be_bytes().to_vec();
        extras.extend(60u32.to_be_bytes());
        let (_, action, _) = parsed(&frame(op::SET, &extras, b"k", b"v", 42));
        assert!(matches!(
            action,
            Action::Route(Command::Store {
                verb: "cas",
                cas: Some(42),
                flags: 3,
                exptime: 60,
                ..
            })
        ));
        let mut extras = 5u64.to_be_bytes().to_vec();
        extras.extend(100u64.to_be_bytes());
        extras.extend(0u32.to_be_bytes());
        let (request, action, _) = parsed(&frame(op::INCREMENT, &extras, b"n", &[], 0));
        assert_eq!(request.initial, Some((100, 0)));
        assert!(matches!(
            action,
            Action::Route(Command::Arith {
                delta: 5,
                decr: false,
                ..
            })
        ));
        assert_eq!(answer(&request, b"105\r\n")[24..], 105u64.to_be_bytes());
        extras[16..].copy_from_slice(&u32::MAX.to_be_bytes());
        let (request, _, _) = parsed(&frame(op::INCREMENT, &extras, b"n", &[], 0));
        assert_eq!(
            request.initial, None,
            "expiration 0xffffffff: fail when missing"
        );
    }

    #[test]
    fn lying_lengths_close_oversized_bodies_are_swallowed_and_unknown_opcodes_answered() {
        let mut bytes = frame(op::GET, &[], b"key", &[], 0);
        bytes[3] = 200; // key length beyond the body
        assert!(matches!(parse(&bytes, Limits::default()), Parsed::Close(_)));
        assert!(matches!(
            parse(b"get k\r\n", Limits::default()),
            Parsed::Close(_)
        ));
        let mut big = frame(op::SET, &[0; 8], b"k", &[], 0);
        big[8..12].copy_from_slice(&(10u32 << 20).to_be_bytes());
        match parse(&big, Limits::default()) {
            Parsed::Swallow { used, skip, .. } => {
                assert_eq!(used, big.len());
                assert_eq!(used - HEADER + skip, 10 << 20);
            }
            other => panic!("{other:?}"),
        }
        let (_, action, _) = parsed(&frame(0x55, &[], &[], &[], 0));
        let Action::Answer(reply) = action else {
            panic!("answered")
        };
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), status::UNKNOWN);
    }

    #[test]
    fn a_run_of_quiet_gets_is_answered_from_one_multi_get() {
        let requests: Vec<Request> = ["a", "b", "c"]
            .iter()
            .map(|k| parsed(&frame(op::GETKQ, &[], k.as_bytes(), &[], 0)).0)
            .collect();
        let text = b"VALUE a 1 2 10\r\nxx\r\nVALUE c 3 1 11\r\ny\r\nEND\r\n";
        let out = answer_quiet_gets(&requests, text);
        let mut expected = response(op::GETKQ, 0, 7, 10, &1u32.to_be_bytes(), b"a", b"xx");
        expected.extend(response(
            op::GETKQ,
            0,
            7,
            11,
            &3u32.to_be_bytes(),
            b"c",
            b"y",
        ));
        assert_eq!(out, expected, "b missed: nothing for it");
        let failed = answer_quiet_gets(&requests, b"SERVER_ERROR a: timed out\r\n");
        assert_eq!(failed.len(), 3 * (24 + "a: timed out".len() + 13));
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete_and_bad_keys_are_invalid() {
        let bytes = frame(op::SET, &[0; 8], b"key", b"value", 0);
        for n in 0..bytes.len() {
            assert_eq!(
                parse(&bytes[..n], Limits::default()),
                Parsed::Incomplete,
                "{n}"
            );
        }
        let (_, action, _) = parsed(&frame(op::GET, &[], b"a b", &[], 0));
        let Action::Answer(reply) = action else {
            panic!("answered")
        };
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), status::INVALID);
    }

    /// A fence (`mcshm.fence.<domain>`) is no client's: every keyed request for one is
    /// answered "invalid arguments" with the reason, quiet ones too, and nothing is routed.
    #[test]
    fn keys_in_the_reserved_namespace_are_invalid() {
        let key = b"mcshm.fence.app";
        let mut set_extras = 3u32.to_be_bytes().to_vec();
        set_extras.extend(60u32.to_be_bytes());
        let requests = [
            frame(op::GET, &[], key, &[], 0),
            frame(op::GETKQ, &[], key, &[], 0),
            frame(op::SET, &set_extras, key, b"v", 0),
            frame(op::SETQ, &set_extras, key, b"v", 0),
            frame(op::DELETE, &[], key, &[], 0),
            frame(op::INCREMENT, &[0; 20], key, &[], 0),
            frame(op::TOUCH, &[0; 4], key, &[], 0),
        ];
        for bytes in requests {
            let (request, action, used) = parsed(&bytes);
            assert_eq!(used, bytes.len());
            let Action::Answer(reply) = action else {
                panic!("opcode {:#x}: routed", bytes[1])
            };
            assert_eq!(reply, error(&request, status::INVALID, RESERVED));
            assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), status::INVALID);
            assert!(reply.ends_with(b"mcshm.fence. are reserved by mcshm (fencing)"));
        }
        let (_, near, _) = parsed(&frame(op::GET, &[], b"mcshm.fenc", &[], 0));
        assert!(matches!(near, Action::Route(_)));
    }
}
