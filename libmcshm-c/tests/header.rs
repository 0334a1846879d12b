//! include/mcshm.h is what cbindgen makes of the code. Refresh with:
//! MCSHM_UPDATE_HEADER=1 cargo test -p libmcshm-c --test header

use std::path::Path;

#[test]
fn mcshm_h_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    // The version macros, from the crate's version (mcshm_library_version() gives the library's).
    config.after_includes = Some(format!(
        "\n/* The version of libmcshm this header belongs to (mcshm_library_version(): the library's). */\n\
         #define MCSHM_VERSION_MAJOR {}\n#define MCSHM_VERSION_MINOR {}\n\
         #define MCSHM_VERSION_PATCH {}\n#define MCSHM_VERSION \"{}\"\n",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION"),
    ));
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen")
        .write(&mut generated);
    let path = crate_dir.join("../include/mcshm.h");
    if std::env::var_os("MCSHM_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/mcshm.h is out of date; refresh it with: MCSHM_UPDATE_HEADER=1 cargo test -p libmcshm-c --test header"
    );
}
