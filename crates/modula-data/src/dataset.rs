//! The indexed data set abstraction, labelled image sets, and the seeded shuffling batcher.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// A finite, ordered collection whose items carry a stable global index.
///
/// The global index of an item never depends on shuffling or batching: it is fixed when the
/// data set is loaded (training items first, then validation, then test), so that per-item
/// state such as EM's module-assignment table can be keyed by it across epochs and runs.
pub trait Dataset {
    /// One item, borrowed from the data set.
    type Item<'a>
    where
        Self: 'a;

    /// Number of items.
    fn len(&self) -> usize;

    /// Whether the data set has no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The item at `position` (0-based, in load order).
    ///
    /// # Panics
    /// If `position >= self.len()`.
    fn get(&self, position: usize) -> Self::Item<'_>;

    /// The stable global index of the item at `position`.
    ///
    /// # Panics
    /// If `position >= self.len()`.
    fn global_index(&self, position: usize) -> u64;
}

/// One labelled image, borrowed from an [`ImageSet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image<'a> {
    /// Stable global index (see [`Dataset`]).
    pub index: u64,
    /// Pixels in height-width-channel order (channels fastest), as stored in the file.
    pub pixels: &'a [u8],
    /// Class label, below the set's class count.
    pub label: u8,
}

/// A split of an image data set: `len` images of `height x width x channels` bytes each.
///
/// Pixels are kept as bytes in NHWC order (one image per row, channels fastest), the layout
/// every modula tensor uses for images, so that a batch is one conversion to `f32` away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSet {
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Channels per pixel (1 for MNIST, 3 for CIFAR-10).
    pub channels: usize,
    /// Number of classes; every label is below it.
    pub classes: usize,
    /// Global index of the first image.
    pub first_index: u64,
    /// All pixels, `len * height * width * channels` bytes.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
}

impl ImageSet {
    /// Bytes per image.
    pub fn image_bytes(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Number of images per class, indexed by label.
    pub fn per_class(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &label in &self.labels {
            counts[usize::from(label)] += 1;
        }
        counts
    }

    /// Copies the images at `positions` into a host-side batch, scaling pixels to `[0, 1]`.
    ///
    /// # Panics
    /// If a position is out of range.
    #[track_caller]
    pub fn batch(&self, positions: &[usize]) -> ImageBatch {
        let size = self.image_bytes();
        let mut pixels = Vec::with_capacity(positions.len() * size);
        let mut labels = Vec::with_capacity(positions.len());
        let mut indices = Vec::with_capacity(positions.len());
        for &p in positions {
            let image = self.get(p);
            pixels.extend(image.pixels.iter().map(|&b| f32::from(b) / 255.0));
            labels.push(u32::from(image.label));
            indices.push(image.index);
        }
        ImageBatch {
            indices,
            pixels,
            labels,
            height: self.height,
            width: self.width,
            channels: self.channels,
        }
    }
}

impl Dataset for ImageSet {
    type Item<'a> = Image<'a>;

    fn len(&self) -> usize {
        self.labels.len()
    }

    #[track_caller]
    fn get(&self, position: usize) -> Image<'_> {
        assert!(
            position < self.len(),
            "image position {position} out of range for a set of {}",
            self.len()
        );
        let size = self.image_bytes();
        Image {
            index: self.first_index + position as u64,
            pixels: &self.pixels[position * size..(position + 1) * size],
            label: self.labels[position],
        }
    }

    #[track_caller]
    fn global_index(&self, position: usize) -> u64 {
        assert!(
            position < self.len(),
            "image position {position} out of range for a set of {}",
            self.len()
        );
        self.first_index + position as u64
    }
}

/// An image data set: a training split and, where the source has one, a test split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageDataset {
    /// The training split; its global indices start at 0.
    pub train: ImageSet,
    /// The test split, if the source has one; its global indices follow the training split's.
    pub test: Option<ImageSet>,
    /// Class names, in label order.
    pub class_names: Vec<String>,
}

/// A host-side batch of images, ready to upload as a `[batch, height * width * channels]`
/// row-major matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageBatch {
    /// Global index of each image, in batch order.
    pub indices: Vec<u64>,
    /// Pixels scaled to `[0, 1]`, one NHWC image per row.
    pub pixels: Vec<f32>,
    /// Class label of each image.
    pub labels: Vec<u32>,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Channels per pixel.
    pub channels: usize,
}

/// Splits `0..len` into batches in an order shuffled by a seeded ChaCha8 generator.
///
/// Epoch `e` uses stream `e` of the generator seeded with `seed`, so any epoch's order can be
/// reproduced on its own, without replaying earlier epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShuffleBatcher {
    len: usize,
    batch_size: usize,
    seed: u64,
    drop_last: bool,
}

impl ShuffleBatcher {
    /// A batcher over `len` positions with batches of `batch_size`; the last, shorter batch is
    /// kept unless `drop_last`.
    ///
    /// # Panics
    /// If `batch_size` is zero.
    #[track_caller]
    pub fn new(len: usize, batch_size: usize, seed: u64, drop_last: bool) -> ShuffleBatcher {
        assert!(batch_size > 0, "batch size must be positive");
        ShuffleBatcher {
            len,
            batch_size,
            seed,
            drop_last,
        }
    }

    /// The shuffled order of all positions in `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        let mut order: Vec<usize> = (0..self.len).collect();
        order.shuffle(&mut rng);
        order
    }

    /// The batches of `epoch`: positions into the data set, each batch `batch_size` long
    /// except possibly the last.
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        self.order(epoch)
            .chunks(self.batch_size)
            .filter(|chunk| !self.drop_last || chunk.len() == self.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// Number of batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.len / self.batch_size
        } else {
            self.len.div_ceil(self.batch_size)
        }
    }
}
