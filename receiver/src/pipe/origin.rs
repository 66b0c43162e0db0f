//! The loop rule: an object whose origin chain already names this receiver's node came back
//! to where it once was. It is not written and is counted (`looped`); the link says so at
//! ERROR. On tcp/tls its Open is answered FAIL, so the sender keeps the object (it retries,
//! then quarantines it) rather than settling what may be the only copy left; on udp the
//! sender cannot hear it and settles it as every sent object.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;

use gapsync_protocol::{Hop, OriginChain};

use super::{Pipe, lock};

/// Looped objects (by path) remembered so that each is counted once however often its
/// sender retries; past this many the memory starts again (a forgotten one is counted again).
const LOOPED_MEMORY: usize = 100_000;

/// What to do with an object announced on a pipe.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Land it, recording this chain (the sender's chain and this connection's hop).
    Land(OriginChain),
    /// It was here before: write nothing (the link refuses it).
    Looped,
}

impl Pipe {
    /// Decides on the object `transfer` (named `path`) announced with the sender's `origin`
    /// chain, for a receiver whose node is `own_node`.
    pub fn admit(
        &self,
        _transfer: u64,
        path: &str,
        origin: &OriginChain,
        own_node: &str,
    ) -> Admission {
        if origin.contains_node(own_node) {
            if self.remember_looped(path) {
                self.stats.looped.fetch_add(1, Relaxed);
            }
            return Admission::Looped;
        }
        Admission::Land(recorded(origin, &self.from, &self.name))
    }

    /// Remembers a looped object by its path (a retry may come under a new transfer id);
    /// true the first time.
    fn remember_looped(&self, path: &str) -> bool {
        let mut set = lock(&self.looped);
        if set.len() >= LOOPED_MEMORY {
            set.clear();
        }
        set.insert(path.to_owned())
    }
}

/// The chain kept with an object that arrived with `origin` from node `from` over pipe
/// `pipe`. A chain already at the hop limit loses its oldest hop (the newest ones are what
/// keeps an object from going back where it just was).
pub fn recorded(origin: &OriginChain, from: &str, pipe: &str) -> OriginChain {
    let Ok(hop) = Hop::new(from, pipe) else {
        // Config names follow the same rule as hop names: cannot happen.
        return origin.clone();
    };
    origin.with_hop(hop.clone()).unwrap_or_else(|_| {
        let mut hops = origin.hops().get(1..).unwrap_or_default().to_vec();
        hops.push(hop);
        OriginChain::new(hops).unwrap_or_else(|_| origin.clone())
    })
}

/// A set of looped transfers, for [`Pipe`].
pub type Looped = std::sync::Mutex<HashSet<String>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_chain_ends_with_this_connection_and_keeps_the_newest_hops() {
        let c = OriginChain::parse("a/p1").expect("chain");
        assert_eq!(recorded(&c, "b", "p2").to_string(), "a/p1,b/p2");
        assert_eq!(
            recorded(&OriginChain::default(), "b", "p2").to_string(),
            "b/p2"
        );
        let full = OriginChain::new(
            (0..gapsync_protocol::MAX_HOPS)
                .map(|i| Hop::new(&format!("n{i}"), "p").expect("hop"))
                .collect(),
        )
        .expect("full");
        let r = recorded(&full, "b", "p2");
        assert_eq!(r.hops().len(), gapsync_protocol::MAX_HOPS);
        assert_eq!(r.hops().first().map(|h| h.node.as_str()), Some("n1"));
        assert_eq!(r.hops().last().map(|h| h.node.as_str()), Some("b"));
    }
}
