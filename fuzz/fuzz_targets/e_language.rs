#![no_main]
// Body: gapsync_protocol::fuzz::e_language.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gapsync_protocol::fuzz::e_language(data));
