//! Lag that is known (issue 34): a frozen member of etcd costs a change one endpoint's wait, a
//! host whose watch is on a frozen member notices and catches up without the member coming
//! back, and a host cut off from every member says so within `--etcd-timeout`. A 3-member etcd
//! on loopback; SIGSTOP freezes a member as a partition that drops packets would (the kernel
//! accepts connections that are never answered).

use std::time::{Duration, Instant};

use crate::common::etcd::{EtcdCluster, Host, fleet_cmd};
use crate::common::{Run, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// The cluster's endpoints with member `first` first: a client (and an agent's watch) starts
/// with the first endpoint.
fn endpoints_from(cluster: &EtcdCluster, first: usize) -> String {
    let mut all: Vec<String> = cluster.endpoints().split(',').map(String::from).collect();
    let chosen = all.remove(first);
    all.insert(0, chosen);
    all.join(",")
}

fn add(endpoints: &str, domain: &str, address: &str) -> (Run, Duration) {
    let started = Instant::now();
    let run = Run(
        fleet_cmd(endpoints, domain, &["--json", "add", "--no-flush", address])
            .args(["--etcd-timeout", "5"])
            .output()
            .unwrap(),
    );
    (run, started.elapsed())
}

fn fleet_revision(cluster: &EtcdCluster, domain: &str) -> i64 {
    let run = Run(fleet_cmd(&cluster.endpoints(), domain, &["--json", "list"])
        .output()
        .unwrap());
    assert_eq!(run.code(), 0, "{}", run.stderr());
    serde_json::from_str::<serde_json::Value>(&run.stdout()).unwrap()["revision"]
        .as_i64()
        .unwrap()
}

/// A frozen member first in a host's list: its watch is there, silent as an idle watch is;
/// a change made through the others while it is frozen reaches the host anyway.
fn frozen_member_case(leader: bool) {
    let cluster = EtcdCluster::start(3);
    let domain = if leader { "fl" } else { "ff" };
    let (run, _) = add(&cluster.endpoints(), domain, "10.7.0.1");
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let current = cluster.leader().expect("a leader");
    let frozen = if leader { current } else { (current + 1) % 3 };
    let frozen_first = endpoints_from(&cluster, frozen);
    let host = Host::start("lag", &frozen_first);
    let revision = fleet_revision(&cluster, domain);
    assert!(wait_until(WAIT, || host.revision(domain) == revision));

    cluster.signal(frozen, libc::SIGSTOP);
    // Through the frozen member first, as an operator's mcadmin with that list would go: one
    // endpoint's share of --etcd-timeout there, then the others (which elect a leader).
    let (run, took) = add(&frozen_first, domain, "10.7.0.2");
    assert_eq!(
        run.code(),
        0,
        "a change with member {frozen} frozen (leader: {leader}) failed after {took:?}: {}",
        run.stderr()
    );
    eprintln!("frozen member {frozen} (leader: {leader}) first: the change took {took:?}");
    let revision = fleet_revision(&cluster, domain);
    let started = Instant::now();
    assert!(
        wait_until(WAIT, || host.revision(domain) >= revision),
        "the host's table stayed behind the fleet with its member frozen: {}",
        host.log_text()
    );
    eprintln!(
        "the host caught up {:?} after the change",
        started.elapsed()
    );
    let local = host.local(domain).unwrap();
    assert_eq!(crate::common::addresses(&local).len(), 2);
    if !leader {
        // A follower keeps its connections: only the check against the leader finds it out.
        assert!(host.log_text().contains("rewatched"), "{}", host.log_text());
    }
    cluster.signal(frozen, libc::SIGCONT);
}

#[test]
fn a_frozen_leader_costs_a_change_one_endpoint_wait_and_its_watchers_catch_up() {
    frozen_member_case(true);
}

#[test]
fn a_host_watching_a_frozen_follower_notices_and_catches_up_without_it() {
    frozen_member_case(false);
}

#[test]
fn a_host_cut_off_from_every_member_says_so_within_its_etcd_timeout() {
    let cluster = EtcdCluster::start(3);
    let (run, _) = add(&cluster.endpoints(), "cut", "10.7.1.1");
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let mut host = Host::start("cut", &cluster.endpoints());
    host.kill_agent();
    host.start_agent_with(&["--etcd-timeout", "3"]);
    let revision = fleet_revision(&cluster, "cut");
    assert!(wait_until(WAIT, || host.revision("cut") == revision));
    assert!(wait_until(
        WAIT,
        || host.local("cut").unwrap()["fleet"]["connected"] == true
    ));

    for member in 0..3 {
        cluster.signal(member, libc::SIGSTOP);
    }
    let cut = Instant::now();
    // The promise is --etcd-timeout (3 s); the margin is for `mcadmin list`'s own start and
    // a loaded machine (the time taken is printed).
    let shown = wait_until(Duration::from_millis(4_500), || {
        host.local("cut").unwrap()["fleet"]["connected"] == false
    });
    let took = cut.elapsed();
    eprintln!("cut off shown {took:?} after the cut (--etcd-timeout 3)");
    assert!(
        shown,
        "not shown cut off within 3 s (+1.5 s): {}",
        host.log_text()
    );
    let text = host.reg.ok("cut", &["list"]);
    assert!(text.contains("CUT OFF from etcd"), "{text}");
    for member in 0..3 {
        cluster.signal(member, libc::SIGCONT);
    }
    assert!(wait_until(
        WAIT,
        || host.local("cut").unwrap()["fleet"]["connected"] == true
    ));
}
