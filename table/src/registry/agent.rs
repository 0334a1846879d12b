//! The fleet agent link: which `mcadmin sync` process mirrors this domain, whether it reaches
//! etcd, and how many answers the servers' fences judged behind this host's table (status in
//! the file's header; nothing routes by it).

use std::sync::atomic::Ordering;

use super::Registry;
use crate::format;
use crate::seqlock::Words;

/// The fleet agent (`mcadmin sync`) that mirrors a domain into this host's table, as recorded
/// in the file's header (status only: nothing routes by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentLink {
    /// The agent process, if one ever recorded itself (it may have died since: see
    /// [`crate::processes::ProcessId::is_alive`]).
    pub agent: Option<crate::processes::ProcessId>,
    /// Whether the agent reached etcd at its last attempt.
    pub connected: bool,
    /// Since when it is connected, or cut off (ms since the Unix epoch).
    pub since_ms: u64,
    /// Answers the domain's clients on this host did not use because the server's fence was
    /// above their table (see [`crate::fence`]): the host lagged the fleet. Wraps at 2^32.
    pub fenced_answers: u32,
}

impl Registry {
    /// The fleet agent of this domain and whether it reaches etcd (see [`AgentLink`]).
    pub fn agent_link(&self) -> AgentLink {
        let agent = self
            .map
            .load(format::AGENT_WORD, Ordering::Acquire)
            .filter(|&w| w != 0)
            .map(crate::processes::ProcessId::from_word);
        let link = self
            .map
            .load(format::AGENT_LINK_WORD, Ordering::Acquire)
            .unwrap_or(0);
        let (connected, since_ms) = decode_link(link);
        AgentLink {
            agent,
            connected,
            since_ms,
            fenced_answers: self.map.load_u32(format::FENCED_OFFSET).unwrap_or(0),
        }
    }

    /// Counts one answer a fence judged behind this host's table (a client that may not write
    /// the file does not count).
    pub fn count_fenced(&self) {
        let _ = self.map.fetch_add_u32(format::FENCED_OFFSET, 1);
    }

    /// Records this process as the domain's fleet agent, reaching etcd or not since `since_ms`
    /// (the agent calls it on every change of its link and after the file was replaced).
    pub fn set_agent_link(&self, connected: bool, since_ms: u64) {
        if let Some(me) = crate::processes::ProcessId::current() {
            self.map
                .store(format::AGENT_WORD, me.to_word(), Ordering::Release);
        }
        let link = encode_link(connected, since_ms);
        self.map
            .store(format::AGENT_LINK_WORD, link, Ordering::Release);
    }

    /// Forgets the fleet agent (it stopped cleanly).
    pub fn clear_agent_link(&self) {
        self.map.store(format::AGENT_WORD, 0, Ordering::Release);
        self.map
            .store(format::AGENT_LINK_WORD, 0, Ordering::Release);
    }
}

/// The link word: bit 63 says whether the agent reaches etcd, the other 63 bits since when
/// (ms since the Unix epoch; a time that does not fit loses its top bit, never the status).
fn encode_link(connected: bool, since_ms: u64) -> u64 {
    (u64::from(connected) << 63) | (since_ms & !(1 << 63))
}

/// The status and time of a link word ([`encode_link`]); 0 (no agent ever): cut off since 0.
fn decode_link(word: u64) -> (bool, u64) {
    (word >> 63 == 1, word & !(1 << 63))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_word_keeps_the_status_and_the_time() {
        for connected in [false, true] {
            for since_ms in [0, 1, 1_764_000_000_000, (1 << 63) - 1] {
                let word = encode_link(connected, since_ms);
                assert_eq!(decode_link(word), (connected, since_ms));
            }
        }
        assert_eq!(decode_link(0), (false, 0), "a file no agent touched");
    }

    #[test]
    fn a_time_with_the_top_bit_set_cannot_pass_for_the_status() {
        assert_eq!(
            decode_link(encode_link(false, u64::MAX)),
            (false, (1 << 63) - 1)
        );
        assert_eq!(decode_link(encode_link(true, 1 << 63)), (true, 0));
    }
}
