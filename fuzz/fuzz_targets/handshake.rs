#![no_main]
// Body: gapsync_protocol::fuzz::handshake.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gapsync_protocol::fuzz::handshake(data));
