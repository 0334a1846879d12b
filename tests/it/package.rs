//! `make deb` builds the three packages Debian would split mcshm into (libmcshm0, libmcshm-dev,
//! mcshm): what each holds (the tools, the library with its SONAME and links, the header with
//! its version, pkg-config, manuals, completions, units, /etc/mcshm, docs), what each depends
//! on, their maintainer scripts and library metadata, that lintian finds nothing in them (no
//! error, warning or info left unexplained), that a C program linked with the static library
//! has no executable stack, and that the units verify and are hardened to an exposure of 5 or
//! less. As root, where debootstrap and systemd-nspawn are installed (test.sh installs them),
//! packaging/boot-test.sh boots the packages under a real systemd. The debug build is packaged
//! (PROFILE=debug) so the suite needs no release build; `make deb` packages the release build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The three packages of one `make deb` (the tests of this file share them: a second `make deb`
/// would replace them under the first): libmcshm0, libmcshm-dev, mcshm.
fn debs() -> &'static [PathBuf; 3] {
    static DEBS: OnceLock<[PathBuf; 3]> = OnceLock::new();
    DEBS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = run(Command::new("make")
            .arg("-s")
            .arg("deb")
            .current_dir(root)
            .env("PROFILE", "debug"));
        let paths: Vec<PathBuf> = out.lines().map(|line| root.join(line.trim())).collect();
        let arch = run(Command::new("dpkg").arg("--print-architecture"));
        let version = env!("CARGO_PKG_VERSION");
        let expected = ["libmcshm0", "libmcshm-dev", "mcshm"]
            .map(|name| format!("{name}_{version}_{}.deb", arch.trim()));
        assert_eq!(paths.len(), 3, "make deb printed, one path a line:\n{out}");
        for (path, name) in paths.iter().zip(&expected) {
            assert!(path.ends_with(name), "{} is not {name}", path.display());
            assert!(path.is_file(), "{}", path.display());
        }
        [paths[0].clone(), paths[1].clone(), paths[2].clone()]
    })
}

/// `dpkg-deb -c`: one line per file, each with its path after a space and a newline.
fn assert_holds(deb: &Path, files: &[&str]) {
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    for file in files {
        assert!(
            listing.contains(&format!(" {file}\n")),
            "{file} not in {}:\n{listing}",
            deb.display()
        );
    }
}

fn field(deb: &Path, name: &str) -> String {
    run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
        .trim()
        .to_owned()
}

#[test]
fn make_deb_builds_three_packages_lintian_accepts() {
    let [lib0, dev, tools] = debs();
    let version = env!("CARGO_PKG_VERSION");
    let multiarch = run(Command::new("dpkg-architecture").arg("-qDEB_HOST_MULTIARCH"));
    let lib = format!("./usr/lib/{}", multiarch.trim());

    assert_holds(
        lib0,
        &[
            &format!("{lib}/libmcshm.so.{version}"),
            &format!("{lib}/libmcshm.so.0 -> libmcshm.so.{version}"),
            "./usr/share/doc/libmcshm0/copyright",
            "./usr/share/doc/libmcshm0/changelog.gz",
        ],
    );
    assert_holds(
        dev,
        &[
            &format!("{lib}/libmcshm.so -> libmcshm.so.0"),
            &format!("{lib}/libmcshm.a"),
            &format!("{lib}/pkgconfig/mcshm.pc"),
            "./usr/include/mcshm.h",
            "./usr/share/man/man3/libmcshm.3.gz",
            "./usr/share/doc/libmcshm-dev/copyright",
            "./usr/share/doc/libmcshm-dev/changelog.gz",
        ],
    );
    assert_holds(
        tools,
        &[
            "./usr/bin/mcadmin",
            "./usr/bin/mclient",
            "./usr/bin/mcproxy",
            "./usr/share/man/man8/mcadmin.8.gz",
            "./usr/share/man/man8/mcproxy.8.gz",
            "./usr/share/man/man1/mclient.1.gz",
            "./usr/share/man/man5/mcshm.5.gz",
            "./usr/share/bash-completion/completions/mcproxy",
            "./usr/share/zsh/site-functions/_mcadmin",
            "./usr/share/fish/vendor_completions.d/mclient.fish",
            "./usr/lib/systemd/system/mcshm-restore@.service",
            "./usr/lib/systemd/system/mcproxy@.service",
            "./usr/lib/systemd/system/mcadmin-watch@.service",
            "./usr/lib/systemd/system/mcadmin-sync.service",
            "./usr/lib/tmpfiles.d/mcshm.conf",
            "./usr/lib/sysusers.d/mcshm.conf",
            "./etc/mcshm/example.list",
            "./etc/mcshm/mcproxy-example.conf",
            "./usr/share/doc/mcshm/copyright",
            "./usr/share/doc/mcshm/changelog.gz",
            "./usr/share/doc/mcshm/README.md.gz",
            "./usr/share/doc/mcshm/DESIGN.md.gz",
            "./usr/share/doc/mcshm/BENCHMARKS.md.gz",
        ],
    );
    // Nothing in two packages: the library is the library's, the dev link the dev package's.
    let tools_listing = run(Command::new("dpkg-deb").arg("-c").arg(tools));
    assert!(!tools_listing.contains("libmcshm.so"), "{tools_listing}");
    let lib_listing = run(Command::new("dpkg-deb").arg("-c").arg(lib0));
    assert!(!lib_listing.contains("libmcshm.so ->"), "{lib_listing}");

    // Dependencies: the library and the tools on what dpkg-shlibdeps finds; the tools link the
    // library statically, so not on libmcshm0; the dev package on its very library.
    assert!(
        field(lib0, "Depends").starts_with("libc6"),
        "{}",
        field(lib0, "Depends")
    );
    assert_eq!(field(lib0, "Section"), "libs");
    assert_eq!(field(lib0, "Multi-Arch"), "same");
    assert_eq!(field(dev, "Depends"), format!("libmcshm0 (= {version})"));
    assert_eq!(field(dev, "Section"), "libdevel");
    let depends = field(tools, "Depends");
    assert!(
        depends.starts_with("libc6") && !depends.contains("libmcshm"),
        "{depends}"
    );
    assert!(
        depends.contains("systemd | systemd-standalone-sysusers"),
        "{depends}"
    );

    // The staged trees the packages were built from.
    let stage = |deb: &Path| deb.with_extension("");
    let stage_lib = stage(lib0).join(lib.trim_start_matches("./"));
    let dev_lib = stage(dev).join(lib.trim_start_matches("./"));
    let dynamic = run(Command::new("readelf")
        .arg("-d")
        .arg(stage_lib.join(format!("libmcshm.so.{version}"))));
    assert!(
        dynamic.contains("Library soname: [libmcshm.so.0]"),
        "{dynamic}"
    );
    for tool in ["mcadmin", "mclient", "mcproxy"] {
        let needed = run(Command::new("readelf")
            .arg("-d")
            .arg(stage(tools).join("usr/bin").join(tool)));
        assert!(
            !needed.contains("libmcshm"),
            "{tool} links libmcshm.so:\n{needed}"
        );
    }
    let control = |deb: &Path, file: &str| {
        std::fs::read_to_string(stage(deb).join("DEBIAN").join(file))
            .unwrap_or_else(|e| panic!("{} DEBIAN/{file}: {e}", deb.display()))
    };
    assert_eq!(
        control(lib0, "shlibs"),
        format!("libmcshm 0 libmcshm0 (>= {version})\n")
    );
    let symbols = control(lib0, "symbols");
    assert!(
        symbols.starts_with("libmcshm.so.0 libmcshm0 #MINVER#\n")
            && symbols.contains(&format!(" mcshm_strerror@Base {version}\n")),
        "{symbols}"
    );
    assert!(control(lib0, "triggers").contains("activate-noawait ldconfig"));
    for script in ["postinst", "prerm", "postrm"] {
        let text = control(tools, script);
        assert!(text.contains("/run/systemd/system"), "{script}: {text}");
    }
    assert!(control(tools, "postinst").contains("systemd-sysusers"));
    assert!(control(tools, "postrm").contains("deb-systemd-helper purge"));

    // The static library keeps no .comment section (lintian: static-library-has-unneeded-sections).
    let sections = run(Command::new("objdump")
        .arg("-h")
        .arg(dev_lib.join("libmcshm.a")));
    assert!(
        !sections.contains(".comment"),
        "libmcshm.a has .comment sections"
    );
    let header = std::fs::read_to_string(stage(dev).join("usr/include/mcshm.h")).unwrap();
    assert!(header.contains(&format!("#define MCSHM_VERSION \"{version}\"")));

    no_executable_stack(&dev_lib, &stage(dev).join("usr/include"));
    units_verify_and_are_hardened(&stage(tools));

    // lintian, pedantic: nothing at all (what does not apply is overridden, with the reason,
    // in packaging/*.lintian-overrides).
    let lintian = Command::new("lintian")
        .args(["--tag-display-limit", "0", "--info", "--pedantic"])
        .args([lib0, dev, tools])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&lintian.stdout);
    let tags: Vec<&str> = said
        .lines()
        .filter(|l| {
            ["E: ", "W: ", "I: ", "P: "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert!(tags.is_empty(), "lintian:\n{said}");
}

/// The packaging scripts pass shellcheck (the maintainer scripts as /bin/sh, which is dash on
/// Debian: no pipefail there). Skipped, saying why, without shellcheck (test.sh installs it).
#[test]
fn packaging_scripts_pass_shellcheck() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Ok(out) = Command::new("shellcheck")
        .args(["packaging/deb.sh", "packaging/boot-test.sh", "test.sh"])
        .current_dir(root)
        .output()
    else {
        eprintln!("skipped: no shellcheck (apt-get install -y shellcheck)");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(Command::new("shellcheck")
        .args(["-s", "sh"])
        .args(["packaging/postinst", "packaging/prerm", "packaging/postrm"])
        .current_dir(root));
    assert!(out.is_empty(), "{out}");
}

/// The packages booted under a real systemd (packaging/boot-test.sh: a debootstrapped Debian in
/// systemd-nspawn, the README's Install and Deploy sections run in it). As root only, where
/// debootstrap and systemd-nspawn are installed; skipped, saying why, elsewhere.
#[test]
fn packages_boot_under_systemd() {
    if !crate::common::is_root() {
        eprintln!("skipped: the boot test needs root (debootstrap, systemd-nspawn)");
        return;
    }
    let missing: Vec<&str> = ["debootstrap", "systemd-nspawn", "nsenter"]
        .into_iter()
        .filter(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "skipped: the boot test needs {}: apt-get install -y debootstrap systemd-container \
             (./test.sh installs them)",
            missing.join(", ")
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("packaging/boot-test.sh"))
        .args(debs())
        .current_dir(root)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{said}");
    match out.status.code() {
        Some(0) => {}
        Some(2) => eprintln!("skipped: the boot test cannot run here (above)"),
        _ => panic!("the boot test failed ({}):\n{said}", out.status),
    }
}

/// A C program linked with libmcshm.a asks for a non-executable stack.
fn no_executable_stack(lib: &Path, include: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("stack.c");
    std::fs::write(
        &source,
        "#include <mcshm.h>\n#include <stdio.h>\n\
         int main(void) { puts(mcshm_library_version()); return 0; }\n",
    )
    .unwrap();
    let program = dir.path().join("stack");
    run(Command::new("cc")
        .arg(&source)
        .arg("-I")
        .arg(include)
        .arg(lib.join("libmcshm.a"))
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&program));
    let out = run(&mut Command::new(&program));
    assert_eq!(out.trim(), env!("CARGO_PKG_VERSION"));
    let headers = run(Command::new("readelf").arg("-lW").arg(&program));
    let stack = headers
        .lines()
        .find(|l| l.contains("GNU_STACK"))
        .expect("a GNU_STACK header");
    assert!(!stack.contains("RWE"), "executable stack: {stack}");
}

/// Each unit verifies (its binaries the staged ones) and is hardened to an exposure of 5 or
/// less by `systemd-analyze security`.
fn units_verify_and_are_hardened(stage: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let bin = stage.join("usr/bin");
    let mut units: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(stage.join("usr/lib/systemd/system")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let unit = dir.path().join(path.file_name().unwrap());
        std::fs::write(
            &unit,
            text.replace("/usr/bin/", &format!("{}/", bin.display())),
        )
        .unwrap();
        units.push(unit);
    }
    assert_eq!(units.len(), 4);
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    for unit in &units {
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--threshold=50"])
            .arg(unit)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&security.stdout);
        assert!(
            security.status.success(),
            "{}: {}",
            unit.display(),
            text.lines().last().unwrap_or_default()
        );
    }
}
