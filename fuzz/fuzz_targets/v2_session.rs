#![no_main]
// Body: gapsync_protocol::fuzz::v2_session (a version-2 connection that negotiated zstd).
libfuzzer_sys::fuzz_target!(|data: &[u8]| gapsync_protocol::fuzz::v2_session(data));
