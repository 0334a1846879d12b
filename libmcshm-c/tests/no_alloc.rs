//! key → server from C allocates nothing: 10 000 lookups of distinct keys on hostname, IPv4
//! and IPv6 lists of 3, 100 and 1 000 servers (a private list, a domain's shared ring, and a
//! vbucket domain's map of 8 192 buckets), with
//! a global allocator that counts the allocations this thread makes while they run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::{CString, c_char, c_int};

use std::sync::Arc;

use libmcshm::hash::KeyHash;
use libmcshm::placement::{BucketMap, Distribution, Shape};
use libmcshm::table::{Policy, Table};
use libmcshm::{Address, Domain, Registry, Server};
use mcshm::{MCSHM_OK, mcshm_client, mcshm_close, mcshm_open_dir, mcshm_open_servers};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed to the system allocator unchanged; counting touches only
// const-initialised thread-locals, which do not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn names(kind: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match kind {
            "hostname" => format!("cache{i}.example.com:11211"),
            "ipv4" => format!("10.1.{}.{}:11211", i / 256, i % 256),
            _ => format!("[2001:db8::{:x}]:11211", i + 1),
        })
        .collect()
}

/// Allocations made by 10 000 lookups of distinct keys (after a warm-up).
fn allocations(client: *mut mcshm_client) -> u64 {
    let keys: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!("user:{i:08}:profile").into_bytes())
        .collect();
    let mut host = [0 as c_char; 256];
    let mut port: c_int = 0;
    let mut lookup = |key: &[u8]| {
        // SAFETY: a live handle; `key`, `host` and `port` are valid for the lengths given.
        let rc = unsafe {
            mcshm::mcshm_server_for_key(
                client,
                key.as_ptr().cast(),
                key.len(),
                host.as_mut_ptr(),
                host.len(),
                &mut port,
            )
        };
        assert_eq!(rc, MCSHM_OK);
    };
    for key in keys.iter().take(100) {
        lookup(key);
    }
    COUNT.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    for key in &keys {
        lookup(key);
    }
    COUNTING.with(|c| c.set(false));
    COUNT.with(Cell::get)
}

#[test]
fn key_to_server_from_c_allocates_nothing() {
    let dir = tempfile_dir();
    for kind in ["hostname", "ipv4", "ipv6"] {
        for n in [3, 100, 1000] {
            let list = names(kind, n);
            let spec = CString::new(list.join(",")).unwrap();
            let mut client: *mut mcshm_client = std::ptr::null_mut();
            // SAFETY: a NUL-terminated list and a place for the handle.
            let rc = unsafe { mcshm_open_servers(spec.as_ptr(), &mut client) };
            assert_eq!(rc, MCSHM_OK);
            assert_eq!(allocations(client), 0, "{kind} list of {n}");
            // SAFETY: the handle just opened, closed once.
            unsafe { mcshm_close(client) };

            let domain = format!("{kind}{n}");
            let servers: Vec<Server> = list
                .iter()
                .map(|a| Server::new(Address::parse(a).unwrap()))
                .collect();
            Registry::open_writer(&dir, &Domain::new(&domain).unwrap(), true)
                .unwrap()
                .replace(&Table {
                    servers,
                    ..Table::default()
                })
                .unwrap();
            let (c_dir, c_domain) = (
                CString::new(dir.to_str().unwrap()).unwrap(),
                CString::new(domain).unwrap(),
            );
            // SAFETY: NUL-terminated strings and a place for the handle.
            let rc = unsafe { mcshm_open_dir(c_dir.as_ptr(), c_domain.as_ptr(), &mut client) };
            assert_eq!(rc, MCSHM_OK);
            assert_eq!(allocations(client), 0, "{kind} domain of {n}");
            // SAFETY: the handle just opened, closed once.
            unsafe { mcshm_close(client) };

            // The same servers as a vbucket domain (libmemcached's virtual buckets).
            let vbucket = format!("vb{kind}{n}");
            Registry::open_writer(&dir, &Domain::new(&vbucket).unwrap(), true)
                .unwrap()
                .replace(&Table {
                    servers: list
                        .iter()
                        .map(|a| Server::new(Address::parse(a).unwrap()))
                        .collect(),
                    policy: Policy {
                        distribution: Distribution::VBucket(KeyHash::Crc),
                        ..Policy::default()
                    },
                    buckets: Some(Arc::new(BucketMap::balanced(
                        Shape::new(8192, 1).unwrap(),
                        &(0..n).collect::<Vec<_>>(),
                    ))),
                    ..Table::default()
                })
                .unwrap();
            let c_domain = CString::new(vbucket).unwrap();
            // SAFETY: NUL-terminated strings and a place for the handle.
            let rc = unsafe { mcshm_open_dir(c_dir.as_ptr(), c_domain.as_ptr(), &mut client) };
            assert_eq!(rc, MCSHM_OK);
            assert_eq!(allocations(client), 0, "{kind} vbucket domain of {n}");
            // SAFETY: the handle just opened, closed once.
            unsafe { mcshm_close(client) };
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mcshm-no-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
