//! Where the verbs read and write the domain's table: this host's registry, or with `--etcd`
//! the fleet's tables in etcd. The choice is made once, when the command line is read; each
//! verb then makes one call here, and what differs between the two (a registry transaction or
//! an etcd compare-and-swap, a version or a fleet revision, a file that may not exist yet)
//! stays in this module and in fleet.rs.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use libmcshm::lifecycle::{LoadPlan, LoadTarget};
use libmcshm::registry::{AgentLink, FileOwnership, LockWait};
use libmcshm::table::Table;
use libmcshm::{Address, Commit, Domain, Registry, Server, Snapshot, Timeouts};
use mcshm_fleet::document::Changed;
use mcshm_fleet::{Fleet, FleetCommit};

use crate::fleet;

/// The domain's table, here or in the fleet.
pub enum Store {
    /// This host's registry (the default).
    Local(Local),
    /// The fleet's table in etcd (`--etcd`); `dir` holds the domain's access files, which the
    /// flushes of `add`, `up` and `load` present to the servers.
    Fleet {
        fleet: Arc<Fleet>,
        dir: PathBuf,
        domain: Domain,
    },
}

/// The domain in this host's registry directory, and how a write opens its file.
#[derive(Clone)]
pub struct Local {
    pub dir: PathBuf,
    pub domain: Domain,
    /// Mode and group of a domain file a write creates.
    pub ownership: FileOwnership,
    /// How long a write waits for another writer (--lock-timeout).
    pub lock_wait: LockWait,
}

impl Local {
    /// The domain opened for writing (created if `create`), waiting for other writers as
    /// --lock-timeout says.
    pub fn writer(&self, create: bool) -> libmcshm::Result<Registry> {
        let mut registry =
            Registry::open_writer_with(&self.dir, &self.domain, create, self.ownership)?;
        registry.set_lock_wait(self.lock_wait);
        Ok(registry)
    }
}

/// What a write published: a version of this host's table, or a fleet revision.
pub enum Written {
    Version(Commit),
    Revision(FleetCommit),
}

/// The domain's table as `list` shows it, with what only its store knows.
pub struct Reading {
    /// A fleet table's version is its fleet revision.
    pub snapshot: Arc<Snapshot>,
    /// Consecutive failures counted for each server on this host (none for the fleet's).
    pub failures: Vec<u32>,
    pub origin: Origin,
}

pub enum Origin {
    /// This host's table, and the fleet agent that mirrors it (if any).
    Local(AgentLink),
    /// The fleet's table, and who changed it last.
    Fleet { revision: i64, changed: Changed },
}

impl Store {
    /// The fleet, with `--etcd`.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        match self {
            Store::Local(_) => None,
            Store::Fleet { fleet, .. } => Some(fleet),
        }
    }

    /// The domain's table ("no such domain" when there is none).
    pub fn snapshot(&self) -> Result<Arc<Snapshot>> {
        match self {
            Store::Local(local) => Ok(Registry::open(&local.dir, &local.domain)?.snapshot()?),
            Store::Fleet { fleet, domain, .. } => Ok(Arc::new(fleet::snapshot(fleet, domain)?.1)),
        }
    }

    /// The domain's table, or `None` when the domain does not exist (what `load --dry-run`
    /// compares a list with).
    pub fn current(&self) -> Result<Option<Arc<Snapshot>>> {
        match self {
            Store::Local(local) if !local.domain.path_in(&local.dir).exists() => Ok(None),
            Store::Local(_) => self.snapshot().map(Some),
            Store::Fleet { fleet, domain, .. } => match fleet::snapshot(fleet, domain) {
                Ok((_, snapshot)) => Ok(Some(Arc::new(snapshot))),
                Err(err)
                    if matches!(
                        err.downcast_ref::<mcshm_fleet::FleetError>(),
                        Some(mcshm_fleet::FleetError::NoDomain(_))
                    ) =>
                {
                    Ok(None)
                }
                Err(err) => Err(err),
            },
        }
    }

    /// The domain's table with its failure counts and origin, for `list`.
    pub fn read(&self) -> Result<Reading> {
        match self {
            Store::Local(local) => {
                let mut registry = Registry::open(&local.dir, &local.domain)?;
                let snapshot = registry.snapshot()?;
                let live = registry.live();
                let failures = snapshot.servers.iter().map(|s| live.failures(s)).collect();
                let origin = Origin::Local(registry.agent_link());
                Ok(Reading {
                    snapshot,
                    failures,
                    origin,
                })
            }
            Store::Fleet { fleet, domain, .. } => {
                let (table, snapshot) = fleet::snapshot(fleet, domain)?;
                Ok(Reading {
                    failures: vec![0; snapshot.servers.len()],
                    snapshot: Arc::new(snapshot),
                    origin: Origin::Fleet {
                        revision: table.revision,
                        changed: table.changed,
                    },
                })
            }
        }
    }

    /// The domain's servers; none when the domain does not exist yet.
    pub fn servers(&self) -> Result<Vec<Server>> {
        match self {
            Store::Local(local) => match Registry::open(&local.dir, &local.domain) {
                Ok(mut registry) => Ok(registry.snapshot()?.servers.clone()),
                Err(libmcshm::Error::NoDomain { .. }) => Ok(Vec::new()),
                Err(err) => Err(err.into()),
            },
            Store::Fleet { fleet, domain, .. } => Ok(fleet
                .read(domain)?
                .map(|table| table.table.servers)
                .unwrap_or_default()),
        }
    }

    /// Runs `change` as one transaction (creating the domain if `create`).
    pub fn transact(
        &self,
        create: bool,
        mut change: impl FnMut(&mut Table) -> libmcshm::Result<()>,
    ) -> Result<Written> {
        match self {
            Store::Local(local) => {
                if create && !local.domain.path_in(&local.dir).exists() {
                    // The first command of a new domain runs on an empty table first: if it
                    // fails (a bad or repeated argument), no file is created and no empty
                    // domain is left behind.
                    change(&mut Table::default())?;
                }
                let commit = local.writer(create)?.transact(change)?;
                Ok(Written::Version(commit))
            }
            Store::Fleet { fleet, domain, .. } => Ok(Written::Revision(
                fleet.transact(domain, create, "mcadmin", change)?,
            )),
        }
    }

    /// `up`: see [`libmcshm::lifecycle::bring_up`] (and [`fleet::bring_up`]).
    pub fn bring_up(&self, addresses: &[Address], no_flush: bool) -> Result<Written> {
        let timeouts = Timeouts::default();
        match self {
            Store::Local(local) => {
                let mut registry = local.writer(false)?;
                let commit =
                    libmcshm::lifecycle::bring_up(&mut registry, addresses, no_flush, timeouts)?;
                Ok(Written::Version(commit))
            }
            Store::Fleet { fleet, dir, domain } => Ok(Written::Revision(fleet::bring_up(
                fleet, dir, domain, addresses, no_flush,
            )?)),
        }
    }

    /// `load`: makes the table `loaded` (see [`libmcshm::lifecycle::load`] and
    /// [`fleet::load`]); with `initial`, only into a domain that does not exist yet (the fleet
    /// has no boot-time replay: it takes the list).
    pub fn load(
        &self,
        loaded: &mut Table,
        initial: bool,
        no_flush: bool,
    ) -> Result<(Written, LoadPlan)> {
        let (dir, domain) = match self {
            Store::Local(local) => (&local.dir, &local.domain),
            Store::Fleet { dir, domain, .. } => (dir, domain),
        };
        if let Store::Local(local) = self
            && initial
            && domain.path_in(dir).exists()
        {
            let version = Registry::open(&local.dir, &local.domain)?.version();
            return Ok((
                Written::Version(Commit::unchanged(version)),
                LoadPlan::default(),
            ));
        }
        let access = libmcshm::access::Access::load(dir, domain)?;
        let timeouts = Timeouts::default();
        match self {
            Store::Local(local) => {
                let target = LoadTarget {
                    dir,
                    domain,
                    ownership: local.ownership,
                    lock_wait: local.lock_wait,
                };
                let (commit, plan) =
                    libmcshm::lifecycle::load(&target, loaded, no_flush, timeouts, &access)?;
                Ok((Written::Version(commit), plan))
            }
            Store::Fleet { fleet, domain, .. } => {
                let (commit, plan) = fleet::load(fleet, domain, loaded, timeouts, &access)?;
                Ok((Written::Revision(commit), plan))
            }
        }
    }
}
