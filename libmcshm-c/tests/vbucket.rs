//! `mcshm_server_for_key` on a vbucket domain answers as libmemcached's virtual buckets do:
//! libmemcached's own vectors (crc, 4 buckets, map {0, 1, 2, 1}), through the C API.

use std::ffi::{CStr, CString, c_char, c_int};
use std::sync::Arc;

use libmcshm::hash::KeyHash;
use libmcshm::placement::{BucketMap, Distribution, Shape};
use libmcshm::table::{Policy, Table};
use libmcshm::{Address, Domain, Registry, Server};
use mcshm::{
    MCSHM_EBADKEY, MCSHM_OK, mcshm_client, mcshm_close, mcshm_open_dir, mcshm_server_for_key,
};

#[test]
fn server_for_key_gives_libmemcacheds_virtual_bucket_vectors() {
    let dir = std::env::temp_dir().join(format!("mcshm-c-vbucket-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let names = ["localhost:11211", "localhost1:11210", "localhost2:11211"];
    let servers = names
        .iter()
        .map(|a| Server::new(Address::parse(a).unwrap()))
        .collect();
    let map = BucketMap::new(Shape::new(4, 0).unwrap(), vec![0, 1, 2, 1], None, 3).unwrap();
    Registry::open_writer(&dir, &Domain::new("vb").unwrap(), true)
        .unwrap()
        .replace(&Table {
            servers,
            policy: Policy {
                distribution: Distribution::VBucket(KeyHash::Crc),
                ..Policy::default()
            },
            buckets: Some(Arc::new(map)),
            ..Table::default()
        })
        .unwrap();
    let (c_dir, c_domain) = (
        CString::new(dir.to_str().unwrap()).unwrap(),
        CString::new("vb").unwrap(),
    );
    let mut client: *mut mcshm_client = std::ptr::null_mut();
    // SAFETY: NUL-terminated strings and a place for the handle.
    let rc = unsafe { mcshm_open_dir(c_dir.as_ptr(), c_domain.as_ptr(), &mut client) };
    assert_eq!(rc, MCSHM_OK);
    let expected = [
        ("hello", 0),
        ("doctor", 0),
        ("name", 1),
        ("continue", 1),
        ("yesterday", 0),
        ("tomorrow", 1),
    ];
    for (key, server) in expected {
        assert_eq!(
            server_for_key(client, key),
            Ok(names[server].to_string()),
            "{key}"
        );
    }
    // libmemcached's seventh vector, "another key" → 2 (checked where keys are placed, in
    // mcshm_table::placement::buckets), holds a space: no memcached text-protocol key, so the C
    // API refuses it as it refuses every such key.
    assert_eq!(server_for_key(client, "another key"), Err(MCSHM_EBADKEY));
    // SAFETY: the handle opened above, closed once.
    unsafe { mcshm_close(client) };
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mcshm_server_for_key` on `key`: the server as `host:port`, or the return code.
fn server_for_key(client: *mut mcshm_client, key: &str) -> Result<String, c_int> {
    let mut host = [0 as c_char; 256];
    let mut port: c_int = 0;
    // SAFETY: a live handle; the key, buffer and port are valid for the lengths given.
    let rc = unsafe {
        mcshm_server_for_key(
            client,
            key.as_ptr().cast(),
            key.len(),
            host.as_mut_ptr(),
            host.len(),
            &mut port,
        )
    };
    if rc != MCSHM_OK {
        return Err(rc);
    }
    // SAFETY: the call wrote a NUL-terminated name into `host`.
    let host = unsafe { CStr::from_ptr(host.as_ptr()) }.to_str().unwrap();
    Ok(format!("{host}:{port}"))
}
