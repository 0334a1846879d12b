//! Commands addressed to servers rather than keys: flush_all, version, stats.

use super::{Client, Stats};
use crate::address::Address;
use crate::error::Result;
use crate::proto::{Reply, Request};

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

    pub(super) fn each_server<T>(
        &mut self,
        only: Option<&Address>,
        request: &Request<'_>,
        accept: impl Fn(Reply) -> std::result::Result<T, Reply>,
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
                self.call(i, request)
                    .and_then(|reply| accept(reply).map_err(|other| self.unexpected(i, other)))
            };
            results.push((address, result));
        }
        Ok(results)
    }
}
