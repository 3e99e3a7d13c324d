//! Selections (which K modules each row uses) and the routing plan built from them.

/// A selection of modules: `K` module indices (one per slot) for each of `n` rows, stored
/// row-major as `[n, K]`.
///
/// Slots are drawn with replacement, so a row may name the same module twice; the layer then
/// evaluates and adds that module once (see [`Routing`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Selection {
    k: usize,
    modules: Vec<u32>,
}

impl Selection {
    /// A selection from row-major `[n, k]` module indices.
    ///
    /// # Panics
    /// If `k == 0` or `modules.len()` is not a multiple of `k`.
    #[track_caller]
    pub fn new(k: usize, modules: Vec<u32>) -> Self {
        assert!(k > 0, "a selection needs at least one slot");
        assert!(
            modules.len().is_multiple_of(k),
            "selection of {} indices is not rows of {k} slots",
            modules.len()
        );
        Selection { k, modules }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.modules.len() / self.k
    }

    /// Slots per row (`K`).
    pub fn k(&self) -> usize {
        self.k
    }

    /// The module indices of row `i`.
    #[track_caller]
    pub fn row(&self, i: usize) -> &[u32] {
        &self.modules[i * self.k..(i + 1) * self.k]
    }

    /// All indices, row-major.
    pub fn as_slice(&self) -> &[u32] {
        &self.modules
    }

    /// Concatenates selections with the same `K` (for example one per time step).
    ///
    /// # Panics
    /// If the selections have different `K`.
    #[track_caller]
    pub fn concat(parts: &[&Selection]) -> Selection {
        let k = parts.first().map_or(1, |p| p.k);
        assert!(
            parts.iter().all(|p| p.k == k),
            "concatenated selections must share K"
        );
        Selection {
            k,
            modules: parts
                .iter()
                .flat_map(|p| p.modules.iter().copied())
                .collect(),
        }
    }
}

/// The dispatch plan for one selection: the distinct (row, module) pairs counting-sorted by
/// module, so that every module's rows are one contiguous block.
///
/// Built on the host in `O(n K + M)`; the same plan serves the forward and the backward pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    modules: usize,
    rows: usize,
    k: usize,
    /// Start of each module's block among the sorted pairs; `M + 1` entries.
    pub offsets: Vec<u32>,
    /// Input row of each sorted pair.
    pub pair_rows: Vec<u32>,
    /// Module of each sorted pair.
    pub pair_modules: Vec<u32>,
    /// Index `row * K + slot` of the first slot that chose the pair's module (where its gate
    /// weight lives).
    pub pair_slots: Vec<u32>,
    /// For each row, where its pairs sit among the sorted pairs: `row_pos[row_ptr[i]..row_ptr[i+1]]`.
    pub row_pos: Vec<u32>,
    /// Row pointers into `row_pos`; `n + 1` entries.
    pub row_ptr: Vec<u32>,
}

impl Routing {
    /// Counting-sorts the distinct pairs of `selection` by module (stable in row order).
    ///
    /// # Panics
    /// If a module index is `>= modules`.
    #[track_caller]
    pub fn new(selection: &Selection, modules: usize) -> Self {
        let (n, k) = (selection.rows(), selection.k());
        if let Some(&bad) = selection
            .as_slice()
            .iter()
            .find(|&&m| m as usize >= modules)
        {
            panic!("selection names module {bad}, but the layer has {modules} modules");
        }
        // A slot is live when no earlier slot of its row chose the same module.
        let live = |i: usize, s: usize| !selection.row(i)[..s].contains(&selection.row(i)[s]);
        let mut counts = vec![0u32; modules];
        for i in 0..n {
            for s in 0..k {
                if live(i, s) {
                    counts[selection.row(i)[s] as usize] += 1;
                }
            }
        }
        let mut offsets = Vec::with_capacity(modules + 1);
        offsets.push(0u32);
        for c in &counts {
            offsets.push(offsets.last().expect("non-empty") + c);
        }
        let pairs = *offsets.last().expect("non-empty") as usize;
        let mut cursor: Vec<u32> = offsets[..modules].to_vec();
        let (mut pair_rows, mut pair_modules, mut pair_slots) =
            (vec![0; pairs], vec![0; pairs], vec![0; pairs]);
        let (mut row_pos, mut row_ptr) = (Vec::with_capacity(pairs), Vec::with_capacity(n + 1));
        row_ptr.push(0u32);
        for i in 0..n {
            for s in 0..k {
                if live(i, s) {
                    let m = selection.row(i)[s] as usize;
                    let at = cursor[m] as usize;
                    cursor[m] += 1;
                    pair_rows[at] = i as u32;
                    pair_modules[at] = m as u32;
                    pair_slots[at] = (i * k + s) as u32;
                    row_pos.push(at as u32);
                }
            }
            row_ptr.push(row_pos.len() as u32);
        }
        Routing {
            modules,
            rows: n,
            k,
            offsets,
            pair_rows,
            pair_modules,
            pair_slots,
            row_pos,
            row_ptr,
        }
    }

    /// Number of modules `M`.
    pub fn modules(&self) -> usize {
        self.modules
    }

    /// Number of input rows `n`.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Slots per row `K`.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of distinct (row, module) pairs, the rows actually computed.
    pub fn pairs(&self) -> usize {
        self.pair_rows.len()
    }

    /// Rows routed to module `m`.
    pub fn count(&self, m: usize) -> usize {
        (self.offsets[m + 1] - self.offsets[m]) as usize
    }

    /// The same plan with every pair expanded to `factor` consecutive rows, for modules
    /// whose input is several rows per example (convolution patches).
    pub(crate) fn expanded_offsets(&self, factor: usize) -> Vec<u32> {
        self.offsets.iter().map(|&o| o * factor as u32).collect()
    }
}
