//! Parameters with stable ids, and the gradient store that mirrors them.

use modula_tensor::{Backend, ReduceOp, Shape, UnaryOp};

/// Stable identifier of a parameter: its position in the [`ParamStore`], fixed at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub(crate) u32);

impl ParamId {
    /// The id as an index into the store.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// All parameters of a network, owned in one place so that optimisers, checkpoints and
/// gradient checks see every tensor without the layers having to enumerate them.
///
/// Layers register their tensors at construction (receiving [`ParamId`]s) and look them up
/// during forward and backward. Names are unique and become the keys of saved checkpoints.
#[derive(Debug)]
pub struct ParamStore<B: Backend> {
    names: Vec<String>,
    values: Vec<B::Tensor>,
    /// Whether each parameter is derived: recomputed from others after every update (see
    /// [`ParamStore::mark_derived`]) rather than trained.
    derived: Vec<bool>,
}

impl<B: Backend> Default for ParamStore<B> {
    fn default() -> Self {
        ParamStore {
            names: Vec::new(),
            values: Vec::new(),
            derived: Vec::new(),
        }
    }
}

impl<B: Backend> ParamStore<B> {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a parameter and returns its id.
    ///
    /// # Panics
    /// If a parameter with the same name exists: two layers sharing a name is a programming
    /// error that would silently merge their checkpoints.
    #[track_caller]
    pub fn add(&mut self, name: impl Into<String>, value: B::Tensor) -> ParamId {
        let name = name.into();
        assert!(
            !self.names.contains(&name),
            "parameter name {name:?} is already registered"
        );
        let id = ParamId(u32::try_from(self.values.len()).expect("fewer than 2^32 parameters"));
        self.names.push(name);
        self.values.push(value);
        self.derived.push(false);
        id
    }

    /// Marks a parameter as derived: a function of other parameters that its owner recomputes
    /// after every update (for example the modules of a shared-base modular layer, each the
    /// base plus its own delta). Forward and backward passes read it like any parameter; its
    /// owner moves its gradient onto the parameters it derives from, and it is left out of
    /// [`ParamStore::num_scalars`], which counts what is trained.
    ///
    /// # Panics
    /// If the id belongs to another store.
    #[track_caller]
    pub fn mark_derived(&mut self, id: ParamId) {
        self.derived[id.index()] = true;
    }

    /// Whether a parameter is derived (see [`ParamStore::mark_derived`]).
    ///
    /// # Panics
    /// If the id belongs to another store.
    #[track_caller]
    pub fn is_derived(&self, id: ParamId) -> bool {
        self.derived[id.index()]
    }

    /// The tensor of a parameter.
    ///
    /// # Panics
    /// If the id belongs to another store.
    #[track_caller]
    pub fn get(&self, id: ParamId) -> &B::Tensor {
        &self.values[id.index()]
    }

    /// The tensor of a parameter, mutably.
    ///
    /// # Panics
    /// If the id belongs to another store.
    #[track_caller]
    pub fn get_mut(&mut self, id: ParamId) -> &mut B::Tensor {
        &mut self.values[id.index()]
    }

    /// The name a parameter was registered under.
    #[track_caller]
    pub fn name(&self, id: ParamId) -> &str {
        &self.names[id.index()]
    }

    /// Looks a parameter up by name.
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| ParamId(i as u32))
    }

    /// Number of parameter tensors.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the store holds no parameter.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Every id, in registration order.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> + use<B> {
        (0..self.values.len() as u32).map(ParamId)
    }

    /// Total number of trained scalar parameters (derived ones left out).
    pub fn num_scalars(&self, backend: &B) -> usize {
        self.values
            .iter()
            .zip(&self.derived)
            .filter(|(_, derived)| !**derived)
            .map(|(t, _)| backend.shape(t).iter().product::<usize>())
            .sum()
    }
}

/// Gradients keyed by [`ParamId`], accumulated by backward passes.
///
/// A slot is created (zeroed) the first time a backward pass touches it, so parameters that
/// took no part in a step have no gradient rather than a tensor of zeros.
///
/// [`Grads::reset`] starts a new step but keeps the buffers: a training loop that reuses one
/// `Grads` allocates its gradient tensors once, and products that overwrite a stale buffer
/// (see [`Grads::product_entry`]) skip zeroing it too.
#[derive(Debug)]
pub struct Grads<B: Backend> {
    slots: Vec<Option<Slot<B>>>,
}

/// A gradient buffer; `live` is false for a buffer kept from an earlier step, whose contents
/// are stale and must not be read as a gradient.
#[derive(Debug)]
struct Slot<B: Backend> {
    tensor: B::Tensor,
    live: bool,
}

impl<B: Backend> Default for Grads<B> {
    fn default() -> Self {
        Grads { slots: Vec::new() }
    }
}

impl<B: Backend> Grads<B> {
    /// An empty gradient store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The slot of `id` and whether it held a live gradient before this call; a missing slot
    /// (or one of another shape) gets a new buffer, whose contents the caller must set.
    fn slot(&mut self, backend: &B, id: ParamId, shape: Shape) -> (&mut Slot<B>, bool) {
        if self.slots.len() <= id.index() {
            self.slots.resize_with(id.index() + 1, || None);
        }
        let entry = &mut self.slots[id.index()];
        let was_live = entry.as_ref().is_some_and(|s| s.live);
        if entry
            .as_ref()
            .is_some_and(|s| !s.live && backend.shape(&s.tensor) != shape)
        {
            *entry = None;
        }
        let slot = entry.get_or_insert_with(|| Slot {
            tensor: backend.zeros(shape),
            live: false,
        });
        assert_eq!(
            backend.shape(&slot.tensor),
            shape,
            "gradient shape mismatch for parameter {}",
            id.index()
        );
        (slot, was_live)
    }

    /// The gradient slot of `id`, zeros of `shape` when it holds no gradient yet this step,
    /// for backward passes that accumulate into it directly (for example a matmul with
    /// `beta = 1`).
    ///
    /// # Panics
    /// If the slot exists with another shape.
    #[track_caller]
    pub fn entry(&mut self, backend: &B, id: ParamId, shape: Shape) -> &mut B::Tensor {
        let (slot, was_live) = self.slot(backend, id, shape);
        if !was_live {
            backend.fill(&mut slot.tensor, 0.0);
            slot.live = true;
        }
        &mut slot.tensor
    }

    /// Like [`Grads::entry`], for backward passes that write the gradient with a matrix
    /// product `C = op(A) op(B) + beta * C`: returns the slot and the `beta` to use, 0 when the
    /// slot holds no gradient yet this step (so the product neither reads nor needs zeros)
    /// and 1 when it accumulates.
    ///
    /// # Panics
    /// If the slot exists with another shape.
    #[track_caller]
    pub fn product_entry(
        &mut self,
        backend: &B,
        id: ParamId,
        shape: Shape,
    ) -> (&mut B::Tensor, f32) {
        let (slot, was_live) = self.slot(backend, id, shape);
        slot.live = true;
        (&mut slot.tensor, if was_live { 1.0 } else { 0.0 })
    }

    /// Adds `g` into the gradient of `id`.
    #[track_caller]
    pub fn accumulate(&mut self, backend: &B, id: ParamId, g: &B::Tensor) {
        let shape = backend.shape(g);
        backend.axpy(1.0, g, self.entry(backend, id, shape));
    }

    /// The gradient of `id`, if a backward pass produced one this step.
    pub fn get(&self, id: ParamId) -> Option<&B::Tensor> {
        self.slots
            .get(id.index())
            .and_then(Option::as_ref)
            .filter(|s| s.live)
            .map(|s| &s.tensor)
    }

    /// Drops the gradient of `id` from this step (keeping its buffer), for an owner that has
    /// moved it onto other parameters.
    pub fn discard(&mut self, id: ParamId) {
        if let Some(Some(slot)) = self.slots.get_mut(id.index()) {
            slot.live = false;
        }
    }

    /// Every present gradient with its id.
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &B::Tensor)> {
        self.slots.iter().enumerate().filter_map(|(i, g)| {
            g.as_ref()
                .filter(|s| s.live)
                .map(|s| (ParamId(i as u32), &s.tensor))
        })
    }

    /// Marks every gradient as absent for a new step, keeping the buffers for reuse.
    pub fn reset(&mut self) {
        self.slots.iter_mut().flatten().for_each(|s| s.live = false);
    }

    /// Removes every gradient and frees the buffers.
    pub fn clear(&mut self) {
        self.slots.clear();
    }

    /// Euclidean norm of all gradients together.
    ///
    /// # Errors
    /// If the device fails while reading the result.
    pub fn global_norm(&self, backend: &B) -> Result<f32, modula_tensor::BackendError> {
        let mut total = 0.0f64;
        for (_, g) in self.iter() {
            let sq = backend.unary(UnaryOp::Square, g);
            let per_row = backend.reduce_rows(ReduceOp::Sum, &sq);
            let sum = backend.reduce_cols(ReduceOp::Sum, &per_row);
            total += backend.download(&sum)?.first().copied().unwrap_or(0.0) as f64;
        }
        Ok(total.sqrt() as f32)
    }

    /// Rescales every gradient so that the global norm is at most `max_norm`, returning the
    /// norm before clipping (useful for logging).
    ///
    /// # Errors
    /// If the device fails while computing the norm.
    pub fn clip_norm(
        &mut self,
        backend: &B,
        max_norm: f32,
    ) -> Result<f32, modula_tensor::BackendError> {
        let norm = self.global_norm(backend)?;
        if norm > max_norm && norm.is_finite() {
            let s = max_norm / norm;
            for slot in self.slots.iter_mut().flatten().filter(|s| s.live) {
                backend.scale(&mut slot.tensor, s);
            }
        }
        Ok(norm)
    }
}
