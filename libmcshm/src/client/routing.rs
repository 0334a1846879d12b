//! Routing: the ring of each table version (rebuilt only when the version or the local failure
//! view changes), the key's replicas along it, and the retry probe of down servers.

use std::path::Path;

use super::{Client, PERIODIC_OPS, Routing, Source, Target};
use crate::address::Address;
use crate::error::{Error, Result};
use crate::proto;
use crate::registry::Registry;
use crate::ring::{Ring, point_name};
use crate::table::{Failover, Server, State};

impl Client {
    pub(super) fn routing(&self) -> &Routing {
        self.routing
            .as_ref()
            .expect("refresh() builds the routing first")
    }

    /// Rebuilds the routing when the table version (or the local failure view) changed.
    pub(super) fn refresh(&mut self) -> Result<()> {
        let version = match &mut self.source {
            Source::Registry(registry) => registry.version(),
            Source::Servers(_) => 0,
        };
        self.ops += 1;
        if let Some(r) = &self.routing
            && r.snapshot.version == version
            && r.local_epoch == self.local_epoch
        {
            if self.ops.is_multiple_of(PERIODIC_OPS) {
                self.periodic();
            }
            return Ok(());
        }
        let snapshot = match &mut self.source {
            Source::Registry(registry) => registry.snapshot()?,
            Source::Servers(s) => s.clone(),
        };
        if self
            .routing
            .as_ref()
            .is_some_and(|r| r.snapshot.version != snapshot.version)
        {
            // The operator changed the table: our private view of it starts again.
            self.local_down.clear();
        }
        let servers = &snapshot.servers;
        let on_ring = |i: &usize| match snapshot.policy.failover {
            Failover::None => servers[*i].state != State::Draining,
            Failover::Rehash => {
                servers[*i].state == State::Up && !self.local_down.contains(&servers[*i].address)
            }
        };
        let members: Vec<usize> = (0..servers.len()).filter(on_ring).collect();
        let ring = build_ring(servers, &members);
        let with_draining = servers.iter().any(|s| s.state == State::Draining).then(|| {
            let all: Vec<usize> = (0..servers.len())
                .filter(|i| on_ring(i) || servers[*i].state == State::Draining)
                .collect();
            (build_ring(servers, &all), all)
        });
        let probeable = (0..servers.len())
            .filter(|&i| servers[i].state == State::Down && servers[i].retry_interval >= 0)
            .collect();
        self.routing = Some(Routing {
            snapshot,
            local_epoch: self.local_epoch,
            ring,
            members,
            with_draining,
            probeable,
        });
        self.periodic();
        Ok(())
    }

    /// Every [`PERIODIC_OPS`] operations (and on every new version): note in the clients record
    /// that we use this version, and give down servers off the ring their retry probe.
    pub(super) fn periodic(&mut self) {
        if let (Source::Registry(registry), Some(slot)) = (&self.source, self.client_slot) {
            registry.touch_client(slot, self.routing().snapshot.version);
        }
        for server in self.routing().probeable.clone() {
            self.maybe_probe(server);
        }
    }

    pub(super) fn is_down(&self, server: &Server) -> bool {
        server.state == State::Down
            || (!self.local_down.is_empty() && self.local_down.contains(&server.address))
    }

    pub(super) fn target(&mut self, key: &[u8]) -> Result<Target> {
        proto::check_key(key).map_err(|why| Error::bad_key(key, why))?;
        self.refresh()?;
        let routing = self.routing();
        let member = routing
            .ring
            .server_for(key)
            .ok_or_else(|| Error::NoServers { what: self.what() })?;
        let i = routing.members[member];
        Ok(if self.is_down(&routing.snapshot.servers[i]) {
            Target::Down(i)
        } else {
            Target::Up(i)
        })
    }

    /// The key's replicas: the first `replicas` distinct servers along the ring, owner first.
    pub(super) fn chain(&mut self, key: &[u8]) -> Result<Vec<usize>> {
        proto::check_key(key).map_err(|why| Error::bad_key(key, why))?;
        self.refresh()?;
        let replicas = usize::from(self.routing().snapshot.policy.replicas.max(1));
        let chain = self.along_ring(key, replicas);
        if chain.is_empty() {
            return Err(Error::NoServers { what: self.what() });
        }
        Ok(chain)
    }

    /// The first `n` distinct servers along the ring from the key, in ring order (the key was
    /// checked). Stops as soon as it has them: a full walk would visit every point.
    pub(super) fn along_ring(&self, key: &[u8], n: usize) -> Vec<usize> {
        let routing = self.routing();
        routing
            .ring
            .servers_from(key)
            .take(n)
            .map(|m| routing.members[m])
            .collect()
    }

    /// The retry probe of a down server: at most one process per host per retry interval (the
    /// lease), and only processes that can write the registry. A server that answers comes back
    /// through the rejoin policy.
    pub(super) fn maybe_probe(&mut self, server: usize) {
        let Source::Registry(registry) = &self.source else {
            return;
        };
        let candidate = self.routing().snapshot.servers[server].clone();
        let Ok(interval) = u32::try_from(candidate.retry_interval) else {
            return;
        };
        if candidate.state != State::Down
            || !registry.is_writable()
            || !registry.try_probe_lease(&candidate, interval)
        {
            return;
        }
        // The rejoin's flush (or version round trip) is the probe: one connection per lease.
        let dir = registry
            .path()
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let domain = registry.domain().clone();
        if let Ok(mut writer) = Registry::open_writer(dir, &domain, false) {
            let _ = crate::lifecycle::rejoin(
                &mut writer,
                candidate.id,
                self.timeouts,
                false,
                "retry probe",
            );
        }
    }

    pub(super) fn writable_target(&mut self, key: &[u8]) -> Result<usize> {
        match self.target(key)? {
            Target::Up(i) => Ok(i),
            Target::Down(i) => Err(self.down_error(i)),
        }
    }

    pub(super) fn what(&self) -> String {
        match &self.source {
            Source::Registry(r) => format!("domain '{}'", r.domain()),
            Source::Servers(_) => "the server list".into(),
        }
    }

    pub(super) fn address(&self, i: usize) -> Address {
        self.routing().snapshot.servers[i].address.clone()
    }

    pub(super) fn down_error(&self, i: usize) -> Error {
        let server = &self.routing().snapshot.servers[i];
        let reason = match (server.state, server.reason.is_empty()) {
            (State::Down, false) => format!(" ({})", server.reason),
            (State::Down | State::Draining, true) => String::new(),
            (State::Draining, false) => format!(" (draining: {})", server.reason),
            (State::Up, _) => " (for this process: it cannot write the registry)".into(),
        };
        Error::ServerDown {
            server: server.address.to_string(),
            reason,
        }
    }
}

pub(super) fn build_ring(servers: &[Server], members: &[usize]) -> Ring {
    let names: Vec<String> = members
        .iter()
        .map(|&i| point_name(&servers[i].address))
        .collect();
    Ring::build(
        names
            .iter()
            .map(String::as_str)
            .zip(members.iter().map(|&i| servers[i].weight)),
    )
}
