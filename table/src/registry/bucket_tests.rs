//! A `vbucket` domain's map in the file (format 4): written with its version, read back by
//! every reader, kept across versions that do not change it (a delta read copies no map),
//! grown into a larger file when it does not fit, and refused when it does not fit its table.

use std::sync::Arc;

use crate::address::Address;
use crate::domain::Domain;
use crate::error::Error;
use crate::hash::KeyHash;
use crate::placement::{BucketMap, Distribution, Shape};
use crate::registry::Registry;
use crate::table::{Server, Table};

fn servers(n: usize) -> Vec<Server> {
    (0..n)
        .map(|i| Server::new(Address::parse(&format!("127.0.0.1:{}", 20000 + i)).unwrap()))
        .collect()
}

fn vbucket(t: &mut Table, n: usize, shape: Shape) -> crate::error::Result<()> {
    t.servers = servers(n);
    t.policy.distribution = Distribution::VBucket(KeyHash::Crc);
    let positions: Vec<usize> = (0..n).collect();
    t.buckets = Some(Arc::new(BucketMap::balanced(shape, &positions)));
    Ok(())
}

#[test]
fn a_bucket_map_is_read_back_by_every_reader_and_kept_by_a_delta() {
    let dir = tempfile::tempdir().unwrap();
    let domain = Domain::new("vb").unwrap();
    let mut writer = Registry::open_writer(dir.path(), &domain, true).unwrap();
    let shape = Shape::new(1024, 1).unwrap();
    writer.transact(|t| vbucket(t, 3, shape)).unwrap();
    let mut reader = Registry::open(dir.path(), &domain).unwrap();
    let first = reader.snapshot().unwrap();
    let map = first.buckets.clone().expect("the map is read");
    assert_eq!(*map, BucketMap::balanced(shape, &[0, 1, 2]));
    // A reason changes one entry: the reader copies it and keeps its map.
    writer
        .transact(|t| {
            t.servers[1].reason = "noted".into();
            Ok(())
        })
        .unwrap();
    let deltas = reader.work().delta_reads;
    let second = reader.snapshot().unwrap();
    assert_eq!(reader.work().delta_reads, deltas + 1, "read as a delta");
    assert_eq!(second.servers[1].reason, "noted");
    assert_eq!(second.buckets.as_deref(), Some(&*map));
    // A move staged: a whole read brings the forward rows.
    writer
        .transact(|t| {
            let mut moved = (**t.buckets.as_ref().unwrap()).clone();
            moved.stage(0, 2);
            t.buckets = Some(Arc::new(moved));
            Ok(())
        })
        .unwrap();
    let third = reader.snapshot().unwrap();
    let staged = third.buckets.as_ref().unwrap();
    assert_eq!(staged.owner(0), Some(2));
    assert_eq!(staged.moving(), 1);
    assert_eq!(
        *third,
        *Registry::open(dir.path(), &domain)
            .unwrap()
            .snapshot()
            .unwrap()
    );
}

#[test]
fn the_largest_map_grows_the_file_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let domain = Domain::new("big").unwrap();
    let mut writer = Registry::open_writer(dir.path(), &domain, true).unwrap();
    writer
        .transact(|t| {
            vbucket(t, 7, Shape::new(65_536, 4).unwrap())?;
            let mut map = (**t.buckets.as_ref().unwrap()).clone();
            for b in 0..1000 {
                map.stage(b, (b + 3) % 7);
            }
            t.buckets = Some(Arc::new(map));
            Ok(())
        })
        .unwrap();
    assert!(writer.capacity() > 256, "grown: {}", writer.capacity());
    let snapshot = Registry::open(dir.path(), &domain)
        .unwrap()
        .snapshot()
        .unwrap();
    let map = snapshot.buckets.as_ref().unwrap();
    assert_eq!(map.buckets(), 65_536);
    assert_eq!(map.width(), 5);
    assert_eq!(map.moving(), 1000);
}

#[test]
fn a_map_that_does_not_fit_its_table_is_refused_and_the_file_kept() {
    let dir = tempfile::tempdir().unwrap();
    let domain = Domain::new("bad").unwrap();
    let mut writer = Registry::open_writer(dir.path(), &domain, true).unwrap();
    let shape = Shape::new(16, 0).unwrap();
    writer.transact(|t| vbucket(t, 3, shape)).unwrap();
    let before = std::fs::read(domain.path_in(dir.path())).unwrap();
    let no_map = writer.transact(|t| {
        t.buckets = None;
        Ok(())
    });
    assert!(
        matches!(no_map, Err(Error::BadBuckets { .. })),
        "{no_map:?}"
    );
    let ketama_with_map = writer.transact(|t| {
        t.policy.distribution = Distribution::Ketama;
        Ok(())
    });
    assert!(matches!(ketama_with_map, Err(Error::BadBuckets { .. })));
    // Removing a server the map names is refused; the edit says what to do.
    let named = writer.transact(|t| t.remove_servers(|s| s.address.port() == Some(20001)));
    let text = named.unwrap_err().to_string();
    assert!(
        text.contains("127.0.0.1:20001") && text.contains("buckets move"),
        "{text}"
    );
    assert_eq!(std::fs::read(domain.path_in(dir.path())).unwrap(), before);
}

#[test]
fn removing_a_server_the_map_does_not_name_renumbers_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let domain = Domain::new("renumber").unwrap();
    let mut writer = Registry::open_writer(dir.path(), &domain, true).unwrap();
    writer
        .transact(|t| {
            t.servers = servers(3);
            t.policy.distribution = Distribution::VBucket(KeyHash::OneAtATime);
            t.buckets = Some(Arc::new(BucketMap::balanced(
                Shape::new(8, 0).unwrap(),
                &[0, 2],
            )));
            Ok(())
        })
        .unwrap();
    writer
        .transact(|t| t.remove_servers(|s| s.address.port() == Some(20001)))
        .unwrap();
    let snapshot = writer.current_snapshot().unwrap();
    assert_eq!(snapshot.servers.len(), 2);
    assert_eq!(
        snapshot.buckets.as_ref().unwrap().cells(),
        &[0, 1, 0, 1, 0, 1, 0, 1]
    );
}
