//! The two directions of the agent, both measured against the *base* (the fleet table at the
//! revision the local table mirrors, see [`crate::mirror`]):
//! - fleet → host: [`Agent::apply`] mirrors a newer fleet revision into the local table,
//!   keeping this host's marks that are not pushed yet;
//! - host → fleet: [`Agent::push`] writes this host's marks onto the newest fleet table.
//!
//! Kept apart from the loop because every decision here is about tables and revisions, not
//! about when things happen: those decisions are the functions of data at the end of this
//! file (which revision is news, which marks survive a mirror, what a base read means), and
//! they are tested without etcd or a table file.

use mcshm_table::Domain;
use mcshm_table::clock::now_ms;
use mcshm_table::table::{CommitInfo, Table};

use super::{Agent, Mirror, SyncEvent, refused};
use crate::etcd::EtcdError;
use crate::mirror::{self, Mark};
use crate::store::{Fleet, FleetError, FleetTable};

impl Agent {
    /// Mirrors fleet `table` into the local table, unless the local one mirrors a newer (or
    /// the same) revision already.
    pub(super) fn apply(
        &mut self,
        domain: &Domain,
        table: FleetTable,
        events: &mut dyn FnMut(SyncEvent),
    ) {
        let fleet = self.fleet.clone();
        let by = self.push_by();
        let Some(mirror) = self.active(domain, true, events) else {
            return;
        };
        let Ok(local) = mirror.writer.as_mut().expect("active").current_snapshot() else {
            return;
        };
        let local_revision = local.fleet_revision as i64;
        match incoming(table.revision, local_revision, mirror.base.is_some()) {
            Incoming::Old => return,
            Incoming::Base => {
                mirror.base = Some(table);
                return;
            }
            Incoming::New => {}
        }
        let base = base_for(&fleet, mirror, local_revision, events).cloned();
        let revision = table.revision;
        let mut kept = 0;
        // Our own push that lost its answer, landed now: where this host has moved on since,
        // its newer state supersedes it.
        let ours = table.changed.by == by;
        let in_doubt = std::mem::take(&mut mirror.in_doubt);
        let writer = mirror.writer.as_mut().expect("active");
        let result = writer.transact(|t| {
            let in_doubt = if ours { &in_doubt[..] } else { &[] };
            kept = mirror_into(t, base.as_ref(), in_doubt, &table);
            Ok(())
        });
        match result {
            Ok(_) => {
                let applied_ms = now_ms();
                mirror.applied_ms = applied_ms;
                mirror.base = Some(table);
                mirror.pending |= kept > 0;
                events(SyncEvent::Applied {
                    domain: domain.to_string(),
                    revision,
                });
                // `hosts` says it once the fan-out is over (a domain new here, at once).
                self.record.touch(domain.as_str(), applied_ms);
                if kept > 0 {
                    self.push(domain, events);
                }
            }
            Err(e) => events(SyncEvent::Refused {
                key: fleet.domain_key(domain),
                why: e.to_string(),
            }),
        }
    }

    /// Pushes this host's marks on `domain` to the fleet (kept pending if etcd does not take
    /// them), then mirrors the revision written.
    pub(super) fn push(&mut self, domain: &Domain, events: &mut dyn FnMut(SyncEvent)) {
        let fleet = self.fleet.clone();
        let by = self.push_by();
        let connected = self.connected == Some(true);
        let Some(mirror) = self.active(domain, false, events) else {
            return;
        };
        if !connected {
            // Cut off: nothing is sent to an etcd that may be hung (it would take the request
            // and apply it whenever it resumes, however stale by then). The marks wait; what
            // is pushed once etcd answers again is the host's state at that time.
            mirror.pending = true;
            return;
        }
        let Ok(local) = mirror.writer.as_mut().expect("active").current_snapshot() else {
            return;
        };
        if local.fleet_revision == 0 {
            return; // never mirrored: nothing of ours to push yet
        }
        let Some(base) = base_for(&fleet, mirror, local.fleet_revision as i64, events) else {
            return;
        };
        let marks = mirror::local_marks(&base.table, &local.table());
        if marks.is_empty() {
            mirror.pending = false;
            return;
        }
        let mut applied = 0;
        let result = fleet.transact(domain, false, &by, |t| {
            applied = mirror::apply_marks(t, &marks);
            Ok(())
        });
        match result {
            Ok(commit) => {
                mirror.pending = false;
                mirror.in_doubt.clear();
                events(pushed(domain, &marks, applied, commit.revision));
                self.set_connected(true, "", events);
                match fleet.read(domain) {
                    Ok(Some(table)) => self.apply(domain, table, events),
                    Ok(None) => {}
                    Err(e) => refused(e, events),
                }
            }
            Err(FleetError::Etcd(e @ EtcdError::Unreachable(_))) => {
                mirror.pending = true;
                mirror.in_doubt = marks;
                self.set_connected(false, &e.to_string(), events);
            }
            Err(e) => {
                mirror.pending = true;
                refused(e, events);
            }
        }
    }
}

/// The fleet table at `revision` (the local table's base): cached, else read from etcd. When
/// etcd compacted it away, there is no base: the local marks cannot be told from the fleet's
/// and are dropped (a full resync).
fn base_for<'m>(
    fleet: &Fleet,
    mirror: &'m mut Mirror,
    revision: i64,
    events: &mut dyn FnMut(SyncEvent),
) -> Option<&'m FleetTable> {
    if revision == 0 {
        return None;
    }
    if mirror.base.as_ref().is_none_or(|b| b.revision != revision) {
        let (base, resync) = base_read(fleet.read_at(&mirror.domain, revision), revision);
        if resync {
            events(SyncEvent::Resync {
                domain: mirror.domain.to_string(),
            });
        }
        mirror.base = base;
    }
    mirror.base.as_ref()
}

/// What a fleet table at revision `incoming` is to a local table that mirrors `local`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Incoming {
    /// Older than the local one, or the same and the base is known: nothing to do.
    Old,
    /// The very revision the local table mirrors, whose base was not known: it is the base.
    Base,
    /// Newer: mirror it.
    New,
}

fn incoming(incoming: i64, local: i64, has_base: bool) -> Incoming {
    match incoming.cmp(&local) {
        std::cmp::Ordering::Greater => Incoming::New,
        std::cmp::Ordering::Equal if !has_base => Incoming::Base,
        _ => Incoming::Old,
    }
}

/// The base a read of the fleet table at `revision` gives, and whether the read found it gone
/// (compacted away, or the domain no longer had a value there): then the local marks cannot
/// be told from the fleet's, and a full resync is reported. A read that failed otherwise (etcd
/// unreachable, a refused value) gives no base and no resync: the next look tries again.
fn base_read(
    read: Result<Option<FleetTable>, FleetError>,
    revision: i64,
) -> (Option<FleetTable>, bool) {
    match read {
        Ok(Some(table)) if table.revision == revision => (Some(table), false),
        Ok(_) | Err(FleetError::Etcd(EtcdError::Compacted(_))) => (None, true),
        Err(_) => (None, false),
    }
}

/// The local marks that survive mirroring `fleet` into `local` (read under the writer lock):
/// the differences between `base` and `local` when `base` is the table `local` mirrors (none
/// otherwise: the local marks cannot be told from the fleet's), and, from `in_doubt` (marks of
/// this agent's push that lost its answer, when `fleet` is that push landed), those where
/// this host has moved on since.
fn marks_to_keep(
    base: Option<&FleetTable>,
    local: &Table,
    in_doubt: &[Mark],
    fleet: &Table,
) -> Vec<Mark> {
    let mut marks = base
        .filter(|b| b.revision == local.fleet_revision as i64)
        .map(|b| mirror::local_marks(&b.table, local))
        .unwrap_or_default();
    marks.extend(mirror::superseding(in_doubt, fleet, local));
    marks
}

/// Mirrors fleet `table` into `local` (the local table under the writer lock), unless it
/// mirrors that revision or a newer one already; returns how many of this host's marks were
/// kept. Only what differs changes: a server the fleet left as it was keeps its entry byte for
/// byte, so the version costs each reader what changed (see `mcshm_table::work`).
fn mirror_into(
    local: &mut Table,
    base: Option<&FleetTable>,
    in_doubt: &[Mark],
    table: &FleetTable,
) -> usize {
    if local.fleet_revision as i64 >= table.revision {
        return 0;
    }
    // The marks are taken from the table under the writer lock: a client's mark-down
    // committed a moment ago is kept, not overwritten by the fleet's older state.
    let marks = marks_to_keep(base, local, in_doubt, &table.table);
    let revision = table.revision as u64;
    mirror::mirror(local, &table.table, revision, &marks, CommitInfo::now())
}

/// The event of a push etcd took: `applied` of `marks` were still news to the fleet.
fn pushed(domain: &Domain, marks: &[Mark], applied: usize, revision: i64) -> SyncEvent {
    let described: Vec<String> = marks.iter().map(Mark::describe).collect();
    match applied {
        0 => SyncEvent::Superseded {
            domain: domain.to_string(),
            marks: described,
        },
        _ => SyncEvent::Pushed {
            domain: domain.to_string(),
            revision,
            marks: described,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::Changed;
    use mcshm_table::Address;
    use mcshm_table::table::{Server, State};

    fn table(states: &[(&str, State)], fleet_revision: u64) -> Table {
        Table {
            servers: states
                .iter()
                .map(|(a, state)| Server {
                    state: *state,
                    ..Server::new(Address::parse(a).unwrap())
                })
                .collect(),
            fleet_revision,
            ..Table::default()
        }
    }

    fn at(revision: i64, table: Table) -> FleetTable {
        FleetTable {
            table,
            changed: Changed::default(),
            revision,
        }
    }

    #[test]
    fn only_a_newer_fleet_revision_is_mirrored() {
        assert_eq!(incoming(8, 7, true), Incoming::New);
        assert_eq!(incoming(8, 7, false), Incoming::New);
        assert_eq!(
            incoming(1, 0, false),
            Incoming::New,
            "a table never mirrored"
        );
        assert_eq!(incoming(6, 7, true), Incoming::Old);
        assert_eq!(
            incoming(6, 7, false),
            Incoming::Old,
            "an older one is no base"
        );
        assert_eq!(incoming(7, 7, true), Incoming::Old);
    }

    #[test]
    fn the_revision_mirrored_already_becomes_the_base_when_none_is_known() {
        // After a restart the local table mirrors revision 7, and the watch's full read brings
        // revision 7: nothing to write, but the base no longer needs a read of etcd.
        assert_eq!(incoming(7, 7, false), Incoming::Base);
    }

    #[test]
    fn a_base_read_gives_the_table_only_at_the_revision_asked() {
        let base = at(7, table(&[("a", State::Up)], 0));
        assert_eq!(base_read(Ok(Some(base.clone())), 7), (Some(base), false));
        // etcd has no such revision any more, or the domain had no value then: resync.
        let later = at(9, table(&[("a", State::Up)], 0));
        assert_eq!(base_read(Ok(Some(later)), 7), (None, true));
        assert_eq!(base_read(Ok(None), 7), (None, true));
        let compacted = Err(FleetError::Etcd(EtcdError::Compacted(8)));
        assert_eq!(base_read(compacted, 7), (None, true));
    }

    #[test]
    fn a_base_read_that_failed_is_no_resync_the_next_look_reads_again() {
        for e in [
            FleetError::Etcd(EtcdError::Unreachable("no member".into())),
            FleetError::Etcd(EtcdError::Refused("permission denied".into())),
            FleetError::Hostile {
                key: "/mcshm/domains/a".into(),
                why: "bad".into(),
            },
        ] {
            let what = e.to_string();
            assert_eq!(base_read(Err(e), 7), (None, false), "{what}");
        }
    }

    #[test]
    fn local_marks_survive_a_mirror_only_against_the_base_the_local_table_mirrors() {
        let base = at(5, table(&[("a", State::Up), ("b", State::Up)], 0));
        // A client marked b down on this host since revision 5.
        let local = table(&[("a", State::Up), ("b", State::Down)], 5);
        let fleet = table(&[("a", State::Down), ("b", State::Up)], 0);
        let marks = marks_to_keep(Some(&base), &local, &[], &fleet);
        let described: Vec<String> = marks.iter().map(Mark::describe).collect();
        assert_eq!(described, ["b:11211 up -> down"]);
        // A base of another revision cannot tell this host's marks from the fleet's.
        let other = at(4, base.table.clone());
        assert!(marks_to_keep(Some(&other), &local, &[], &fleet).is_empty());
        assert!(marks_to_keep(None, &local, &[], &fleet).is_empty());
    }

    #[test]
    fn a_lost_push_that_landed_is_superseded_by_the_newer_local_state() {
        let base = table(&[("a", State::Up)], 0);
        let mut pushed_down = base.clone();
        pushed_down.servers[0].state = State::Down;
        pushed_down.servers[0].since_ms = 10;
        let in_doubt = mirror::local_marks(&base, &pushed_down);
        // The push landed as revision 6; meanwhile this host brought a back (since 20).
        let mut local = base.clone();
        local.fleet_revision = 5;
        local.servers[0].since_ms = 20;
        let landed = pushed_down.clone();
        let marks = marks_to_keep(None, &local, &in_doubt, &landed);
        let described: Vec<String> = marks.iter().map(Mark::describe).collect();
        assert_eq!(described, ["a:11211 down -> up"]);
        // Without marks in doubt (the revision is another writer's), the fleet's state wins.
        assert!(marks_to_keep(None, &local, &[], &landed).is_empty());
    }

    #[test]
    fn a_push_etcd_took_is_reported_as_pushed_or_as_superseded_when_nothing_was_news() {
        let domain = Domain::new("app1").unwrap();
        let base = table(&[("a", State::Up)], 0);
        let down = table(&[("a", State::Down)], 0);
        let marks = mirror::local_marks(&base, &down);
        assert_eq!(
            pushed(&domain, &marks, 1, 12),
            SyncEvent::Pushed {
                domain: "app1".into(),
                revision: 12,
                marks: vec!["a:11211 up -> down".into()],
            }
        );
        assert_eq!(
            pushed(&domain, &marks, 0, 12),
            SyncEvent::Superseded {
                domain: "app1".into(),
                marks: vec!["a:11211 up -> down".into()],
            }
        );
    }
}

/// What the fleet mirror's changes cost the readers of a 10 000-server host table, counted:
/// a fleet change of one server is one changed entry in the local table, read as such, and
/// looked up in the ring the mirror wrote into the file.
#[cfg(test)]
mod cost_tests {
    use libmcshm::table::{Server, State, Table};
    use libmcshm::{Address, Client, Domain, Registry, Timeouts, WorkCounters};

    use super::mirror_into;
    use crate::document::{self, Changed};
    use crate::store::FleetTable;

    const SERVERS: usize = 10_000;

    /// The fleet's document of `table` at `revision`, as an agent reads it from etcd.
    fn fleet(table: &Table, revision: i64) -> FleetTable {
        let (table, changed) = document::decode(&document::encode(table, &Changed::default()))
            .expect("a document of ours");
        FleetTable {
            table,
            changed,
            revision,
        }
    }

    /// Mirrors `table` into the host's table as the agent does; what it cost `client`'s next
    /// lookup.
    fn apply(writer: &mut Registry, client: &mut Client, table: &FleetTable) -> WorkCounters {
        let commit = writer
            .transact(|t| {
                mirror_into(t, None, &[], table);
                Ok(())
            })
            .unwrap();
        assert!(commit.changed);
        let before = client.work();
        client.server_for(b"user:00000001:profile").unwrap();
        client.work().since(&before)
    }

    fn assert_cheap(what: &str, work: WorkCounters) {
        assert!(
            work.whole_reads == 0
                && work.delta_reads == 1
                && work.entries_decoded <= 8
                && work.rings_built == 0
                && work.shared_rings == 1
                && work.servers_cloned == 0,
            "{what}: {work:?}"
        );
    }

    #[test]
    fn a_mirrored_change_of_one_server_costs_a_reader_one_entry_and_no_ring() {
        let dir = tempfile::tempdir().unwrap();
        let domain = Domain::new("fleet").unwrap();
        let mut writer = Registry::open_writer(dir.path(), &domain, true).unwrap();
        writer
            .transact(|t| {
                t.servers.extend((0..SERVERS).map(|i| {
                    let a = format!("10.{}.{}.{}:11211", i >> 16, (i >> 8) & 255, i & 255);
                    Server::new(Address::parse(&a).unwrap())
                }));
                Ok(())
            })
            .unwrap();
        let mut client = Client::for_domain(dir.path(), &domain, Timeouts::default()).unwrap();
        client.server_for(b"warm:up").unwrap();
        let mut table = writer.current_snapshot().unwrap().table();
        let work = apply(&mut writer, &mut client, &fleet(&table, 10));
        assert_cheap("the first mirror of the same list", work);
        // The first weight change marks every server once (ketama moves keys off all of
        // them; see mcshm_table::coherence): read once, with the file's ring.
        table.servers[5000].weight = 3;
        let work = apply(&mut writer, &mut client, &fleet(&table, 11));
        assert_eq!((work.rings_built, work.shared_rings), (0, 1), "{work:?}");
        let mut revision = 11;
        let mut change = |what: &str, edit: &mut dyn FnMut(&mut Server)| {
            edit(&mut table.servers[5000]);
            revision += 1;
            let work = apply(&mut writer, &mut client, &fleet(&table, revision));
            assert_cheap(what, work);
        };
        change("weight", &mut |s| s.weight = 5);
        change("retry interval", &mut |s| s.retry_interval = 7);
        change("reason", &mut |s| s.reason = "rack 4".into());
        change("down", &mut |s| s.state = State::Down);
        change("up", &mut |s| s.state = State::Up);
        change("drain", &mut |s| s.state = State::Draining);
    }
}
