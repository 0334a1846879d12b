//! The jobs that write: a write to the key's up replicas with its invalidations, following a
//! table that changed while it was in flight (as the routing core's [`FollowChange`] says),
//! and `flush_all` on every up server.

use std::sync::Arc;

use libmcshm::Snapshot;
use libmcshm::proto::{Encoded, Request};
use mcshm_route::{FollowChange, ServerRef, WritePlan};

use super::{Fences, Outstanding, Plan, Service, encode_for, server_error};
use crate::command::Command;
use crate::failure::Failure;
use libmcshm::proto::frame::{Frame, first_line, unprefix_meta};

impl Service {
    /// A write to the key's up replicas (`only_first`, for cas: the first only), then the
    /// invalidations the router names; the first replica's reply. A replica whose fence judged
    /// the write behind has it undone (a delete without a fence read) and the write answers
    /// `SERVER_ERROR table behind (…)`, whatever the other replicas said (the fence noted in
    /// `fences`, for the command to run once more).
    pub(super) async fn write(
        &self,
        command: &Command,
        key: &[u8],
        (frame, only_first): (Frame, bool),
        lane: usize,
        planned: Option<Plan<WritePlan>>,
        fences: &Fences,
    ) -> Vec<u8> {
        let Plan {
            snapshot,
            value: plan,
        } = match planned {
            Some(plan) => plan,
            None => decided!(self.decide(|router, now| router.plan_write(key, only_first, now))),
        };
        let bytes = decided!(encode_for(command, &snapshot));
        let prefix = snapshot.policy.prefix;
        let outstanding: Vec<Outstanding> = plan
            .targets
            .iter()
            .map(|s| self.send(&snapshot, s.index, bytes.clone(), frame, lane))
            .collect();
        // The invalidations go out with the write: their round trips overlap.
        let mut delete = Encoded::new();
        if !plan.invalidate.is_empty() {
            delete.push(&Request::Delete { key }, prefix.as_bytes());
        }
        let deletes: Vec<Outstanding> = plan
            .invalidate
            .iter()
            .map(|s| self.send(&snapshot, s.index, delete.clone(), Frame::Line, lane))
            .collect();
        let (mut reply, mut failure, mut behind) = (None, None, None);
        for (sent, target) in outstanding.into_iter().zip(&plan.targets) {
            match self.finish(sent).await {
                Ok(bytes) if reply.is_none() => reply = Some(bytes),
                Ok(_) => {}
                // Landed where this host's table is behind: undone there.
                Err(Failure {
                    fenced: Some(fenced),
                    ..
                }) => {
                    fences.note(&fenced);
                    self.undo(&snapshot, target.index, command, lane);
                    let address = snapshot.servers[target.index].address.to_string();
                    behind = Some(fenced.describe(Some(&address)));
                }
                Err(err) => failure = Some(err.error),
            }
        }
        for sent in deletes {
            let _ = self.finish(sent).await;
        }
        self.follow_table_change(&snapshot, &plan.targets, key, command)
            .await;
        if let Some(why) = behind {
            return server_error(&why);
        }
        match (reply, failure) {
            (Some(reply), _) => unprefix_meta(reply, prefix.as_bytes()),
            (None, Some(error)) => server_error(&error),
            (None, None) => server_error("no server answered"),
        }
    }

    /// A write planned on `snapshot` and sent to its servers `written`, whose table changed
    /// while it was in flight, follows the new versions as [`FollowChange`] says (the blocking
    /// client runs the same): deleted where it no longer belongs and where the new version
    /// invalidates; a set or delete sent again to new replicas.
    pub(super) async fn follow_table_change(
        &self,
        snapshot: &Arc<Snapshot>,
        written: &[ServerRef],
        key: &[u8],
        command: &Command,
    ) {
        let mut follow = FollowChange::new(snapshot.version, written, command.is_repeatable());
        // One atomic load per round while nothing changed (none at all, mostly).
        while follow.wants(self.router().version_now()) {
            let Ok(Plan {
                snapshot: now,
                value: round,
            }) = self.decide(|router, now| {
                let plan = router.plan_write(key, false, now)?;
                let now = router.snapshot().clone();
                Ok(follow.round(now.version, &now.servers, &plan, |i| router.is_down(i)))
            })
            else {
                return;
            };
            let Some(round) = round else { return };
            let prefix = now.policy.prefix.as_bytes();
            let delete = Encoded::of(&Request::Delete { key }, prefix);
            for server in round.delete {
                let _ = self
                    .call(&now, server.index, delete.clone(), Frame::Line)
                    .await;
            }
            if round.resend.is_empty() {
                continue;
            }
            let Ok(again) = encode_for(command, &now) else {
                return;
            };
            let frame = match command {
                Command::Meta { .. } => Frame::Meta,
                _ => Frame::Line,
            };
            for server in round.resend {
                let _ = self.call(&now, server.index, again.clone(), frame).await;
            }
        }
    }

    /// `flush_all` on every up server: `OK` when all of them did it.
    pub(super) async fn flush_all(&self, bytes: Encoded, lane: usize) -> Vec<u8> {
        let Plan {
            snapshot,
            value: up,
        } = decided!(self.decide(|router, _| {
            let n = router.snapshot().servers.len();
            Ok((0..n).filter(|&i| !router.is_down(i)).collect::<Vec<_>>())
        }));
        // No table decides a flush: it goes without a fence read.
        let outstanding: Vec<Outstanding> = up
            .iter()
            .map(|&server| self.queue(&snapshot, server, bytes.clone(), Frame::Line, lane, true))
            .collect();
        let mut failed = Vec::new();
        for (server, sent) in up.into_iter().zip(outstanding) {
            match self.finish(sent).await {
                Ok(reply) if reply == b"OK\r\n" => {}
                Ok(reply) => failed.push(format!(
                    "{}: {}",
                    snapshot.servers[server].address,
                    String::from_utf8_lossy(first_line(&reply))
                )),
                Err(err) => failed.push(err.error),
            }
        }
        match failed.is_empty() {
            true => b"OK\r\n".to_vec(),
            false => server_error(&format!("flush_all failed on {}", failed.join("; "))),
        }
    }
}
