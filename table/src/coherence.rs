//! No stale read: the rules that keep a read from returning a value a later write superseded,
//! whatever sequence of changes the table goes through.
//!
//! The invariant, for every reader and writer that goes through mcshm (the library, mclient,
//! the C API, mcproxy and its clients): a read returns the last acknowledged write of its key,
//! or a miss (a write that failed may or may not have landed; a write concurrent with the read
//! may or may not be seen).
//!
//! A stale value can only come from a copy of a key on a server that does not own it now and
//! owned it once: a *stray*. `add` moves keys to the new server and their old owners keep their
//! copies; a write then goes to the new owner; when the owner changes back (the new server is
//! deleted, goes down under `rehash`, loses weight) the old copy would be served. So:
//!
//! 1. **Marking** ([`mark_strays`], run by the writer on every commit, whichever path made it:
//!    mcadmin's verbs, `load`, the fleet mirror, a client's mark-down or retry probe, `watch`):
//!    a server that may have lost keys to others in the new version gets `strays_since` set
//!    to that version.
//! 2. **Invalidation** (the router's write plan): a write or delete of a key also deletes it
//!    from every marked server that is not one of the key's replicas, before it is
//!    acknowledged. A stray is therefore either the key's last write (still correct) or gone.
//! 3. **Clearing**: a server whose keys were all flushed (a rejoin's flush, a server added
//!    flushed) starts unmarked, and `mcadmin settle` sweeps a marked server (deletes every key
//!    it does not own) and clears its mark, so writes stop paying for the invalidation.
//! 4. **Servers that come back** are flushed before they serve (the rejoin policy); a server
//!    added with items is flushed unless the operator says it is empty (`add --no-flush`).
//!
//! What it does not cover: a writer that bypasses mcshm (its writes are invisible to these
//! rules), a memcached server shared with other domains or applications (their flushes and
//! writes are theirs), the rejoin policy `trust` and `up --no-flush` (the operator accepts what
//! the server holds), and a change of the key prefix back to an earlier one (keys written under
//! it before are read again: flush the servers when reusing a prefix).

use std::collections::HashMap;

use crate::address::{Address, Identity};
use std::sync::Arc;

use crate::placement::{BucketLocator, BucketMap, Distribution};
use crate::table::{Policy, Server, State, Table, routed};

/// Marks the servers of `new` (about to be published as `version`) that may have lost keys to
/// other servers since `old`: they may now hold copies of keys they do not own. A server new
/// to the table, or coming back up from down (flushed by its rejoin, or trusted by the
/// operator), is not marked by this change; a mark set earlier stays until it is cleared, as it
/// was set: a server already marked is stamped anew only while a sweep of it is under way
/// ([`Server::sweeping`], which must learn that the server lost keys after the sweep began).
/// So a change that moves keys off servers already marked leaves their entries as they were,
/// and costs each reader what it changes, not every entry (ketama moves keys off every server
/// when one weight changes: at 10 000 servers, re-stamping every mark made every reader copy
/// and decode the whole table on its next operation).
pub fn mark_strays(
    old: &[Server],
    old_policy: &Policy,
    old_buckets: Option<&Arc<BucketMap>>,
    new: &mut Table,
    version: u64,
) {
    let before = Placing {
        servers: old,
        policy: old_policy,
        buckets: old_buckets,
    };
    let losing = losers(before, Placing::of(new));
    if !losing.contains(&true) {
        return; // most commits: a reason, a retry interval, a server up or down under `none`
    }
    let before: HashMap<Identity<'_>, &Server> =
        old.iter().map(|s| (s.address.identity(), s)).collect();
    for (server, loses) in new.servers.iter_mut().zip(losing) {
        let Some(was) = before.get(&server.address.identity()) else {
            continue; // new to the table: it held nothing of this domain's (flushed when added)
        };
        let rejoined = was.state == State::Down && server.state == State::Up;
        if loses && !rejoined && (server.strays_since == 0 || server.sweeping) {
            server.strays_since = version;
        }
    }
}

/// The servers a fleet commit from `old` to `new` fences before it is published (see
/// [`crate::fence`]): every server that a host still routing on `old` could read a superseded
/// copy from, or write where hosts on `new` do not read, and every server whose fence the change
/// itself emptied.
/// - servers of `new` that may lose keys ([`mark_strays`]'s rule: ketama points shrunk or grown
///   elsewhere, any change under modula or PECL's continuum, a new distribution, fewer
///   replicas);
/// - servers routed under `old` that `new` removes, no longer routes (a drain, a mark-down under
///   `rehash`) or marks down (under `none` a down server keeps its keys, and hosts on `new`
///   neither read nor write them: a lagging host's write there would be acknowledged unseen);
/// - every server routed under `old` when the prefix changes (keys get new names) or replicas
///   grow (a lagging host writes fewer copies than hosts on `new` read);
/// - servers new to the table or back up from down: their add or rejoin flush emptied their
///   fence, which hosts on `new` would otherwise find missing.
///
/// Empty when no key moves and no server was flushed or taken out of service: a reason, a
/// retry interval, a drain's progress.
pub fn fence_targets(old: &Table, new: &Table) -> Vec<Address> {
    let routed_in = |table: &Table| -> Vec<usize> { routed(&table.servers, table.policy.failover) };
    let old_routed = routed_in(old);
    let new_routed = routed_in(new);
    let old_by_id: HashMap<Identity<'_>, &Server> = old
        .servers
        .iter()
        .map(|s| (s.address.identity(), s))
        .collect();
    let mut targets: Vec<Address> = Vec::new();
    let add = |targets: &mut Vec<Address>, address: &Address| {
        if !targets.iter().any(|t| t.same_server(address)) {
            targets.push(address.clone());
        }
    };
    let renamed =
        old.policy.prefix != new.policy.prefix || new.policy.replicas > old.policy.replicas;
    if renamed {
        for &i in &old_routed {
            add(&mut targets, &old.servers[i].address);
        }
    } else {
        let losing = losers(Placing::of(old), Placing::of(new));
        let was_routed = |address: &Address| {
            old_routed
                .iter()
                .any(|&i| old.servers[i].address.same_server(address))
        };
        let down_throughout = |server: &Server| {
            server.state == State::Down
                && old_by_id
                    .get(&server.address.identity())
                    .is_some_and(|was| was.state == State::Down)
        };
        for (server, loses) in new.servers.iter().zip(losing) {
            // A server no host on `old` routes to held none of the keys that move; one down in
            // both tables gets nothing from hosts on either (one older was fenced when it
            // went down, or could not be reached then either).
            if loses && was_routed(&server.address) && !down_throughout(server) {
                add(&mut targets, &server.address);
            }
        }
        for &i in &old_routed {
            let address = &old.servers[i].address;
            let now = new_routed
                .iter()
                .map(|&j| &new.servers[j])
                .find(|s| s.address.same_server(address));
            if now.is_none_or(|s| s.state == State::Down && old.servers[i].state != State::Down) {
                add(&mut targets, address);
            }
        }
    }
    for &j in &new_routed {
        let server = &new.servers[j];
        let flushed = old_by_id
            .get(&server.address.identity())
            .is_none_or(|was| was.state == State::Down && server.state == State::Up);
        if flushed {
            add(&mut targets, &server.address);
        }
    }
    targets
}

/// What decides where keys go in one version: its servers, policy and bucket map.
#[derive(Clone, Copy)]
struct Placing<'a> {
    servers: &'a [Server],
    policy: &'a Policy,
    buckets: Option<&'a Arc<BucketMap>>,
}

impl<'a> Placing<'a> {
    fn of(table: &'a Table) -> Placing<'a> {
        Placing {
            servers: &table.servers,
            policy: &table.policy,
            buckets: table.buckets.as_ref(),
        }
    }

    /// The bucket locator of a `vbucket` version.
    fn buckets(&self) -> Option<BucketLocator> {
        let Distribution::VBucket(hash) = self.policy.distribution else {
            return None;
        };
        let routed = routed(self.servers, self.policy.failover);
        let members = crate::table::members(self.servers, &routed);
        Some(BucketLocator::new(
            hash,
            self.buckets?.clone(),
            self.servers.len(),
            &members,
        ))
    }
}

/// For each server of `new`: whether some key it owned (or replicated) under `old` may be owned
/// by other servers only under `new`.
fn losers(before: Placing<'_>, after: Placing<'_>) -> Vec<bool> {
    let (old, old_policy) = (before.servers, before.policy);
    let (new, new_policy) = (after.servers, after.policy);
    let everyone = vec![true; new.len()];
    if old_policy.distribution != new_policy.distribution
        || new_policy.replicas < old_policy.replicas
    {
        return everyone;
    }
    if let (Some(was), Some(now)) = (before.buckets(), after.buckets()) {
        return bucket_losers(
            &was,
            old,
            &now,
            new,
            usize::from(new_policy.replicas.max(1)),
        );
    }
    let old_members = members(old, old_policy);
    let new_members = members(new, new_policy);
    if old_members == new_members {
        return vec![false; new.len()];
    }
    // Modula and PECL's continuum move keys between the remaining servers on any change.
    let Some(points) = new_policy.distribution.points() else {
        return everyone;
    };
    // Ketama: a server loses keys when its own points shrink or another server's grow (points
    // of one label are the same in every version; the counts depend on the weights).
    let (before, after) = (
        point_counts(points, &old_members),
        point_counts(points, &new_members),
    );
    let grew: Vec<Identity<'_>> = after
        .iter()
        .filter(|(id, n)| **n > before.get(*id).copied().unwrap_or(0))
        .map(|(id, _)| *id)
        .collect();
    new.iter()
        .map(|server| {
            let id = server.address.identity();
            let shrank =
                after.get(&id).copied().unwrap_or(0) < before.get(&id).copied().unwrap_or(0);
            shrank || grew.iter().any(|g| *g != id)
        })
        .collect()
}

/// Bucket maps: a server loses keys when some bucket's first `replicas` routed servers under
/// `old` include it and those under `new` do not (a moved bucket, a changed row, a server no
/// longer routed whose bucket went to another). The same map and members: nobody. A change of
/// the bucket count: everyone (every key has a new bucket).
fn bucket_losers(
    was: &BucketLocator,
    old: &[Server],
    now: &BucketLocator,
    new: &[Server],
    replicas: usize,
) -> Vec<bool> {
    if was.map().buckets() != now.map().buckets() || (old.len() == 1) != (new.len() == 1) {
        return vec![true; new.len()];
    }
    // Most commits (a reason, a state under `none`): the same map over the same routed servers
    // at the same positions moves no key.
    let same_servers = old.len() == new.len()
        && old
            .iter()
            .zip(new)
            .all(|(a, b)| a.address.same_server(&b.address));
    if same_servers && was.map() == now.map() && was.routes_as(now) {
        return vec![false; new.len()];
    }
    let position: HashMap<Identity<'_>, usize> = new
        .iter()
        .enumerate()
        .map(|(i, s)| (s.address.identity(), i))
        .collect();
    let mut losing = vec![false; new.len()];
    for b in 0..now.map().buckets() {
        let before = was.bucket_along(b, replicas);
        let after = now.bucket_along(b, replicas);
        for i in before {
            let Some(&j) = position.get(&old[i].address.identity()) else {
                continue; // removed: it holds nothing any version routes to
            };
            if !after.contains(&j) {
                losing[j] = true;
            }
        }
    }
    losing
}

/// The ring points of each member.
fn point_counts<'a>(
    points: crate::placement::Points,
    members: &[(Identity<'a>, u16)],
) -> HashMap<Identity<'a>, u32> {
    let weights = members.iter().map(|m| m.1);
    members
        .iter()
        .map(|m| m.0)
        .zip(points.counts(weights))
        .collect()
}

/// The servers a table routes keys to, in list order, with their weights.
fn members<'a>(servers: &'a [Server], policy: &Policy) -> Vec<(Identity<'a>, u16)> {
    crate::table::routed(servers, policy.failover)
        .into_iter()
        .map(|i| (servers[i].address.identity(), servers[i].weight))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Address;
    use crate::placement::Distribution;
    use crate::table::Failover;

    fn server(name: &str, weight: u16, state: State) -> Server {
        Server {
            weight,
            state,
            ..Server::new(Address::parse(name).unwrap())
        }
    }

    fn table(servers: &[Server], policy: Policy) -> Table {
        Table {
            servers: servers.to_vec(),
            policy,
            fleet_revision: 0,
            buckets: None,
        }
    }

    /// The `strays_since` of each server after `old` → `new` published as version 7.
    fn marks(old: &[Server], old_policy: Policy, new: &[Server], new_policy: Policy) -> Vec<u64> {
        let mut t = table(new, new_policy);
        mark_strays(old, &old_policy, None, &mut t, 7);
        t.servers.iter().map(|s| s.strays_since).collect()
    }

    fn up(name: &str) -> Server {
        server(name, 1, State::Up)
    }

    #[test]
    fn an_added_server_marks_the_others_and_not_itself() {
        let p = Policy::default();
        let old = [up("a:1"), up("b:1")];
        let new = [up("a:1"), up("b:1"), up("c:1")];
        assert_eq!(marks(&old, p, &new, p), [7, 7, 0]);
    }

    #[test]
    fn removing_a_server_of_equal_weight_moves_no_key_between_the_others() {
        let p = Policy::default();
        let old = [up("a:1"), up("b:1"), up("c:1")];
        assert_eq!(marks(&old, p, &old[..2], p), [0, 0]);
        // Under failover none a down server stays on the ring: nothing moves.
        let mut down = old.clone();
        down[2].state = State::Down;
        assert_eq!(marks(&old, p, &down, p), [0, 0, 0]);
    }

    #[test]
    fn rehash_marks_the_others_when_a_down_server_rejoins_but_not_when_it_fails() {
        let p = Policy {
            failover: Failover::Rehash,
            ..Policy::default()
        };
        let all_up = [up("a:1"), up("b:1"), up("c:1")];
        let mut c_down = all_up.clone();
        c_down[2].state = State::Down;
        assert_eq!(
            marks(&all_up, p, &c_down, p),
            [0, 0, 7],
            "c fails: a and b only gain (c's copies go with its flush when it rejoins)"
        );
        assert_eq!(
            marks(&c_down, p, &all_up, p),
            [7, 7, 0],
            "c rejoins (flushed): a and b may hold its keys"
        );
    }

    #[test]
    fn weights_mark_whoever_may_lose() {
        let p = Policy::default();
        let old = [up("a:1"), up("b:1"), up("c:1")];
        let mut heavier_c = old.clone();
        heavier_c[2].weight = 3;
        assert_eq!(marks(&old, p, &heavier_c, p), [7, 7, 0]);
        // Removing a light server of an unequal list shrinks another's points.
        let weighted = [
            server("a:1", 1, State::Up),
            server("b:1", 2, State::Up),
            server("c:1", 3, State::Up),
        ];
        assert_eq!(marks(&weighted, p, &weighted[1..], p), [7, 7]);
    }

    #[test]
    fn modula_distribution_and_fewer_replicas_mark_everyone() {
        let modula = Policy {
            distribution: Distribution::Modula(crate::hash::KeyHash::OneAtATime),
            ..Policy::default()
        };
        let old = [up("a:1"), up("b:1"), up("c:1")];
        assert_eq!(marks(&old, modula, &old[..2], modula), [7, 7]);
        let p = Policy::default();
        assert_eq!(marks(&old, p, &old, modula), [7, 7, 7]);
        let two = Policy {
            replicas: 2,
            ..Policy::default()
        };
        assert_eq!(marks(&old, two, &old, p), [7, 7, 7]);
        assert_eq!(
            marks(&old, p, &old, two),
            [0, 0, 0],
            "more replicas: nobody loses"
        );
    }

    #[test]
    fn a_bucket_move_marks_the_server_it_leaves_and_its_completion_nobody() {
        use crate::placement::{BucketMap, Shape};
        let p = Policy {
            distribution: Distribution::VBucket(crate::hash::KeyHash::Crc),
            ..Policy::default()
        };
        let servers = [up("a:1"), up("b:1"), up("c:1")];
        let map = Arc::new(BucketMap::balanced(Shape::new(16, 0).unwrap(), &[0, 1, 2]));
        let mut staged = (*map).clone();
        staged.stage(0, 2); // bucket 0: a → c
        let staged = Arc::new(staged);
        let mark = |old: &Arc<BucketMap>, new: &Arc<BucketMap>, new_servers: &[Server]| {
            let mut t = Table {
                buckets: Some(new.clone()),
                ..table(new_servers, p)
            };
            mark_strays(&servers, &p, Some(old), &mut t, 7);
            t.servers.iter().map(|s| s.strays_since).collect::<Vec<_>>()
        };
        assert_eq!(mark(&map, &map, &servers), [0, 0, 0], "the same map");
        assert_eq!(
            mark(&map, &staged, &servers),
            [7, 0, 0],
            "a moves bucket 0 off"
        );
        let mut done = (*staged).clone();
        done.complete();
        assert_eq!(mark(&staged, &Arc::new(done), &servers), [0, 0, 0]);
        // An added server that owns nothing yet moves no key.
        let four = [up("a:1"), up("b:1"), up("c:1"), up("d:1")];
        assert_eq!(mark(&map, &map, &four), [0, 0, 0, 0]);
    }

    #[test]
    fn a_mark_stays_until_cleared() {
        let p = Policy::default();
        let mut old = [up("a:1"), up("b:1")];
        old[0].strays_since = 3;
        assert_eq!(marks(&old, p, &old, p), [3, 0]);
    }

    /// A server already marked that loses keys again keeps its mark as it was (its entry, and
    /// what every reader copies, unchanged), unless a sweep of it is under way: the sweep must
    /// learn that it lost keys after it began.
    #[test]
    fn a_marked_server_is_stamped_anew_only_while_swept() {
        let p = Policy::default();
        let mut old = [up("a:1"), up("b:1"), up("c:1")];
        old[0].strays_since = 3;
        old[1].strays_since = 3;
        old[1].sweeping = true;
        let mut heavier_c = old.clone();
        heavier_c[2].weight = 3;
        assert_eq!(marks(&old, p, &heavier_c, p), [3, 7, 0]);
    }

    /// The addresses `fence_targets` names for `old` → `new`, as text.
    fn fenced(
        old: &[Server],
        old_policy: Policy,
        new: &[Server],
        new_policy: Policy,
    ) -> Vec<String> {
        fence_targets(&table(old, old_policy), &table(new, new_policy))
            .iter()
            .map(|a| a.to_string())
            .collect()
    }

    #[test]
    fn an_add_fences_every_server_that_loses_keys_and_the_new_one_whose_fence_is_empty() {
        let p = Policy::default();
        let old = [up("a:1"), up("b:1")];
        let new = [up("a:1"), up("b:1"), up("c:1")];
        assert_eq!(fenced(&old, p, &new, p), ["a:1", "b:1", "c:1"]);
    }

    #[test]
    fn a_delete_or_a_mark_down_fences_the_server_taken_out() {
        let p = Policy::default();
        let old = [up("a:1"), up("b:1"), up("c:1")];
        assert_eq!(fenced(&old, p, &old[..2], p), ["c:1"]);
        let mut c_down = old.clone();
        c_down[2].state = State::Down;
        assert_eq!(fenced(&old, p, &c_down, p), ["c:1"], "under none");
        let rehash = Policy {
            failover: Failover::Rehash,
            ..Policy::default()
        };
        assert_eq!(fenced(&old, rehash, &c_down, rehash), ["c:1"]);
        let mut heavier_a = c_down.clone();
        heavier_a[0].weight = 3;
        assert_eq!(
            fenced(&c_down, p, &heavier_a, p),
            ["b:1"],
            "c down throughout"
        );
        let mut c_draining = old.clone();
        c_draining[2].state = State::Draining;
        assert_eq!(fenced(&old, p, &c_draining, p), ["c:1"]);
    }

    #[test]
    fn a_rejoin_fences_the_flushed_server_and_under_rehash_those_that_lose_its_keys() {
        let p = Policy::default();
        let mut c_down = [up("a:1"), up("b:1"), up("c:1")];
        c_down[2].state = State::Down;
        let all_up = [up("a:1"), up("b:1"), up("c:1")];
        assert_eq!(fenced(&c_down, p, &all_up, p), ["c:1"]);
        let rehash = Policy {
            failover: Failover::Rehash,
            ..Policy::default()
        };
        assert_eq!(
            fenced(&c_down, rehash, &all_up, rehash),
            ["a:1", "b:1", "c:1"]
        );
    }

    #[test]
    fn a_weight_fences_the_losers_and_a_reason_nothing() {
        let p = Policy::default();
        let old = [up("a:1"), up("b:1"), up("c:1")];
        let mut heavier_c = old.clone();
        heavier_c[2].weight = 3;
        assert_eq!(fenced(&old, p, &heavier_c, p), ["a:1", "b:1"]);
        let mut reason = old.clone();
        reason[1].reason = "maintenance on friday".into();
        reason[1].retry_interval = 5;
        assert!(fenced(&old, p, &reason, p).is_empty());
    }

    #[test]
    fn a_new_prefix_or_more_replicas_fence_every_routed_server() {
        let mut old = [up("a:1"), up("b:1"), up("c:1")];
        old[1].state = State::Down;
        let rehash = Policy {
            failover: Failover::Rehash,
            ..Policy::default()
        };
        let prefixed = Policy {
            prefix: crate::prefix::KeyPrefix::parse("v2:").unwrap(),
            ..rehash
        };
        assert_eq!(fenced(&old, rehash, &old, prefixed), ["a:1", "c:1"]);
        let two = Policy {
            replicas: 2,
            ..rehash
        };
        assert_eq!(fenced(&old, rehash, &old, two), ["a:1", "c:1"]);
        assert_eq!(
            fenced(&old, two, &old, rehash),
            ["a:1", "c:1"],
            "fewer replicas"
        );
    }
}
