//! What a fence read costs the library, for bench/fence.sh: one warm libmcshm client on a fleet
//! domain mirrored by a host directory, timing single gets (hits), single sets and 10-key
//! get_many with the domain's fencing off and on, interleaved over REPS repetitions in this one
//! process (the order alternates: off, on, then on, off, ... so a drift of the machine falls on
//! both). Between the cases it runs SWITCH off|on, which must return once this host's table
//! mirrors the change; the client picks the policy up from the shared table, as any client on
//! the host does. Each case's server-side gets per operation (memcached's cmd_get, read with
//! `stats`, which sends no fence read) show that the fence reads were on the wire, and the CPU
//! time per operation of this process and of the servers (`/proc/PID/task/*/schedstat`, the
//! servers' pids in FENCE_SERVER_PIDS) is what the fence read costs whatever the loopback's
//! wake-up latency does to the rates.
//!
//!   fence_cost DIR DOMAIN N REPS SWITCH
//!
//! Prints one line per repetition, case and operation:
//!   row OP STATE OPS_PER_S P50_US P99_US SERVER_GETS_PER_OP CLIENT_CPU_US SERVERS_CPU_US
//!       CLIENT_BLOCKS (the times this process blocked per operation, waiting for an answer:
//!       voluntary_ctxt_switches of /proc/self/task/*/status)

use std::process::Command;
use std::time::Instant;

use libmcshm::{Client, Domain, Timeouts};

const KEYS: usize = 1000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: fence_cost DIR DOMAIN N REPS SWITCH");
        std::process::exit(2);
    }
    let domain = Domain::new(&args[2]).unwrap();
    let n: usize = args[3].parse().expect("a count");
    let reps: usize = args[4].parse().expect("a count");
    let switch = &args[5];
    let server_pids: Vec<u32> = std::env::var("FENCE_SERVER_PIDS")
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect();
    let mut client = Client::for_domain(&args[1], &domain, Timeouts::default()).unwrap();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("fence:{i:06}")).collect();
    let value = [b'v'; 100];
    for key in &keys {
        client.set(key.as_bytes(), &value, 0, 0).unwrap();
    }
    // Warm: every connection open, the table mapped, the code paged in, in both states.
    for state in ["on", "off"] {
        run_switch(switch, state);
        for op in OPS {
            run(&mut client, op, &keys, n / 4);
        }
    }
    for rep in 0..reps {
        let order = if rep % 2 == 0 {
            ["off", "on"]
        } else {
            ["on", "off"]
        };
        for state in order {
            run_switch(switch, state);
            let snapshot = client.snapshot().unwrap();
            let fencing = snapshot.policy.fence.is_on() && snapshot.fleet_revision != 0;
            assert_eq!(
                fencing,
                state == "on",
                "the client's table says fence {:?} at fleet revision {}",
                snapshot.policy.fence,
                snapshot.fleet_revision
            );
            for op in OPS {
                let before = server_gets(&mut client);
                let (mine, theirs) = (cpu_ns(&["self"]), cpu_ns(&server_pids));
                let calls = blocks();
                let mut lat = run(&mut client, op, &keys, n);
                let calls = blocks() - calls;
                let mine = cpu_ns(&["self"]) - mine;
                let theirs = cpu_ns(&server_pids) - theirs;
                let gets = server_gets(&mut client) - before;
                let total: f64 = lat.iter().sum();
                lat.sort_by(f64::total_cmp);
                println!(
                    "row {} {state} {:.0} {:.1} {:.1} {:.2} {:.2} {:.2} {:.2}",
                    op.name(),
                    n as f64 / total,
                    lat[n / 2] * 1e6,
                    lat[n * 99 / 100] * 1e6,
                    gets as f64 / n as f64,
                    mine as f64 / n as f64 / 1e3,
                    theirs as f64 / n as f64 / 1e3,
                    calls as f64 / n as f64
                );
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Get,
    Set,
    GetMany,
}
const OPS: [Op; 3] = [Op::Get, Op::Set, Op::GetMany];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::GetMany => "get_many_10",
        }
    }
}

/// `n` operations of `op`, each one's time in seconds (hits only: every key was set first).
fn run(client: &mut Client, op: Op, keys: &[String], n: usize) -> Vec<f64> {
    let value = [b'w'; 100];
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        match op {
            Op::Get => {
                let item = client.get(keys[i % KEYS].as_bytes()).unwrap();
                assert!(item.is_some(), "a miss on {}", keys[i % KEYS]);
            }
            Op::Set => {
                client.set(keys[i % KEYS].as_bytes(), &value, 0, 0).unwrap();
            }
            Op::GetMany => {
                let first = (i * 10) % KEYS;
                let batch: Vec<&[u8]> = keys[first..first + 10]
                    .iter()
                    .map(|k| k.as_bytes())
                    .collect();
                let got = client.get_many(&batch, false).unwrap();
                assert!(
                    got.items.len() == 10 && got.errors.is_empty(),
                    "get_many: {} items, errors {:?}",
                    got.items.len(),
                    got.errors
                );
            }
        }
        lat.push(start.elapsed().as_secs_f64());
    }
    lat
}

/// The sum of the servers' cmd_get (keys asked for, fence reads included).
fn server_gets(client: &mut Client) -> u64 {
    client
        .stats(None, None)
        .unwrap()
        .into_iter()
        .map(|(address, stats)| {
            let stats = stats.unwrap_or_else(|e| panic!("stats of {address}: {e}"));
            stats
                .iter()
                .find(|(name, _)| name == "cmd_get")
                .map_or(0, |(_, v)| v.parse::<u64>().unwrap())
        })
        .sum()
}

/// The CPU time the processes `pids` ("self": this one) have run, every thread, in ns.
fn cpu_ns<S: std::fmt::Display>(pids: &[S]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let text = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += text
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// The times this process's threads gave up the CPU (voluntary_ctxt_switches): a blocking
/// client's waits for an answer.
fn blocks() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

fn run_switch(switch: &str, state: &str) {
    let status = Command::new(switch).arg(state).status().unwrap();
    assert!(status.success(), "{switch} {state}: {status}");
}
