#![no_main]
// Body: gapsync_protocol::fuzz::frame_decoder (the library holds it so a unit test runs it).
libfuzzer_sys::fuzz_target!(|data: &[u8]| gapsync_protocol::fuzz::frame_decoder(data));
