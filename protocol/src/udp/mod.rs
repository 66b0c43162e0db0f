//! The diode link: UDP one way, nothing back. Objects (files) are cut into blocks, each
//! RaptorQ-coded into source and repair symbols; every symbol travels in a self-describing,
//! checksummed (and, with a key, authenticated) datagram; small control messages announce and
//! end each object and are repeated; heartbeats carry the sender's counters.
//!
//! ```text
//!  file -> blocks -> RaptorQ symbols -> interleave -> [datagram] -> pace -> diode
//!                                                                            |
//!  dest <- sink <- decoded blocks <- Assembly (per object, deadline) <- [datagram]
//! ```

pub mod assembly;
pub mod control;
pub mod datagram;
pub mod fec;
pub mod profile;

pub use assembly::{Assembly, Limits, PassFailure};
pub use control::{Announce, End, Heartbeat, decode_announce, encode_announce};
pub use datagram::{DatagramError, Header, Kind};
pub use profile::UdpProfile;
