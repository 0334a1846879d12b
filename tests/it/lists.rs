//! `mcadmin load` takes only a whole list (issue 30): a dump cut short anywhere, an empty file or
//! a file over the bounds is refused with one line, exit 2, and the table exactly as it was (a
//! new domain absent); `--partial` takes a list written by hand, `--allow-empty` one of no
//! servers. The servers are down or the loads `--no-flush`, so no memcached is needed.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use crate::common::{Reg, Run, addresses};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A domain `d` of three servers held down, and its dump.
fn three_servers() -> (Reg, String) {
    let reg = Reg::new();
    reg.ok(
        "d",
        &[
            "add",
            "--down",
            "127.0.0.1:25001",
            "127.0.0.1:25002",
            "127.0.0.1:25003",
        ],
    );
    reg.ok("d", &["policy", "--failover", "rehash"]);
    let dump = reg.ok("d", &["dump"]);
    (reg, dump)
}

/// Loads `text` from a file into `domain` with `flags`.
fn load(reg: &Reg, domain: &str, text: &str, flags: &[&str]) -> Run {
    let file = reg.dir().join("in.list");
    std::fs::write(&file, text).unwrap();
    let mut args = vec!["load", "--no-flush"];
    args.extend_from_slice(flags);
    args.push(file.to_str().unwrap());
    reg.run(domain, &args)
}

/// Asserts that `run` was refused as bad input with one line naming `needle`.
fn assert_refused(run: &Run, needle: &str, what: &str) {
    let err = run.stderr();
    assert_eq!(run.code(), 2, "{what}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
    assert!(err.contains(needle), "{what}: {err}");
    assert!(run.stdout().is_empty(), "{what}: {}", run.stdout());
}

#[test]
fn a_dump_ends_with_its_count_and_checksum_and_loads_back() {
    let (reg, dump) = three_servers();
    let lines: Vec<&str> = dump.lines().collect();
    assert!(lines[0].starts_with("# mcshm server list of domain 'd', version 2"));
    let before = &dump[..dump.rfind("# end:").unwrap()];
    assert_eq!(
        lines.last().copied(),
        Some(
            format!(
                "# end: 3 servers, crc32 0x{:08x}",
                crc32fast::hash(before.as_bytes())
            )
            .as_str()
        )
    );
    // The same value as Python's zlib.crc32 of those bytes (`cksum -a crc32b` in coreutils 9.4+).
    assert!(
        dump.ends_with("\n# end: 3 servers, crc32 0x6000a82a\n"),
        "{dump}"
    );
    let mut child = reg
        .cmd("e", &["load", "--no-flush", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dump.as_bytes())
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let again = reg.ok("e", &["dump"]);
    assert_eq!(again.lines().nth(1), lines.get(1).copied(), "the policy");
    assert_eq!(
        addresses(&reg.list_json("e")),
        addresses(&reg.list_json("d"))
    );
    assert!(again.ends_with('\n') && again.lines().last().unwrap().starts_with("# end: 3 "));
}

/// `head -n K` of a dump for every K, cuts inside an address and inside the end line, an empty
/// file: each refused, the table and its dump exactly as they were.
#[test]
fn a_list_cut_short_anywhere_changes_no_table() {
    let (reg, dump) = three_servers();
    let before = (reg.bytes("d"), reg.ok("d", &["dump"]));
    let mut cuts: Vec<(String, String)> = Vec::new();
    let lines: Vec<&str> = dump.split_inclusive('\n').collect();
    for k in 0..lines.len() {
        cuts.push((format!("head -n {k}"), lines[..k].concat()));
    }
    let at = dump.find("127.0.0.1:25003").unwrap() + "127.0.0.1:250".len();
    cuts.push(("cut inside 127.0.0.1:25003".into(), dump[..at].into()));
    let end = dump.rfind("# end:").unwrap();
    for inside_end in [end + 3, end + 20, dump.len() - 3] {
        cuts.push((
            format!("cut inside the end line at {inside_end}"),
            dump[..inside_end].into(),
        ));
    }
    cuts.push(("a second list after it".into(), dump.repeat(2)));
    cuts.push((
        "a server after it".into(),
        format!("{dump}127.0.0.1:25004\n"),
    ));
    cuts.push(("a server edited".into(), dump.replace("25002", "25009")));
    for (what, text) in &cuts {
        let run = load(&reg, "d", text, &[]);
        let needle = match text.is_empty() || what == "head -n 1" || what == "head -n 2" {
            true => "pass --allow-empty --partial",
            false => "pass --partial",
        };
        assert_refused(&run, needle, what);
        assert_eq!(
            (reg.bytes("d"), reg.ok("d", &["dump"])),
            before,
            "{what} changed the table"
        );
    }
    // The measured cases of the issue, word for word.
    let run = load(&reg, "d", &lines[..3].concat(), &[]);
    assert!(
        run.stderr().contains(
            "no end line (dump ends a list with `# end: N servers, crc32 0xXXXXXXXX`): the list \
             was cut short or edited; a list written or edited by hand: pass --partial"
        ),
        "{}",
        run.stderr()
    );
    let run = load(&reg, "d", "", &[]);
    assert!(
        run.stderr().contains("would remove every server"),
        "{}",
        run.stderr()
    );
    // The whole dump still loads (no change: it is the same list).
    let run = load(&reg, "d", &dump, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(
        run.stdout().contains("unchanged at version 2"),
        "{}",
        run.stdout()
    );
    // Blank lines after the end line are fine.
    assert_eq!(load(&reg, "d", &format!("{dump}\n\n"), &[]).code(), 0);
    assert_eq!(reg.bytes("d"), before.0);
}

#[test]
fn partial_takes_a_list_written_by_hand() {
    let (reg, dump) = three_servers();
    let by_hand =
        "# written by hand\n127.0.0.1:25005 weight=2 state=down\n127.0.0.1:25001 state=down\n";
    let before = reg.bytes("d");
    assert_refused(&load(&reg, "d", by_hand, &[]), "pass --partial", "by hand");
    assert_eq!(reg.bytes("d"), before);
    let run = load(&reg, "d", by_hand, &["--partial"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(
        addresses(&reg.list_json("d")),
        ["127.0.0.1:25005", "127.0.0.1:25001"]
    );
    // An edited dump: its end line is then a comment, not checked.
    let edited = dump.replace("127.0.0.1:25002", "127.0.0.1:25007");
    assert_eq!(load(&reg, "d", &edited, &["--partial"]).code(), 0);
    assert_eq!(
        addresses(&reg.list_json("d")),
        ["127.0.0.1:25001", "127.0.0.1:25007", "127.0.0.1:25003"]
    );
    // A bad line is still refused by line, with --partial.
    let before = reg.bytes("d");
    let run = load(&reg, "d", "a:1\nb:0\n", &["--partial"]);
    assert_refused(&run, "line 2:", "bad line");
    assert_eq!(reg.bytes("d"), before);
}

#[test]
fn only_allow_empty_empties_a_domain() {
    let (reg, dump) = three_servers();
    let before = reg.bytes("d");
    let policy_only: String = dump.lines().take(2).map(|l| format!("{l}\n")).collect();
    for (text, flags) in [
        ("", &["--partial"][..]),
        ("# nothing\n", &["--partial"]),
        (&policy_only, &["--partial"]),
    ] {
        let run = load(&reg, "d", text, flags);
        assert_refused(&run, "pass --allow-empty", &format!("{text:?}"));
        assert_eq!(reg.bytes("d"), before);
    }
    // --allow-empty alone still wants the end line.
    assert_refused(
        &load(&reg, "d", "", &["--allow-empty"]),
        "no end line",
        "empty, --allow-empty",
    );
    let run = load(&reg, "d", &policy_only, &["--allow-empty", "--partial"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(addresses(&reg.list_json("d")).is_empty());
    // The dump of an empty domain is whole, and still needs --allow-empty.
    let empty = reg.ok("d", &["dump"]);
    assert!(empty.contains("\n# end: 0 servers, crc32 0x"), "{empty}");
    assert_refused(
        &load(&reg, "e", &empty, &[]),
        "pass --allow-empty",
        "dump of none",
    );
    assert!(!reg.file("e").exists());
    assert_eq!(load(&reg, "e", &empty, &["--allow-empty"]).code(), 0);
    assert_eq!(reg.list_json("e")["policy"]["failover"], "rehash");
}

/// A file over the bounds is refused as soon as it is seen: mcadmin stops reading (a pipe
/// counts what it took), the table is unchanged.
#[test]
fn a_list_over_the_bounds_is_refused_without_reading_it_whole() {
    let (reg, _) = three_servers();
    let before = reg.bytes("d");
    // (a line repeated, the error, the fewest and the most bytes mcadmin may have taken)
    for (line, needle, least, most) in [
        (&b"x"[..], "line 1: longer than 4096 bytes", 0, 4 << 20),
        (
            &b"127.0.0.1:11211 weight=1 retry-interval=15 state=down # and a comment\n"[..],
            "larger than 64 MiB",
            64 << 20,
            (64 << 20) + (4 << 20),
        ),
    ] {
        let mut child = reg
            .cmd("d", &["load", "--no-flush", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let chunk = line.repeat(65536 / line.len());
        let mut written = 0usize;
        // Until mcadmin stops reading (a broken pipe), or well past the bound.
        while written < 512 << 20 && stdin.write_all(&chunk).is_ok() {
            written += chunk.len();
        }
        drop(stdin);
        let run = Run(child.wait_with_output().unwrap());
        assert_refused(&run, needle, needle);
        assert!(
            (least..=most).contains(&written),
            "{needle}: mcadmin read {written} bytes"
        );
        assert_eq!(reg.bytes("d"), before);
    }
    // A 300 MB file (sparse: one line of zero bytes) is refused at once.
    let big = reg.dir().join("big.list");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    let run = reg.run("d", &["load", "--no-flush", big.to_str().unwrap()]);
    assert_refused(&run, "line 1: longer than 4096 bytes", "300 MB");
    assert_eq!(reg.bytes("d"), before);
}

/// The boot-time replay of a list cut short creates no domain: the unit fails with the reason.
#[test]
fn load_initial_of_a_cut_list_leaves_the_domain_absent() {
    let (reg, dump) = three_servers();
    let cut = &dump[..dump.find("127.0.0.1:25003").unwrap() + 13];
    for (what, text) in [("cut", cut), ("empty", "")] {
        let run = load(&reg, "boot", text, &["--initial"]);
        assert_refused(&run, "pass --", what);
        assert!(!reg.file("boot").exists(), "{what}: a domain was created");
        assert_eq!(reg.run("boot", &["list"]).code(), 3);
    }
    // The whole list creates it; a cut one later fails without touching it.
    assert_eq!(load(&reg, "boot", &dump, &["--initial"]).code(), 0);
    let before = reg.bytes("boot");
    assert_refused(
        &load(&reg, "boot", cut, &["--initial"]),
        "--partial",
        "cut, existing",
    );
    assert_eq!(reg.bytes("boot"), before);
}

/// The example list the package ships in /etc/mcshm loads as it is.
#[test]
fn the_shipped_example_list_is_whole() {
    let reg = Reg::new();
    let example = Path::new(ROOT).join("packaging/example.list");
    reg.ok(
        "x",
        &["load", "--no-flush", "--initial", example.to_str().unwrap()],
    );
    assert_eq!(addresses(&reg.list_json("x")), ["127.0.0.1:11211"]);
}
