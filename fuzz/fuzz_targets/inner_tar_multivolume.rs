#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qbackup_fuzz_targets::inner_tar_multivolume(data));
