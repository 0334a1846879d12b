//! The writer's last line of defence: a table whose fields do not fit the format is refused
//! with an error naming the server, and the file stays as it was, whoever built the table (an
//! edit that skipped the checks, a value from etcd).

use crate::address::Address;
use crate::domain::Domain;
use crate::error::Error;
use crate::registry::Registry;
use crate::table::{MAX_REASON_LEN, Server};

fn domain_with_one_server(dir: &std::path::Path) -> (Registry, Vec<u8>) {
    let domain = Domain::new("checked").unwrap();
    let mut registry = Registry::open_writer(dir, &domain, true).unwrap();
    registry
        .transact(|t| {
            t.servers
                .push(Server::new(Address::parse("127.0.0.1:1").unwrap()));
            Ok(())
        })
        .unwrap();
    let bytes = std::fs::read(domain.path_in(dir)).unwrap();
    (registry, bytes)
}

#[test]
fn a_reason_longer_than_its_field_is_refused_and_the_file_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut registry, before) = domain_with_one_server(dir.path());
    let long = "e".repeat(MAX_REASON_LEN + 29);
    let result = registry.transact(|t| {
        t.servers[0].reason = long.clone();
        Ok(())
    });
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("127.0.0.1:1") && text.contains("reason of 221 bytes"),
        "{text}"
    );
    let path = Domain::new("checked").unwrap().path_in(dir.path());
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "the file is as it was"
    );
}

#[test]
fn a_weight_of_zero_is_refused_before_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (mut registry, _) = domain_with_one_server(dir.path());
    let err = registry
        .transact(|t| {
            t.servers[0].weight = 0;
            Ok(())
        })
        .unwrap_err();
    assert!(err.to_string().contains("weight 0"), "{err}");
    assert_eq!(registry.current_snapshot().unwrap().servers[0].weight, 1);
}
