//! Network namespaces the tests create and remove: "another host" whose link the test can cut.
//!
//! A namespace gets one veth pair to the root namespace, on a /30 of 10.231.0.0/16 that exists
//! only while the test runs (root side `.1`, namespace side `.2`). Processes started in it
//! (`ip netns exec`) reach the root namespace only through that pair: etcd members that also
//! listen on the root side's address are reachable until the test takes the link down, which
//! drops every packet as a cut cable or a partition would (connections hang, nothing is
//! refused). Needs root and `ip`; [`NetNs::create`] says why not and the test skips.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct NetNs {
    pub name: String,
    /// The root namespace's end of the pair (what `cut` takes down).
    root_link: String,
    /// The root side's address: what processes in the namespace connect to.
    pub root_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

impl NetNs {
    /// A new namespace linked to the root one, or why it cannot be made here (not root, no
    /// `ip`, no namespaces in this container).
    pub fn create() -> Result<NetNs, String> {
        if !super::is_root() {
            return Err("network namespaces need root".into());
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // A /30 per namespace: distinct across this process's namespaces and, through the pid,
        // across test processes that run at once.
        let slot = (std::process::id() * 8 + n) % 16_000;
        let (third, fourth) = (slot / 64, (slot % 64) * 4);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let ns = NetNs {
            name: format!("mcshm-{tag}"),
            root_link: format!("mr{tag}"),
            root_ip: format!("10.231.{third}.{}", fourth + 1),
        };
        let inner_link = format!("mn{tag}");
        let inner_ip = format!("10.231.{third}.{}", fourth + 2);
        ip(&["netns", "add", &ns.name])?;
        let setup = || -> Result<(), String> {
            ip(&[
                "link",
                "add",
                &ns.root_link,
                "type",
                "veth",
                "peer",
                "name",
                &inner_link,
            ])?;
            ip(&["link", "set", &inner_link, "netns", &ns.name])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/30", ns.root_ip),
                "dev",
                &ns.root_link,
            ])?;
            ip(&["link", "set", &ns.root_link, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &ns.name, "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&["addr", "add", &format!("{inner_ip}/30"), "dev", &inner_link])?;
            inside(&["link", "set", &inner_link, "up"])?;
            inside(&["link", "set", "lo", "up"])
        };
        setup()?; // on failure, Drop removes what was made
        Ok(ns)
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Cuts the link: every packet between the namespace and the root one is dropped.
    pub fn cut(&self) {
        ip(&["link", "set", &self.root_link, "down"]).unwrap();
    }

    /// Heals it.
    pub fn heal(&self) {
        ip(&["link", "set", &self.root_link, "up"]).unwrap();
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it the other end.
        let _ = ip(&["link", "del", &self.root_link]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
