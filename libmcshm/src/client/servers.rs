//! Commands addressed to servers rather than keys: flush_all, version, stats, the keys held.

use super::{Client, Stats};
use crate::address::Address;
use crate::error::{Error, Result};
use crate::metadump::list_keys;
use crate::proto::{Reply, Request};

/// The keys a server holds ([`Client::keys`]).
pub type Keys = Vec<Vec<u8>>;

impl Client {
    /// `flush_all [delay]` on every up server, or on `only`. One result per server.
    pub fn flush_all(
        &mut self,
        only: Option<&Address>,
        delay: Option<u32>,
    ) -> Result<Vec<(Address, Result<()>)>> {
        self.each_server(only, &Request::FlushAll { delay }, |reply| match reply {
            Reply::Ok => Ok(()),
            other => Err(other),
        })
    }

    /// `version` of every up server (or `only`).
    pub fn versions(&mut self, only: Option<&Address>) -> Result<Vec<(Address, Result<String>)>> {
        self.each_server(only, &Request::Version, |reply| match reply {
            Reply::Version(v) => Ok(v),
            other => Err(other),
        })
    }

    /// `stats [group]` of every up server (or `only`).
    pub fn stats(
        &mut self,
        group: Option<&str>,
        only: Option<&Address>,
    ) -> Result<Vec<(Address, Result<Stats>)>> {
        self.each_server(only, &Request::Stats { group }, |reply| match reply {
            Reply::Stats(s) => Ok(s),
            other => Err(other),
        })
    }

    /// The domain's keys that every up server (or `only`) holds, as clients name them: without
    /// the domain's key prefix (keys outside it are not the domain's). memcached's `lru_crawler
    /// metadump all`, what memcdump lists; a server too old for it answers an error.
    pub fn keys(&mut self, only: Option<&Address>) -> Result<Vec<(Address, Result<Keys>)>> {
        let prefix = self.snapshot()?.policy.prefix;
        let access = self.access().map_err(|e| e.to_string());
        let timeouts = self.timeouts;
        self.each_chosen(only, |_, _, address| {
            let listed = access
                .clone()
                .and_then(|access| list_keys(address, timeouts, &access))
                .map_err(|error| Error::Network {
                    server: address.to_string(),
                    error,
                })?;
            Ok(listed
                .iter()
                .filter_map(|k| prefix.strip(k).map(<[u8]>::to_vec))
                .collect())
        })
    }

    pub(super) fn each_server<T>(
        &mut self,
        only: Option<&Address>,
        request: &Request<'_>,
        accept: impl Fn(Reply) -> std::result::Result<T, Reply>,
    ) -> Result<Vec<(Address, Result<T>)>> {
        self.each_chosen(only, |client, i, _| {
            client
                .call_plain(i, request)
                .and_then(|reply| accept(reply).map_err(|other| client.unexpected(i, other)))
        })
    }

    /// `ask` of every server (or `only`) that is up; a down one answers why it is down.
    fn each_chosen<T>(
        &mut self,
        only: Option<&Address>,
        mut ask: impl FnMut(&mut Client, usize, &Address) -> Result<T>,
    ) -> Result<Vec<(Address, Result<T>)>> {
        self.refresh()?;
        let snapshot = self.router.snapshot().clone();
        let chosen: Vec<usize> = match only {
            Some(address) => vec![snapshot.position(address)?],
            None => (0..snapshot.servers.len()).collect(),
        };
        let mut results = Vec::new();
        for i in chosen {
            let address = snapshot.servers[i].address.clone();
            let result = if self.is_down(i) {
                Err(self.router.down_error(i))
            } else {
                ask(self, i, &address)
            };
            results.push((address, result));
        }
        Ok(results)
    }
}
