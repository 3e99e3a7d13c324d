//! Token embeddings: a lookup table from integer ids to dense rows.

use modula_tensor::Backend;
use rand::Rng;

use crate::init::Init;
use crate::param::{Grads, ParamId, ParamStore};

/// An embedding table `[vocab, dim]`: id `i` maps to row `i`.
///
/// Its input is a list of ids rather than a tensor, so it is not a [`crate::Module`]; it has
/// the same explicit forward/backward shape nevertheless. The backward pass needs only the ids
/// (the lookup is linear in the table), so there is no cache.
///
/// ```
/// use modula_nn::{Embedding, Grads, Init, ParamStore};
/// use modula_cpu::Cpu;
/// use modula_tensor::Backend;
/// use rand::SeedableRng;
/// let cpu = Cpu::with_threads(1);
/// let mut params = ParamStore::new();
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
/// let emb = Embedding::new(&cpu, &mut params, "emb", 10, 4, Init::Normal { std: 0.1 }, &mut rng);
/// let ids = [3u32, 1, 3];
/// let y = emb.forward(&cpu, &params, &ids);
/// assert_eq!(cpu.shape(&y), [3, 4]);
/// let mut grads = Grads::new();
/// emb.backward(&cpu, &ids, &cpu.upload([3, 4], &[1.0; 12]), &mut grads);
/// // Id 3 appears twice, so its row receives two contributions.
/// assert_eq!(cpu.download(grads.get(emb.table).unwrap())?[12], 2.0);
/// # Ok::<(), modula_tensor::BackendError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Embedding {
    /// The table `[vocab, dim]`.
    pub table: ParamId,
    /// Number of ids.
    pub vocab: usize,
    /// Width of each embedding row.
    pub dim: usize,
}

impl Embedding {
    /// Registers `{name}.table`, initialised by `init` with fans `(vocab, dim)`; typical
    /// choices are [`Init::Glorot`] or `Init::Normal { std: 0.1 }`.
    ///
    /// # Panics
    /// If one of the parameter names is already registered in `params`.
    #[track_caller]
    pub fn new<B: Backend>(
        backend: &B,
        params: &mut ParamStore<B>,
        name: &str,
        vocab: usize,
        dim: usize,
        init: Init,
        rng: &mut impl Rng,
    ) -> Self {
        let w = init.sample(rng, vocab, dim, vocab * dim);
        let table = params.add(format!("{name}.table"), backend.upload([vocab, dim], &w));
        Embedding { table, vocab, dim }
    }

    /// Looks the ids up: row `i` of the output is row `ids[i]` of the table, shape
    /// `[ids.len(), dim]`.
    ///
    /// # Panics
    /// If an id is not below `vocab`.
    #[track_caller]
    pub fn forward<B: Backend>(&self, b: &B, params: &ParamStore<B>, ids: &[u32]) -> B::Tensor {
        self.check_ids(ids);
        b.gather_rows(params.get(self.table), ids)
    }

    /// Adds `dy [ids.len(), dim]` into the table's gradient, row `i` of `dy` into row `ids[i]`;
    /// repeated ids accumulate.
    ///
    /// # Panics
    /// If an id is not below `vocab` or `dy` is not `[ids.len(), dim]`.
    #[track_caller]
    pub fn backward<B: Backend>(&self, b: &B, ids: &[u32], dy: &B::Tensor, grads: &mut Grads<B>) {
        self.check_ids(ids);
        assert_eq!(
            b.shape(dy),
            [ids.len(), self.dim],
            "Embedding::backward: dy must be [ids.len(), dim]"
        );
        let dw = grads.entry(b, self.table, [self.vocab, self.dim]);
        b.scatter_add_rows(dw, dy, ids);
    }

    /// Checks ids here, so that the panic names the embedding rather than a backend kernel.
    #[track_caller]
    fn check_ids(&self, ids: &[u32]) {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.vocab) {
            panic!(
                "Embedding: id {bad} is out of range for a vocabulary of {}",
                self.vocab
            );
        }
    }
}
