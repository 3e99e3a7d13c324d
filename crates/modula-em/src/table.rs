//! The EM assignment table: the stored selection `a*` of every training example, per layer.

use modula_modular::Selection;
use rand::Rng;

/// Stored module assignments of one modular layer: `K` module indices (u16) per example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerAssignments {
    modules: usize,
    k: usize,
    data: Vec<u16>,
}

impl LayerAssignments {
    /// Number of modules `M`.
    pub fn modules(&self) -> usize {
        self.modules
    }

    /// Slots per example `K`.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The raw `[examples, K]` table.
    pub fn as_slice(&self) -> &[u16] {
        &self.data
    }
}

/// The assignment table `a*[n]` of generalized EM, keyed by each example's stable index, one
/// [`LayerAssignments`] per modular layer (or per time step's layer for sequences).
///
/// A table holds the keys `first..first + examples`: all of them (`first = 0`), or, on a rank
/// of a data-parallel run, the block of examples the rank owns ([`AssignmentTable::shard`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssignmentTable {
    first: usize,
    examples: usize,
    layers: Vec<LayerAssignments>,
}

impl AssignmentTable {
    /// A table for `examples` examples, each layer `(M, K)` drawn uniformly at random.
    ///
    /// # Panics
    /// If a layer has `M = 0`, `K = 0` or `M > 65536`.
    #[track_caller]
    pub fn random(examples: usize, shapes: &[(usize, usize)], rng: &mut impl Rng) -> Self {
        let mut table = AssignmentTable::empty(shapes);
        table.grow(examples, rng);
        table
    }

    /// A table with no examples yet, for layers of shapes `(M, K)`: examples are registered
    /// by [`AssignmentTable::grow`] as they arrive (a continual run's tasks, or a Python
    /// loop's batches).
    ///
    /// # Panics
    /// If a layer has `M = 0`, `K = 0` or `M > 65536`.
    #[track_caller]
    pub fn empty(shapes: &[(usize, usize)]) -> Self {
        let layers = shapes
            .iter()
            .map(|&(m, k)| {
                assert!(
                    m > 0 && k > 0 && m <= 1 << 16,
                    "layer shape (M={m}, K={k}) cannot be stored as u16"
                );
                LayerAssignments {
                    modules: m,
                    k,
                    data: Vec::new(),
                }
            })
            .collect();
        AssignmentTable {
            first: 0,
            examples: 0,
            layers,
        }
    }

    /// Registers `added` new examples after the existing ones, each layer's assignments drawn
    /// uniformly at random from `rng` (layer by layer, as [`AssignmentTable::random`] draws
    /// them). The existing examples keep their indices and assignments; the new ones take the
    /// next indices.
    pub fn grow(&mut self, added: usize, rng: &mut impl Rng) {
        for t in &mut self.layers {
            let m = t.modules;
            t.data
                .extend((0..added * t.k).map(|_| rng.random_range(0..m) as u16));
        }
        self.examples += added;
    }

    /// A table from raw per-layer data (for loading checkpoints).
    ///
    /// # Errors
    /// A message naming the layer whose data has the wrong length or an index `>= M`.
    pub fn from_raw(
        examples: usize,
        layers: Vec<(usize, usize, Vec<u16>)>,
    ) -> Result<Self, String> {
        let mut out = Vec::with_capacity(layers.len());
        for (l, (m, k, data)) in layers.into_iter().enumerate() {
            if data.len() != examples * k {
                return Err(format!(
                    "layer {l}: {} assignments, expected {examples} x {k}",
                    data.len()
                ));
            }
            if let Some(bad) = data.iter().find(|&&a| a as usize >= m) {
                return Err(format!(
                    "layer {l}: module index {bad} is not below M = {m}"
                ));
            }
            out.push(LayerAssignments {
                modules: m,
                k,
                data,
            });
        }
        Ok(AssignmentTable {
            first: 0,
            examples,
            layers: out,
        })
    }

    /// The table of the keys `keys` only (a data-parallel rank's block of examples), which
    /// keeps their assignments and their keys.
    ///
    /// # Panics
    /// If `keys` is not within the table's keys.
    #[track_caller]
    pub fn shard(&self, keys: std::ops::Range<usize>) -> Self {
        let own = self.keys();
        assert!(
            own.start <= keys.start && keys.end <= own.end,
            "keys {keys:?} are not within the table's {own:?}"
        );
        let rows = keys.start - own.start..keys.end - own.start;
        let layers = self
            .layers
            .iter()
            .map(|t| LayerAssignments {
                modules: t.modules,
                k: t.k,
                data: t.data[rows.start * t.k..rows.end * t.k].to_vec(),
            })
            .collect();
        AssignmentTable {
            first: keys.start,
            examples: keys.len(),
            layers,
        }
    }

    /// Number of examples.
    pub fn examples(&self) -> usize {
        self.examples
    }

    /// The keys the table holds: `0..examples`, or a data-parallel rank's block.
    pub fn keys(&self) -> std::ops::Range<usize> {
        self.first..self.first + self.examples
    }

    /// The per-layer tables.
    pub fn layers(&self) -> &[LayerAssignments] {
        &self.layers
    }

    /// The stored selection of layer `layer` for the examples `idx`.
    ///
    /// # Panics
    /// If an index is out of range.
    #[track_caller]
    pub fn selection(&self, layer: usize, idx: &[u32]) -> Selection {
        let t = &self.layers[layer];
        let picks = idx
            .iter()
            .flat_map(|&i| {
                let i = i as usize - self.first;
                t.data[i * t.k..(i + 1) * t.k].iter().map(|&a| a as u32)
            })
            .collect();
        Selection::new(t.k, picks)
    }

    /// Stores `row` of `selection` as the assignment of example `example` at `layer`.
    /// Returns whether it changed.
    ///
    /// # Panics
    /// If the shapes disagree or a module index is out of range.
    #[track_caller]
    pub fn store(&mut self, layer: usize, example: u32, selection: &Selection, row: usize) -> bool {
        let t = &mut self.layers[layer];
        assert_eq!(selection.k(), t.k, "selection has another K than the table");
        let i = example as usize - self.first;
        let slot = &mut t.data[i * t.k..(i + 1) * t.k];
        let mut changed = false;
        for (s, &m) in slot.iter_mut().zip(selection.row(row)) {
            assert!((m as usize) < t.modules, "module {m} out of range");
            changed |= *s != m as u16;
            *s = m as u16;
        }
        changed
    }
}
