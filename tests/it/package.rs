//! `make deb` builds a package an operator can install: what it holds (the tools, the library
//! with its SONAME and links, the header with its version, pkg-config, manuals, completions,
//! units, /etc/mcshm), what it depends on, that lintian finds no error in it, that a C program
//! linked with its static library has no executable stack, and that its units verify and
//! are hardened to an exposure of 5 or less. The debug build is packaged (PROFILE=debug) so the
//! suite needs no release build; `make deb` packages the release build.

use std::path::{Path, PathBuf};
use std::process::Command;

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

#[test]
fn make_deb_builds_a_package_lintian_accepts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deb = run(Command::new("make")
        .arg("-s")
        .arg("deb")
        .current_dir(root)
        .env("PROFILE", "debug"));
    let deb = root.join(deb.trim());
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb.ends_with(format!(
            "mcshm_{version}_{}.deb",
            run(Command::new("dpkg").arg("--print-architecture")).trim()
        )),
        "{}",
        deb.display()
    );

    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let multiarch = run(Command::new("dpkg-architecture").arg("-qDEB_HOST_MULTIARCH"));
    let lib = format!("./usr/lib/{}", multiarch.trim());
    for file in [
        "./usr/bin/mcadmin",
        "./usr/bin/mclient",
        "./usr/bin/mcproxy",
        &format!("{lib}/libmcshm.so.{version}"),
        &format!("{lib}/libmcshm.so.0 -> libmcshm.so.{version}"),
        &format!("{lib}/libmcshm.so -> libmcshm.so.0"),
        &format!("{lib}/libmcshm.a"),
        &format!("{lib}/pkgconfig/mcshm.pc"),
        "./usr/include/mcshm.h",
        "./usr/share/man/man8/mcadmin.8.gz",
        "./usr/share/man/man8/mcproxy.8.gz",
        "./usr/share/man/man1/mclient.1.gz",
        "./usr/share/man/man3/libmcshm.3.gz",
        "./usr/share/man/man5/mcshm.5.gz",
        "./usr/share/bash-completion/completions/mcproxy",
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
    ] {
        assert!(
            listing.contains(&format!(" {file}\n")),
            "{file} not in:\n{listing}"
        );
    }
    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    assert!(info.contains("Depends: libc6"), "{info}");
    assert!(
        info.contains("shlibs") && info.contains("triggers"),
        "{info}"
    );

    // The staged tree the package was built from.
    let stage = deb.with_extension("");
    let stage_lib = stage.join(lib.trim_start_matches("./"));
    let dynamic = run(Command::new("readelf")
        .arg("-d")
        .arg(stage_lib.join(format!("libmcshm.so.{version}"))));
    assert!(
        dynamic.contains("Library soname: [libmcshm.so.0]"),
        "{dynamic}"
    );
    let header = std::fs::read_to_string(stage.join("usr/include/mcshm.h")).unwrap();
    assert!(header.contains(&format!("#define MCSHM_VERSION \"{version}\"")));

    no_executable_stack(&stage_lib, &stage.join("usr/include"));
    units_verify_and_are_hardened(&stage);

    let lintian = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&lintian.stdout);
    let errors: Vec<&str> = said.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{said}");
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
