//! The C API's overhead over the Rust API, for key → server and for a get against a local
//! memcached (started here; needs `memcached` on PATH).
//!
//! Run: cargo bench -p libmcshm-c --bench ffi

use std::ffi::{CString, c_char, c_int};
use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use libmcshm::{Address, Client, Domain, Registry, Server, Timeouts, table::Table};
use mcshm::{
    MCSHM_OK, mcshm_client, mcshm_close, mcshm_free, mcshm_get, mcshm_open_dir,
    mcshm_server_for_key,
};

const KEY: &[u8] = b"user:1234567:profile:settings!";

fn start_memcached(dir: &std::path::Path) -> (Child, u16) {
    let ports = dir.join("ports");
    let child = Command::new("memcached")
        .args(["-l", "127.0.0.1", "-p", "-1", "-U", "0", "-u", "root"])
        .env("MEMCACHED_PORT_FILENAME", &ports)
        .stdout(Stdio::null())
        .spawn()
        .expect("memcached on PATH");
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&ports).unwrap_or_default();
        if let Some(port) = text.lines().find_map(|l| l.strip_prefix("TCP INET: ")) {
            return (child, port.trim().parse().unwrap());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("memcached did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn main() {
    let dir = tempfile_dir();
    let (mut memcached, port) = start_memcached(&dir);
    let domain = Domain::new("ffi").unwrap();
    let mut servers: Vec<Server> = (0..99)
        .map(|i| Server::new(Address::parse(&format!("cache{i}.example.com")).unwrap()))
        .collect();
    servers.insert(
        0,
        Server::new(Address::parse(&format!("127.0.0.1:{port}")).unwrap()),
    );
    Registry::open_writer(&dir, &domain, true)
        .unwrap()
        .replace(&Table {
            servers,
            ..Table::default()
        })
        .unwrap();
    let mut rust = Client::for_domain(&dir, &domain, Timeouts::default()).unwrap();
    // A key on the live server, for the get benchmarks.
    let live = (0..100_000)
        .map(|i| format!("k{i}"))
        .find(|k| rust.server_for(k.as_bytes()).unwrap().port() == Some(port))
        .unwrap();
    rust.set(live.as_bytes(), b"0123456789abcdef", 0, 0)
        .unwrap();

    let c_dir = CString::new(dir.to_str().unwrap()).unwrap();
    let c_domain = CString::new("ffi").unwrap();
    let mut handle: *mut mcshm_client = std::ptr::null_mut();
    // SAFETY: valid NUL-terminated strings and a valid out-pointer.
    let opened = unsafe { mcshm_open_dir(c_dir.as_ptr(), c_domain.as_ptr(), &mut handle) };
    assert_eq!(opened, MCSHM_OK);

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("api");
    group.bench_function("rust_server_for_key", |b| {
        b.iter(|| black_box(rust.server_for(black_box(KEY)).unwrap().port()))
    });
    group.bench_function("c_server_for_key", |b| {
        let mut host = [0 as c_char; 256];
        let mut port: c_int = 0;
        b.iter(|| {
            // SAFETY: a live handle used by this thread only; buffers valid for their lengths.
            let rc = unsafe {
                mcshm_server_for_key(
                    handle,
                    KEY.as_ptr().cast(),
                    KEY.len(),
                    host.as_mut_ptr(),
                    host.len(),
                    &mut port,
                )
            };
            black_box((rc, port))
        })
    });
    group.bench_function("rust_get", |b| {
        b.iter(|| black_box(rust.get(live.as_bytes()).unwrap()))
    });
    group.bench_function("c_get", |b| {
        b.iter(|| {
            let (mut value, mut len): (*mut c_char, usize) = (std::ptr::null_mut(), 0);
            // SAFETY: a live handle; the key is valid for its length; the out-pointers are ours.
            let rc = unsafe {
                mcshm_get(
                    handle,
                    live.as_ptr().cast(),
                    live.len(),
                    &mut value,
                    &mut len,
                    std::ptr::null_mut(),
                )
            };
            // SAFETY: `value` came from mcshm_get (or is null).
            unsafe { mcshm_free(value) };
            black_box((rc, len))
        })
    });
    group.finish();
    c.final_summary();
    // SAFETY: the handle is live and closed once.
    unsafe { mcshm_close(handle) };
    let _ = memcached.kill();
    let _ = memcached.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mcshm-ffi-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
