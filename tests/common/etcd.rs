//! A real etcd cluster on loopback ephemeral ports (own data directories), members killed and
//! reaped on drop; and "hosts": a registry directory each, with its own `mcadmin sync` agent.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mcshm_fleet::{Etcd, EtcdConfig};

use super::{MCADMIN, Reg, wait_until};

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
}

pub struct EtcdCluster {
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
    /// An address each member also serves clients on (a network namespace's link, see
    /// [`EtcdCluster::start_also_on`]).
    also: Option<String>,
}

/// A loopback port the kernel had free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, None)
    }

    /// Starts `n` members that also serve clients on `ip` (the root side of a
    /// [`super::netns::NetNs`] link), on the same ports: [`EtcdCluster::endpoints_on`].
    pub fn start_also_on(n: usize, ip: &str) -> EtcdCluster {
        EtcdCluster::start_with(n, Some(ip.to_string()))
    }

    fn start_with(n: usize, also: Option<String>) -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster { members, dir, also };
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        cluster.wait_ready();
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let initial = self.initial_cluster();
        let data = self.dir.path().join(&self.members[i].name);
        let m = &mut self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let listen = match &self.also {
            Some(ip) => format!("{client},http://{ip}:{}", m.client_port),
            None => client.clone(),
        };
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &listen,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                state,
            ])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            // Large enough that an oversized table reaches mcshm's own check.
            .args(["--max-request-bytes", "10485760"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}): install it with apt-get install -y etcd-server")
            });
        m.child = Some(child);
    }

    /// `http://…,http://…` of every member.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The endpoints on `ip` (see [`EtcdCluster::start_also_on`]).
    pub fn endpoints_on(&self, ip: &str) -> String {
        self.endpoints().replace("127.0.0.1", ip)
    }

    /// A client of the whole cluster (patient: each endpoint gets a third of 15 s, so a
    /// test's own multi-megabyte put on a loaded machine is not cut short; the tests of the
    /// per-endpoint share run mcadmin with its own timeout).
    pub fn client(&self) -> Etcd {
        Etcd::new(EtcdConfig {
            endpoints: EtcdConfig::parse_endpoints(&self.endpoints()).unwrap(),
            timeout: Duration::from_secs(15),
            ..EtcdConfig::default()
        })
        .unwrap()
    }

    /// Waits until a write succeeds (a leader exists and the running members answer).
    pub fn wait_ready(&self) {
        let etcd = self.client();
        assert!(
            wait_until(Duration::from_secs(30), || etcd
                .put("/ready", b"1", None)
                .is_ok()),
            "etcd cluster did not become ready"
        );
    }

    /// The index of the current leader (asked of each running member).
    pub fn leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let url = format!("http://127.0.0.1:{}/v3/maintenance/status", m.client_port);
            let Ok(resp) = ureq_post(&url, "{}") else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&resp).unwrap_or_default();
            let leader = v["leader"].as_str().unwrap_or("").to_string();
            let me = v["header"]["member_id"].as_str().unwrap_or("").to_string();
            if !leader.is_empty() && leader == me {
                return self
                    .members
                    .iter()
                    .position(|x| x.client_port == m.client_port);
            }
        }
        None
    }

    /// Member `i`'s id, as etcd names it (a decimal string).
    pub fn member_id(&self, i: usize) -> String {
        let url = format!(
            "http://127.0.0.1:{}/v3/maintenance/status",
            self.members[i].client_port
        );
        let answer = ureq_post(&url, "{}").expect("member status");
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        v["header"]["member_id"].as_str().unwrap_or("").to_string()
    }

    /// Makes member `to` the leader (asked of the current one) and waits until it is.
    pub fn make_leader(&self, to: usize) {
        for _ in 0..5 {
            if self.leader() == Some(to) {
                return;
            }
            if let Some(now) = self.leader() {
                let url = format!(
                    "http://127.0.0.1:{}/v3/maintenance/transfer-leadership",
                    self.members[now].client_port
                );
                let body = format!(r#"{{"targetID":"{}"}}"#, self.member_id(to));
                let _ = ureq_post(&url, &body);
            }
            wait_until(Duration::from_secs(5), || self.leader() == Some(to));
        }
        assert_eq!(
            self.leader(),
            Some(to),
            "member {to} did not become the leader"
        );
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to member `i` (SIGSTOP hangs it as a partition that drops packets would:
    /// connections are accepted by the kernel and never answered; SIGCONT resumes it).
    pub fn signal(&self, i: usize, signal: i32) {
        let child = self.members[i].child.as_ref().expect("member running");
        super::signal(child.id(), signal);
    }

    /// Restarts a killed member on its ports and data.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, "existing");
    }

    /// Compacts the key-value history up to `revision` (older revisions become unreadable).
    pub fn compact(&self, revision: i64) {
        let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let url = format!("http://127.0.0.1:{}/v3/kv/compaction", m.client_port);
            if ureq_post(&url, &body).is_ok() {
                return;
            }
        }
        panic!("no member compacted");
    }
}

/// A plain POST through a raw TCP connection (the test's own view of the gateway).
fn ureq_post(url: &str, body: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or("http only")?;
    let (host, path) = rest.split_once('/').ok_or("no path")?;
    let mut s = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(
        s,
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let (head, body) = out.split_once("\r\n\r\n").ok_or("no body")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.to_string());
    }
    // Chunked or not, the JSON object is between the first '{' and the last '}'.
    let start = body.find('{').ok_or("no JSON")?;
    let end = body.rfind('}').ok_or("no JSON")?;
    Ok(body[start..=end].to_string())
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// One simulated host: its own registry directory and `mcadmin sync` agent.
pub struct Host {
    pub name: String,
    pub reg: Reg,
    endpoints: String,
    /// The network namespace the agent runs in (`None`: this one).
    netns: Option<String>,
    agent: Option<Child>,
    pub log: PathBuf,
}

impl Host {
    /// A host named `name` whose agent mirrors every domain of the fleet at `endpoints`.
    pub fn start(name: &str, endpoints: &str) -> Host {
        Host::start_with(name, endpoints, &[])
    }

    /// A host whose agent runs `sync` with extra arguments.
    pub fn start_with(name: &str, endpoints: &str, sync: &[&str]) -> Host {
        let mut host = Host::new(name, endpoints, None);
        host.start_agent_args(&[], sync);
        host
    }

    /// A host whose agent runs inside network namespace `netns` (its registry directory is
    /// the same file system's) with extra global arguments.
    pub fn start_in(netns: &str, name: &str, endpoints: &str, extra: &[&str]) -> Host {
        let mut host = Host::new(name, endpoints, Some(netns.to_string()));
        host.start_agent_args(extra, &[]);
        host
    }

    fn new(name: &str, endpoints: &str, netns: Option<String>) -> Host {
        let reg = Reg::new();
        let log = reg.dir().join(format!("{name}.sync.log"));
        Host {
            name: name.to_string(),
            reg,
            endpoints: endpoints.to_string(),
            netns,
            agent: None,
            log,
        }
    }

    pub fn start_agent(&mut self) {
        self.start_agent_with(&[]);
    }

    /// Starts the agent with extra global arguments (e.g. `--etcd-timeout 2`).
    pub fn start_agent_with(&mut self, extra: &[&str]) {
        self.start_agent_args(extra, &[]);
    }

    /// Starts the agent with extra global arguments and extra arguments of `sync`.
    pub fn start_agent_args(&mut self, extra: &[&str], sync: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = match &self.netns {
            // `ip netns exec` execs the program: the child's pid is the agent's.
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns, MCADMIN]);
                c
            }
            None => Command::new(MCADMIN),
        };
        let child = command
            .arg("--dir")
            .arg(self.reg.dir())
            .args(["--etcd", &self.endpoints])
            .args(extra)
            .args(["--json", "sync", "--all"])
            .args(["--name", &self.name, "--lease-ttl", "3"])
            .args(sync)
            .env_remove("MCSHM_ETCD")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    /// The agent's process id.
    pub fn agent_pid(&self) -> u32 {
        self.agent.as_ref().expect("agent running").id()
    }

    /// Sends `signal` to the agent (SIGSTOP: an agent that hangs).
    pub fn signal_agent(&self, signal: i32) {
        super::signal(self.agent_pid(), signal);
    }

    /// SIGKILLs the agent (no clean stop).
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs the agent and waits for its clean exit status.
    pub fn stop_agent(&mut self) -> std::process::ExitStatus {
        let mut child = self.agent.take().expect("agent running");
        super::signal(child.id(), libc::SIGTERM);
        child.wait().unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `mcadmin list --json` of the local table (`None` while it does not exist).
    pub fn local(&self, domain: &str) -> Option<serde_json::Value> {
        let run = self.reg.run(domain, &["--json", "list"]);
        (run.code() == 0).then(|| serde_json::from_str(&run.stdout()).unwrap())
    }

    /// The fleet revision the local table mirrors (0 when there is none).
    pub fn revision(&self, domain: &str) -> i64 {
        self.local(domain)
            .map_or(0, |v| v["fleet"]["revision"].as_i64().unwrap())
    }

    /// The state of `server` in the local table.
    pub fn state(&self, domain: &str, server: &str) -> Option<String> {
        let list = self.local(domain)?;
        list["servers"]
            .as_array()?
            .iter()
            .find(|s| s["address"] == server)
            .map(|s| s["state"].as_str().unwrap().to_string())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// `mcadmin --etcd ENDPOINTS --domain DOMAIN ARGS…`.
pub fn fleet_cmd(endpoints: &str, domain: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(MCADMIN);
    cmd.args(["--etcd", endpoints, "--domain", domain])
        .args(args)
        .env_remove("MCSHM_ETCD")
        .env_remove("MCSHM_DOMAIN")
        .stdin(Stdio::null());
    cmd
}

/// Creates `domain` in the fleet with fencing off, for tests whose tables hold addresses
/// nothing may connect to (a fenced commit raises fences on the servers it adds or moves keys
/// off; a domain created with `--etcd` fences by default).
pub fn create_unfenced(endpoints: &str, domain: &str) {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("policy.list");
    std::fs::write(&list, "policy: fence=off\n").unwrap();
    let path = list.to_str().unwrap();
    let out = fleet_cmd(
        endpoints,
        domain,
        &["load", "--partial", "--allow-empty", path],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "creating {domain} unfenced: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
