//! The direct path: a command of the common shape (one key, one server, nothing to fill or
//! invalidate) is encoded straight into the server connection's output, and its reply framed
//! straight into the client's, with no task and no copy between; anything else becomes a job.

use std::rc::Rc;
use std::sync::Arc;

use libmcshm::Snapshot;

use super::{Plan, Planned, Service, server_error};
use crate::command::{Command, MetaVerb};
use crate::failure::{Failure, Fenced};
use crate::jobs::Work;
use crate::upstream::{Deliver, Net};
use libmcshm::proto::frame::{Frame, first_line, items, unprefix_meta};
use libmcshm::proto::is_error;

/// A client's reply slot: the session, its generation, and the command's place in its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRef {
    pub client: usize,
    pub generation: u64,
    pub seq: u64,
}

/// A direct request on its way: where its reply goes and what it needs on arrival.
pub struct Direct {
    pub slot: SlotRef,
    pub service: Rc<Service>,
    snapshot: Arc<Snapshot>,
    server: usize,
    lane: usize,
    command: Command,
    quiet: Quiet,
}

/// What a client is not told.
#[derive(Clone, Copy)]
pub(super) enum Quiet {
    No,
    /// noreply: nothing.
    Noreply,
    /// A meta command's `q`: nothing for the verb's quiet codes.
    Meta(MetaVerb),
}

impl Quiet {
    fn of(command: &Command) -> Quiet {
        match *command {
            Command::Meta {
                verb, quiet: true, ..
            } => Quiet::Meta(verb),
            Command::Store { noreply: true, .. }
            | Command::Delete { noreply: true, .. }
            | Command::Arith { noreply: true, .. }
            | Command::Touch { noreply: true, .. } => Quiet::Noreply,
            _ => Quiet::No,
        }
    }

    fn hides(self, reply: &[u8]) -> bool {
        match self {
            Quiet::No => false,
            Quiet::Noreply => true,
            Quiet::Meta(verb) => {
                let code = first_line(reply).get(..2).unwrap_or_default();
                verb.quiet_codes().contains(&code)
            }
        }
    }

    pub(super) fn apply(self, reply: Vec<u8>) -> Vec<u8> {
        match self.hides(&reply) {
            true => Vec::new(),
            false => reply,
        }
    }
}

/// How a command started ([`Service::start`]).
pub enum Started {
    /// Answered at once.
    Ready(Vec<u8>),
    /// A direct request: the reply comes with [`Service::finish_direct`].
    Direct,
    /// A job: its output is the reply.
    Job(Work),
}

/// A direct request's reply ([`Service::finish_direct`]).
pub enum Finished<'a> {
    /// The server's reply, as it came.
    Pass(&'a [u8]),
    Owned(Vec<u8>),
    /// More to do (a table change in flight): the job's output is the reply.
    Job(Work),
}

impl Service {
    /// Starts a command that goes to servers (the session answers the others itself), on the
    /// client's `lane`: directly when its plan has the common shape, else as a job that
    /// executes the plan already made. Either way its first requests are queued before this
    /// returns (a job is polled once at once), so the servers see a client's commands in the
    /// order it sent them.
    pub fn start(
        self: &Rc<Self>,
        command: Command,
        lane: usize,
        net: &mut Net<Direct>,
        slot: SlotRef,
    ) -> Started {
        let shape = match &command {
            Command::Get { keys, .. } if keys.len() == 1 => {
                self.stats
                    .get_keys
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.direct_read(&keys[0])
                    .map(|(s, i)| (s, i, Frame::Values))
            }
            Command::Meta {
                verb: MetaVerb::Get,
                key,
                ..
            } => self.direct_read(key).map(|(s, i)| (s, i, Frame::Meta)),
            Command::Meta {
                verb: MetaVerb::Set | MetaVerb::Delete | MetaVerb::Arithmetic,
                key,
                ..
            } => self
                .direct_write(key, false)
                .map(|(s, i)| (s, i, Frame::Meta)),
            Command::Store { key, cas, .. } => self
                .direct_write(key, cas.is_some())
                .map(|(s, i)| (s, i, Frame::Line)),
            Command::Delete { key, .. }
            | Command::Arith { key, .. }
            | Command::Touch { key, .. } => self
                .direct_write(key, false)
                .map(|(s, i)| (s, i, Frame::Line)),
            _ => Err(None),
        };
        let (snapshot, server, frame) = match shape {
            Ok(shape) => shape,
            Err(planned) => {
                return Started::Job(self.clone().job_planned(command, lane, planned, true));
            }
        };
        let prefix = snapshot.policy.prefix;
        if !prefix.is_empty() && command.base64_key() {
            return Started::Job(self.clone().job(command, lane));
        }
        let quiet = Quiet::of(&command);
        let to = Deliver::Direct(Direct {
            slot,
            service: self.clone(),
            snapshot: snapshot.clone(),
            server,
            lane,
            command,
            quiet,
        });
        net.send(
            self.domain,
            &snapshot,
            server,
            lane,
            frame,
            to,
            |out, to| {
                if let Deliver::Direct(direct) = to {
                    direct.command.encode(out, prefix.as_bytes());
                }
            },
        );
        Started::Direct
    }

    /// The one server a read goes to directly: the key's single up replica, when its plan has
    /// no fill; else the plan, for the job (`None`: no plan could be made). The plan alone
    /// decides, as in the blocking client: it has a fill whenever this key can need one (its
    /// owner warming, its pre-drain owner draining), and a miss on a table that changed
    /// meanwhile becomes a job ([`Service::finish_direct`]). (A domain-wide "any server drains
    /// or warms" made every get a job during a drain.)
    fn direct_read(&self, key: &[u8]) -> Result<(Arc<Snapshot>, usize), Option<Planned>> {
        let Plan {
            snapshot,
            value: plan,
        } = self
            .decide(|router, now| router.plan_read(key, now))
            .map_err(|_| None)?;
        match plan.fills.is_empty() && plan.replicas.len() == 1 {
            true => Ok((snapshot, plan.replicas[0].index)),
            false => Err(Some(Planned::Read(Plan {
                snapshot,
                value: plan,
            }))),
        }
    }

    /// The one server a write goes to directly: its single target, when nothing needs
    /// invalidating; else the plan, for the job (`None`: no plan could be made).
    fn direct_write(
        &self,
        key: &[u8],
        only_first: bool,
    ) -> Result<(Arc<Snapshot>, usize), Option<Planned>> {
        let Plan { snapshot, value } = self
            .decide(|router, now| router.plan_write(key, only_first, now))
            .map_err(|_| None)?;
        match value.targets.len() == 1 && value.invalidate.is_empty() {
            true => Ok((snapshot, value.targets[0].index)),
            false => Err(Some(Planned::Write(Plan { snapshot, value }))),
        }
    }

    /// The reply of a direct request: reported to the router, and made the client's reply.
    pub fn finish_direct<'a>(
        self: &Rc<Self>,
        direct: Direct,
        result: Result<&'a [u8], &Failure>,
    ) -> Finished<'a> {
        let Direct {
            snapshot,
            server,
            lane,
            command,
            quiet,
            ..
        } = direct;
        let version = snapshot.version;
        self.report(&snapshot, server, result.map_err(Clone::clone));
        let prefix = snapshot.policy.prefix;
        let reply = match result {
            Ok(reply) => reply,
            Err(Failure {
                fenced: Some(fenced),
                ..
            }) => return self.fenced_direct(snapshot, server, lane, command, quiet, *fenced),
            Err(_) if matches!(quiet, Quiet::Noreply) => return Finished::Owned(Vec::new()),
            Err(failure) => {
                let error = format!("{}: {}", snapshot.servers[server].address, failure.error);
                return Finished::Owned(server_error(&error));
            }
        };
        match command {
            Command::Get { .. } => {
                let line = first_line(reply);
                if is_error(line) {
                    return Finished::Owned(server_error(&String::from_utf8_lossy(line)));
                }
                if reply == b"END\r\n" {
                    // A miss on a table that changed meanwhile: the key may have moved.
                    if self.changed_since(version) {
                        return Finished::Job(self.clone().job(command, lane));
                    }
                    return Finished::Pass(reply);
                }
                self.stats
                    .get_hits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if prefix.is_empty() {
                    return Finished::Pass(reply);
                }
                let mut out = Vec::with_capacity(reply.len());
                for item in items(reply) {
                    out.extend_from_slice(&item.unprefixed(prefix.as_bytes()));
                }
                out.extend_from_slice(b"END\r\n");
                Finished::Owned(out)
            }
            Command::Meta {
                verb: MetaVerb::Get,
                ..
            } => self.direct_reply(reply, quiet, prefix.as_bytes()),
            write if self.changed_since(version) => {
                // The table changed while the write was in flight: it may have landed where
                // the key no longer belongs.
                let reply = unprefix_meta(reply.to_vec(), prefix.as_bytes());
                let this = self.clone();
                Finished::Job(Box::pin(async move {
                    let key = write.key().unwrap_or_default();
                    let written = [mcshm_route::ServerRef {
                        id: snapshot.servers[server].id,
                        index: server,
                    }];
                    this.follow_table_change(&snapshot, &written, key, &write)
                        .await;
                    quiet.apply(reply)
                }))
            }
            _ => self.direct_reply(reply, quiet, prefix.as_bytes()),
        }
    }

    /// A direct request whose reply server `server`'s fence judged behind (see
    /// [`libmcshm::fence`]): a write is undone there (a delete without a fence read); then the
    /// command waits for this host's table to reach the fence and runs once more on it, as a
    /// job; if the table does not catch up in time, a read is a miss and a write answers
    /// `SERVER_ERROR table behind (…)` (nothing under `noreply`).
    fn fenced_direct<'a>(
        self: &Rc<Self>,
        snapshot: Arc<Snapshot>,
        server: usize,
        lane: usize,
        command: Command,
        quiet: Quiet,
        fenced: Fenced,
    ) -> Finished<'a> {
        let address = snapshot.servers[server].address.to_string();
        let given_up = move |command: &Command| match command {
            Command::Get { .. } => b"END\r\n".to_vec(),
            Command::Meta {
                verb: MetaVerb::Get,
                ..
            } => quiet.apply(b"EN\r\n".to_vec()),
            _ => quiet.apply(server_error(&fenced.describe(Some(&address)))),
        };
        let read = matches!(
            command,
            Command::Get { .. }
                | Command::Meta {
                    verb: MetaVerb::Get,
                    ..
                }
        );
        if read && fenced.fence == u64::MAX {
            // A missing fence: no table will do until a fleet commit writes one.
            return Finished::Owned(given_up(&command));
        }
        let this = self.clone();
        Finished::Job(Box::pin(async move {
            if !read {
                // Queued at the job's first poll, sent right after it.
                this.undo(&snapshot, server, &command, lane);
            }
            if this.catch_up(fenced.fence).await {
                return this.clone().job_planned(command, lane, None, false).await;
            }
            given_up(&command)
        }))
    }

    /// A single-line or meta reply as the client gets it.
    fn direct_reply<'a>(&self, reply: &'a [u8], quiet: Quiet, prefix: &[u8]) -> Finished<'a> {
        match quiet.hides(reply) {
            true => Finished::Owned(Vec::new()),
            false if prefix.is_empty() => Finished::Pass(reply),
            false => Finished::Owned(unprefix_meta(reply.to_vec(), prefix)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Quiet;
    use crate::command::{Command, Limits, MetaVerb, Parsed, parse};

    fn command(text: &str) -> Command {
        let limits = Limits {
            max_line: 256,
            max_item: 64,
            max_get_line: 256,
        };
        match parse(text.as_bytes(), limits) {
            Parsed::Command(command, _) => command,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn noreply_hides_every_reply_and_no_quiet_hides_none() {
        let quiet = Quiet::of(&command("set k 0 0 1 noreply\r\nv\r\n"));
        assert!(matches!(quiet, Quiet::Noreply));
        assert!(quiet.hides(b"STORED\r\n") && quiet.hides(b"SERVER_ERROR x\r\n"));
        let loud = Quiet::of(&command("set k 0 0 1\r\nv\r\n"));
        assert!(!loud.hides(b"STORED\r\n"));
        assert_eq!(loud.apply(b"STORED\r\n".to_vec()), b"STORED\r\n");
    }

    #[test]
    fn a_meta_q_hides_only_its_verbs_quiet_codes() {
        let quiet = Quiet::of(&command("ms k 1 q\r\nv\r\n"));
        assert!(matches!(quiet, Quiet::Meta(MetaVerb::Set)));
        assert!(quiet.hides(b"HD\r\n"), "a success is quiet");
        assert!(!quiet.hides(b"NS\r\n"), "a failure is told");
        assert_eq!(quiet.apply(b"HD\r\n".to_vec()), b"");
        let get = Quiet::of(&command("mg k v q\r\n"));
        assert!(get.hides(b"EN\r\n"), "a miss is quiet");
        assert!(!get.hides(b"VA 1\r\nv\r\n"));
    }
}
