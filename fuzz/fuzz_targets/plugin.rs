#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| attestor_fuzz::checks::plugin(data));
