//! Fuzzes the CIFAR-10 batch parser: it must never panic, and whatever it accepts must
//! re-encode to the same bytes with every label below 10.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modula_data::cifar;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(set) = cifar::parse(Path::new("fuzz.bin"), bytes, 0) {
        assert!(set.labels.iter().all(|&l| l < 10));
        assert_eq!(cifar::encode(&set), bytes);
    }
});
