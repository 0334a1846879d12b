//! The shared library's SONAME: libmcshm.so.MAJOR, so that programs bind to an ABI major
//! version and the library can be installed as libmcshm.so.MAJOR.MINOR.PATCH beside its links.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmcshm.so.{major}");
}
