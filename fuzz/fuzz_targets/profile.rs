#![no_main]
// Body: gapsync_protocol::fuzz::profile_text.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gapsync_protocol::fuzz::profile_text(data));
