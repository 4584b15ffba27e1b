#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qbackup_fuzz_targets::protocol_decode(data));
