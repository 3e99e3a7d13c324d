//! Fuzzes the IDX parser (raw and gzipped input): it must never panic, and whatever it accepts
//! must hold exactly as many bytes as its dimensions say.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modula_data::idx;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(array) = idx::parse(Path::new("fuzz.idx"), bytes) {
        assert_eq!(array.dims.iter().product::<usize>(), array.data.len());
    }
});
