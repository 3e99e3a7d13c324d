//! Safetensors checkpoints: exact round trips, typed errors on bad files (never a panic), and
//! interoperability with Python's `safetensors`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use modula_cpu::Cpu;
use modula_nn::{
    Checkpoint, CheckpointError, ExtraTensors, ParamStore, StoredTensor, TensorData,
    load_safetensors, save_safetensors,
};
use modula_tensor::Backend;
use proptest::prelude::*;

fn cpu() -> Cpu {
    Cpu::with_threads(1)
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "modula-ckpt-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two parameters with awkward values: NaN with a payload, signed zero, infinities,
/// subnormals and extremes, all of which must survive bit for bit.
fn sample_params(b: &Cpu) -> ParamStore<Cpu> {
    let mut params = ParamStore::new();
    let special = [
        f32::from_bits(0x7fc0_1234),
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE / 8.0,
        f32::MAX,
    ];
    params.add("fc.weight", b.upload([2, 3], &special));
    params.add("fc.bias", b.upload([1, 3], &[0.1, -0.2, 1.0 / 3.0]));
    params
}

/// A store with the same names and shapes as [`sample_params`], but zeros.
fn zero_params(b: &Cpu) -> ParamStore<Cpu> {
    let mut params = ParamStore::new();
    params.add("fc.weight", b.zeros([2, 3]));
    params.add("fc.bias", b.zeros([1, 3]));
    params
}

fn bits(b: &Cpu, params: &ParamStore<Cpu>) -> Vec<Vec<u32>> {
    params
        .ids()
        .map(|id| {
            b.download(params.get(id))
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect()
}

fn metadata() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("step".to_string(), "1200".to_string()),
        (
            "config".to_string(),
            r#"{"hidden": 8, "note": "ünïcode"}"#.to_string(),
        ),
    ])
}

fn saved_file(dir: &TempDir) -> PathBuf {
    let b = cpu();
    let path = dir.path("model.safetensors");
    save_safetensors(&path, &b, &sample_params(&b), &metadata()).unwrap();
    path
}

/// A hand-made safetensors file: the little-endian header length, the JSON header, the data.
fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn parameters_round_trip_exactly() {
    let b = cpu();
    let dir = TempDir::new("roundtrip");
    let path = saved_file(&dir);
    let mut restored = zero_params(&b);
    let meta = load_safetensors(&path, &b, &mut restored).unwrap();
    assert_eq!(bits(&b, &restored), bits(&b, &sample_params(&b)));
    assert_eq!(meta, metadata());
}

#[test]
fn checkpoint_round_trips_every_supported_dtype() {
    let dir = TempDir::new("dtypes");
    let path = dir.path("state.safetensors");
    let mut ckpt = Checkpoint::new();
    ckpt.insert(
        "adam.m",
        StoredTensor::f32(vec![2, 2], vec![1.0, -2.0, 3.5, 0.0]),
    );
    ckpt.insert(
        "assign",
        StoredTensor::u16(vec![3, 2, 1], vec![0, 1, 2, 65535, 7, 9]),
    );
    ckpt.insert(
        "counters",
        StoredTensor::i64(vec![2], vec![i64::MIN, 1 << 40]),
    );
    ckpt.insert("empty", StoredTensor::f32(vec![0, 4], vec![]));
    ckpt.metadata.insert("kind".into(), "em-state".into());
    ckpt.write(&path).unwrap();

    let back = Checkpoint::read(&path).unwrap();
    assert_eq!(back.len(), 4);
    for (name, t) in ckpt.iter() {
        assert_eq!(back.get(name), Some(t), "{name}");
    }
    assert_eq!(back.metadata, ckpt.metadata);
    assert_eq!(back.u16("assign", Some(&[3, 2, 1])).unwrap()[3], 65535);
    assert_eq!(back.i64("counters", None).unwrap(), &[i64::MIN, 1 << 40]);
    assert_eq!(back.origin(), path.as_path());
}

#[test]
fn typed_getters_report_missing_shape_and_dtype_problems() {
    let mut ckpt = Checkpoint::new();
    ckpt.insert("a", StoredTensor::u16(vec![2], vec![1, 2]));
    assert!(
        matches!(ckpt.f32("b", None), Err(CheckpointError::MissingTensor { name, .. }) if name == "b")
    );
    assert!(matches!(
        ckpt.u16("a", Some(&[1, 2])),
        Err(CheckpointError::ShapeMismatch { expected, found, .. }) if expected == [1, 2] && found == [2]
    ));
    assert!(matches!(
        ckpt.f32("a", None),
        Err(CheckpointError::WrongDtype { expected: "F32", found, .. }) if found == "U16"
    ));
}

#[test]
fn extra_state_is_ignored_on_request_and_rejected_otherwise() {
    let b = cpu();
    let dir = TempDir::new("extra");
    let path = dir.path("with-extra.safetensors");
    let mut ckpt = Checkpoint::new();
    ckpt.add_params(&b, &sample_params(&b)).unwrap();
    ckpt.insert(
        "em.assignments",
        StoredTensor::u16(vec![4], vec![0, 3, 1, 2]),
    );
    ckpt.write(&path).unwrap();

    let mut params = zero_params(&b);
    match load_safetensors(&path, &b, &mut params) {
        Err(CheckpointError::UnexpectedTensors { names, path: p }) => {
            assert_eq!(names, ["em.assignments"]);
            assert_eq!(p, path);
        }
        other => panic!("expected UnexpectedTensors, got {other:?}"),
    }
    // The strict load failed, so nothing was changed.
    assert_eq!(bits(&b, &params), bits(&b, &zero_params(&b)));

    let back = Checkpoint::read(&path).unwrap();
    back.load_params(&b, &mut params, ExtraTensors::Ignore)
        .unwrap();
    assert_eq!(bits(&b, &params), bits(&b, &sample_params(&b)));
    assert_eq!(
        back.u16("em.assignments", Some(&[4])).unwrap(),
        &[0, 3, 1, 2]
    );
}

#[test]
fn every_truncation_is_reported_as_corrupt() {
    let dir = TempDir::new("truncated");
    let path = saved_file(&dir);
    let bytes = std::fs::read(&path).unwrap();
    for len in 0..bytes.len() {
        match Checkpoint::from_bytes(&bytes[..len], &path) {
            Err(CheckpointError::Corrupt { path: p, .. }) => assert_eq!(p, path),
            other => panic!("truncated to {len} bytes: expected Corrupt, got {other:?}"),
        }
    }
    // And through the file-level API, with the path in the message.
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let err = load_safetensors(&path, &cpu(), &mut zero_params(&cpu())).unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn garbage_files_are_reported_as_corrupt() {
    let dir = TempDir::new("garbage");
    let path = dir.path("garbage.safetensors");
    let cases: Vec<Vec<u8>> = vec![
        b"this is not a checkpoint at all".to_vec(),
        vec![],
        u64::MAX.to_le_bytes().to_vec(),
        raw_file("{not json", &[]),
        raw_file(
            r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 4],
        ),
        raw_file(
            r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ),
        raw_file(
            r#"{"w":{"dtype":"NOPE","shape":[1],"data_offsets":[0,4]}}"#,
            &[0; 4],
        ),
    ];
    for (i, bytes) in cases.iter().enumerate() {
        std::fs::write(&path, bytes).unwrap();
        match Checkpoint::read(&path) {
            Err(CheckpointError::Corrupt { .. }) => {}
            other => panic!("case {i}: expected Corrupt, got {other:?}"),
        }
    }
}

#[test]
fn unsupported_dtype_is_reported_with_its_name() {
    let bytes = raw_file(
        r#"{"half":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}"#,
        &[0, 60],
    );
    match Checkpoint::from_bytes(&bytes, "half.safetensors") {
        Err(CheckpointError::WrongDtype { name, found, .. }) => {
            assert_eq!(name, "half");
            assert_eq!(found, "F16");
        }
        other => panic!("expected WrongDtype, got {other:?}"),
    }
}

#[test]
fn shape_mismatch_names_both_shapes() {
    let b = cpu();
    let dir = TempDir::new("shape");
    let path = saved_file(&dir);
    let mut params = ParamStore::new();
    params.add("fc.weight", b.zeros([3, 2]));
    params.add("fc.bias", b.zeros([1, 3]));
    match load_safetensors(&path, &b, &mut params) {
        Err(e @ CheckpointError::ShapeMismatch { .. }) => {
            let CheckpointError::ShapeMismatch {
                name,
                expected,
                found,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(name, "fc.weight");
            assert_eq!(expected, &[3, 2]);
            assert_eq!(found, &[2, 3]);
            assert!(e.to_string().contains("[2, 3]"), "{e}");
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    assert_eq!(
        b.download(params.get(params.find("fc.bias").unwrap()))
            .unwrap(),
        vec![0.0; 3]
    );
}

#[test]
fn missing_tensor_is_named() {
    let b = cpu();
    let dir = TempDir::new("missing");
    let path = saved_file(&dir);
    let mut params = zero_params(&b);
    params.add("fc2.weight", b.zeros([1, 1]));
    match load_safetensors(&path, &b, &mut params) {
        Err(CheckpointError::MissingTensor { name, .. }) => assert_eq!(name, "fc2.weight"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn integer_tensor_under_a_parameter_name_is_a_wrong_dtype() {
    let b = cpu();
    let dir = TempDir::new("dtype");
    let path = dir.path("ints.safetensors");
    let mut ckpt = Checkpoint::new();
    ckpt.insert("w", StoredTensor::i64(vec![1, 2], vec![1, 2]));
    ckpt.write(&path).unwrap();
    let mut params = ParamStore::new();
    params.add("w", b.zeros([1, 2]));
    match load_safetensors(&path, &b, &mut params) {
        Err(CheckpointError::WrongDtype {
            name,
            expected,
            found,
            ..
        }) => {
            assert_eq!(
                (name.as_str(), expected, found.as_str()),
                ("w", "F32", "I64")
            );
        }
        other => panic!("expected WrongDtype, got {other:?}"),
    }
}

#[test]
fn io_errors_carry_the_path() {
    let b = cpu();
    let dir = TempDir::new("io");
    let missing = dir.path("does-not-exist.safetensors");
    match load_safetensors(&missing, &b, &mut zero_params(&b)) {
        Err(CheckpointError::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    let unwritable = dir.path("no-such-dir/model.safetensors");
    let err = save_safetensors(&unwritable, &b, &sample_params(&b), &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::Io { path, .. } if path == &unwritable),
        "{err:?}"
    );
    assert!(err.to_string().contains("no-such-dir"), "{err}");
}

#[test]
fn reserved_names_are_refused() {
    let mut ckpt = Checkpoint::new();
    ckpt.insert("__metadata__", StoredTensor::f32(vec![1], vec![0.0]));
    let dir = TempDir::new("reserved");
    assert!(matches!(
        ckpt.write(dir.path("x.safetensors")),
        Err(CheckpointError::ReservedName { .. })
    ));
}

#[test]
fn writes_replace_atomically_and_leave_no_temporary_files() {
    let b = cpu();
    let dir = TempDir::new("atomic");
    let path = dir.path("model.safetensors");
    std::fs::write(&path, b"old contents").unwrap();
    save_safetensors(&path, &b, &sample_params(&b), &metadata()).unwrap();
    save_safetensors(&path, &b, &sample_params(&b), &BTreeMap::new()).unwrap();
    let entries: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(entries, ["model.safetensors"]);
    let mut params = zero_params(&b);
    assert!(load_safetensors(&path, &b, &mut params).unwrap().is_empty());
}

#[test]
fn a_relative_path_writes_into_the_current_directory() {
    // A bare file name has an empty parent; the temporary file must then go to ".".
    let name = format!("modula-relative-{}.safetensors", std::process::id());
    let mut ckpt = Checkpoint::new();
    ckpt.insert("x", StoredTensor::f32(vec![1], vec![2.0]));
    ckpt.write(&name).unwrap();
    let back = Checkpoint::read(&name);
    std::fs::remove_file(&name).unwrap();
    assert_eq!(back.unwrap().f32("x", None).unwrap(), &[2.0]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes never panic the reader.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Checkpoint::from_bytes(&bytes, "random.safetensors");
    }

    /// Corrupting any bytes of a valid file (header or data) never panics reading or loading.
    #[test]
    fn corrupted_files_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let b = cpu();
        let mut ckpt = Checkpoint::new();
        ckpt.add_params(&b, &sample_params(&b)).unwrap();
        let mut bytes = ckpt.to_bytes().unwrap();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(back) = Checkpoint::from_bytes(&bytes, "edited.safetensors") {
            let _ = back.load_params(&b, &mut zero_params(&b), ExtraTensors::Reject);
        }
    }
}

/// Whether `python3` with numpy and safetensors is available. Under `CI=true` its absence is a
/// failure (CI installs both); elsewhere the interop tests are skipped with a message.
fn python_with_safetensors() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import safetensors, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but `python3 -c 'import safetensors, numpy'` fails; install them with \
             `pip install numpy safetensors`"
        );
        eprintln!("skipping: python3 with numpy and safetensors is not available");
    }
    ok
}

fn run_python(script: &str, arg: &Path) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(arg)
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn python_safetensors_reads_our_file() {
    if !python_with_safetensors() {
        return;
    }
    let b = cpu();
    let dir = TempDir::new("py-read");
    let path = saved_file(&dir);
    // F32 values are printed as their bit patterns, so the comparison is exact (NaN included).
    let script = r#"
import sys
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
path = sys.argv[1]
tensors = load_file(path)
for name in sorted(tensors):
    a = tensors[name]
    bits = a.view(np.uint32) if a.dtype == np.float32 else a
    print("T", name, a.dtype, ",".join(map(str, a.shape)), " ".join(map(str, bits.ravel().tolist())), sep="\t")
with safe_open(path, framework="numpy") as f:
    for k, v in sorted((f.metadata() or {}).items()):
        print("M", k, v, sep="\t")
"#;
    let out = run_python(script, &path);
    let params = sample_params(&b);
    let mut seen_tensors = 0;
    let mut seen_meta = BTreeMap::new();
    for line in out.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields[0] {
            "T" => {
                let id = params.find(fields[1]).expect("a tensor we saved");
                assert_eq!(fields[2], "float32");
                let [r, c] = b.shape(params.get(id));
                assert_eq!(fields[3], format!("{r},{c}"));
                let got: Vec<u32> = fields[4].split(' ').map(|v| v.parse().unwrap()).collect();
                let want: Vec<u32> = b
                    .download(params.get(id))
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                assert_eq!(got, want, "{}", fields[1]);
                seen_tensors += 1;
            }
            "M" => {
                seen_meta.insert(fields[1].to_string(), fields[2].to_string());
            }
            other => panic!("unexpected python output {other:?}"),
        }
    }
    assert_eq!(seen_tensors, params.len());
    assert_eq!(seen_meta, metadata());
}

#[test]
fn we_read_python_safetensors_files() {
    if !python_with_safetensors() {
        return;
    }
    let dir = TempDir::new("py-write");
    let path = dir.path("from-python.safetensors");
    let script = r#"
import sys
import numpy as np
from safetensors.numpy import save_file
save_file({
    "w": np.array([[1.5, -2.0, 3.25]], dtype=np.float32),
    "assign": np.array([1, 2, 65535], dtype=np.uint16),
    "steps": np.array([[-(2**40)], [7]], dtype=np.int64),
}, sys.argv[1], metadata={"origin": "python"})
"#;
    run_python(script, &path);
    let ckpt = Checkpoint::read(&path).unwrap();
    assert_eq!(ckpt.f32("w", Some(&[1, 3])).unwrap(), &[1.5, -2.0, 3.25]);
    assert_eq!(ckpt.u16("assign", Some(&[3])).unwrap(), &[1, 2, 65535]);
    assert_eq!(ckpt.i64("steps", Some(&[2, 1])).unwrap(), &[-(1 << 40), 7]);
    assert_eq!(
        ckpt.get("w").unwrap().data(),
        &TensorData::F32(vec![1.5, -2.0, 3.25])
    );
    assert_eq!(ckpt.metadata["origin"], "python");
}
