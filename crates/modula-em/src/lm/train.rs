//! The language-modelling training loop: windows in stream order with the hidden state carried
//! across them, EM over token positions, the baselines, evaluation and checkpoints.

use modula_data::{Streams, Window};
use modula_modular::{ControllerOutput, Selection};
use modula_nn::{Adam, Checkpoint, Ctx, Grads, Optimizer, ParamStore, StoredTensor};
use modula_tensor::{Backend, BackendError};

use crate::algo::EStats;
use crate::config::Algo;
use crate::lm::config::LmTrainConfig;
use crate::lm::model::{Cell, LanguageModel, Routes, WindowOutput};
use crate::model::ControllerStats;
use crate::table::AssignmentTable;
use crate::trainer::{
    MetaReader, STREAM_TABLE, TrainError, common_meta, restore_state, save_state, stream,
};

/// What one training window measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WindowStats {
    /// Mean `-log p(w_{t+1} | .)` over the window's tokens (nats).
    pub nll: f64,
    /// Mean `-log p(a_t | .)` over the window's positions (0 without a controller).
    pub ctrl_nll: f64,
    /// Controller entropies.
    pub controller: Option<ControllerStats>,
    /// The E-step run on this window before its gradient step (EM only, every `e_every`).
    pub e_step: Option<EStats>,
    /// How many (position, slot) pairs each module served.
    pub usage: Vec<u64>,
    /// Tokens in the window.
    pub tokens: usize,
}

/// Greedy evaluation of a split.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LmEval {
    /// Mean negative log-likelihood per token (nats).
    pub nll: f64,
    /// `exp(nll)`.
    pub perplexity: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// How many (position, slot) pairs each module served (empty for a dense model).
    pub usage: Vec<u64>,
}

/// A language-modelling run in memory. Window `i` of the run draws its randomness (dropout,
/// sampled selections) from its own stream of the seed, so a restored run continues exactly.
#[derive(Debug)]
pub struct LmTrainer<B: Backend> {
    /// The backend.
    pub backend: B,
    /// The network.
    pub model: LanguageModel,
    /// Its parameters.
    pub params: ParamStore<B>,
    /// Adam.
    pub optimizer: Adam<B>,
    /// Hyper-parameters.
    pub config: LmTrainConfig,
    /// The run's seed.
    pub seed: u64,
    /// EM's assignments, one per training token position (its global index).
    pub table: Option<AssignmentTable>,
    /// REINFORCE's reward baseline (mean window log-likelihood per stream).
    pub baseline: Option<f64>,
    /// Windows trained so far, over all epochs.
    pub step: u64,
    /// Completed epochs.
    pub epoch: usize,
    /// The next window within the epoch.
    pub window: usize,
    train: Streams,
    state: B::Tensor,
    grads: Grads<B>,
}

/// Time-major ids of a window: `ids[t][i]` is stream `i`'s word at step `t`.
fn time_major(w: &Window, rows: &[u32]) -> Vec<Vec<u32>> {
    (0..w.steps)
        .map(|t| {
            rows.iter()
                .map(|&i| w.inputs[i as usize * w.steps + t])
                .collect()
        })
        .collect()
}

/// Time-major copy of a `[batch, steps]` row-major field of a window.
fn flatten_time_major<T: Copy>(w: &Window, field: &[T]) -> Vec<T> {
    (0..w.steps)
        .flat_map(|t| (0..w.batch).map(move |i| field[i * w.steps + t]))
        .collect()
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
}

impl<B: Backend> LmTrainer<B> {
    /// A new run over `train` (already arranged as `config.batch_size` streams). EM's table
    /// starts uniformly random from the seed.
    ///
    /// # Panics
    /// If the configuration is invalid (validate it first) or `train` has another batch size.
    #[track_caller]
    pub fn new(
        backend: B,
        model: LanguageModel,
        params: ParamStore<B>,
        config: LmTrainConfig,
        seed: u64,
        train: Streams,
    ) -> Self {
        config.validate().expect("validated configuration");
        assert_eq!(
            train.batch, config.batch_size,
            "streams must match train.batch_size"
        );
        let table = match (&model.cell, config.algo) {
            (Cell::Modular(c), Algo::Em) => Some(AssignmentTable::random(
                train.tokens.len(),
                &[(c.controller.modules, c.controller.k)],
                &mut stream(seed, STREAM_TABLE),
            )),
            _ => None,
        };
        let state = backend.zeros([train.batch, model.hidden]);
        LmTrainer {
            optimizer: Adam::new(config.lr),
            backend,
            model,
            params,
            config,
            seed,
            table,
            baseline: None,
            step: 0,
            epoch: 0,
            window: 0,
            train,
            state,
            grads: Grads::new(),
        }
    }

    /// The hidden state carried into the next window, `[batch, hidden]`.
    pub fn state(&self) -> &B::Tensor {
        &self.state
    }

    /// Windows per epoch.
    pub fn windows_per_epoch(&self) -> usize {
        self.train.window_count(self.config.bptt)
    }

    /// Whether every configured epoch is done.
    pub fn finished(&self) -> bool {
        self.epoch >= self.config.epochs
    }

    /// Training tokens seen so far.
    pub fn tokens_seen(&self) -> u64 {
        // Every window but an epoch's last has `bptt` steps, so the steps done this epoch are
        // `window * bptt`, capped by the `len - 1` steps an epoch has.
        let steps = self.train.len.saturating_sub(1);
        let per_epoch = (self.train.batch * steps) as u64;
        let within = (self.train.batch * (self.window * self.config.bptt).min(steps)) as u64;
        self.epoch as u64 * per_epoch + within
    }

    /// The next window, its time-major ids and targets, and its token positions (time-major).
    fn next_window(&self) -> (Window, Vec<Vec<u32>>, Vec<u32>, Vec<u32>) {
        let w = self.train.window(self.window, self.config.bptt);
        let rows: Vec<u32> = (0..w.batch as u32).collect();
        let ids = time_major(&w, &rows);
        let targets = flatten_time_major(&w, &w.targets);
        // Global token indices fit u32: the table is sized by the training split.
        let positions = flatten_time_major(&w, &w.indices)
            .into_iter()
            .map(|i| i as u32)
            .collect();
        (w, ids, targets, positions)
    }

    /// Whether the next window gets an E-step before its M-step: window `w` of epoch `e` does
    /// when `(w + e) % e_every == 0`. The offset moves with the epoch so that, whatever the
    /// number of windows per epoch, every window is E-stepped once in `e_every` epochs (with
    /// `step % e_every` an epoch of 830 windows and `e_every = 10` would E-step the same tenth
    /// of the corpus every epoch and leave the rest at its random initial assignment).
    pub fn e_step_due(&self) -> bool {
        (self.window + self.epoch).is_multiple_of(self.config.e_every)
    }

    /// EM's E-step on the next window (without training on it or moving on): per stream, the
    /// stored selection path and `samples - 1` paths sampled ancestrally through the window
    /// are scored by `sum_t log p(w_{t+1} | ., a) + log p(a_t | .)` with the current
    /// parameters from the carried state, and the best is stored (ties keep the stored one).
    /// Its draws come from the window's own stream of the seed.
    ///
    /// # Errors
    /// A device failure.
    ///
    /// # Panics
    /// If the run is not an EM run.
    pub fn e_step(&mut self) -> Result<EStats, TrainError> {
        let (w, ids, targets, positions) = self.next_window();
        let n = w.batch;
        let table = self.table.as_mut().expect("E-steps need an EM run's table");
        let stored: Vec<Selection> = (0..w.steps)
            .map(|t| table.selection(0, &positions[t * n..(t + 1) * n]))
            .collect();
        let samples = self.config.samples;
        let mut rng = stream(self.seed, self.step | (1 << 59));
        let (scores, chosen) = self.model.score_candidates(
            &self.backend,
            &self.params,
            &ids,
            &targets,
            &self.state,
            &stored,
            samples,
            &mut rng,
        )?;
        Ok(store_best(table, &scores, &chosen, &positions, n, samples))
    }

    /// Trains on the next window (for EM, after an E-step on it every `e_every` windows), then
    /// moves on; after the epoch's last window the state is reset and the epoch counter
    /// advances.
    ///
    /// # Errors
    /// [`TrainError::Diverged`] when the loss is not finite (parameters stay as they were),
    /// or a device failure.
    pub fn step(&mut self) -> Result<WindowStats, TrainError> {
        let step = self.step;
        let e_step = match &self.table {
            Some(_) if self.e_step_due() => Some(self.e_step()?),
            _ => None,
        };
        let (w, ids, targets, positions) = self.next_window();
        let n = w.batch;
        let mut rng = stream(self.seed, step);
        let mut ctx = Ctx {
            train: true,
            rng: stream(self.seed, step | (1 << 60)),
        };
        let b = &self.backend;
        // EM's M-step follows the stored assignments; REINFORCE samples; the others ignore
        // the routes.
        let stored: Vec<Selection> = match &self.table {
            Some(table) => (0..ids.len())
                .map(|t| table.selection(0, &positions[t * n..(t + 1) * n]))
                .collect(),
            None => Vec::new(),
        };
        let mut sample = |_: usize, c: &ControllerOutput<B>| c.sample(b, &mut rng);
        let mut greedy = |_: usize, c: &ControllerOutput<B>| c.greedy(b);
        let routes = match (&self.table, self.config.algo) {
            (Some(_), _) => Routes::Fixed(&stored),
            (None, Algo::Reinforce) => Routes::Chosen(&mut sample),
            _ => Routes::Chosen(&mut greedy),
        };
        let out = self.model.forward_window(
            b,
            &self.params,
            &ids,
            &targets,
            &self.state,
            routes,
            true,
            &mut ctx,
        )?;
        let stats = self.gradient_step(out, e_step, &w)?;
        self.advance();
        Ok(stats)
    }

    /// Backward, clipping and the optimiser step for a window's forward pass.
    fn gradient_step(
        &mut self,
        out: WindowOutput<B>,
        e_step: Option<EStats>,
        w: &Window,
    ) -> Result<WindowStats, TrainError> {
        let b = &self.backend;
        let tokens = out.nll.len();
        let n = w.batch;
        let scale = 1.0 / tokens as f32;
        let nll = mean(&out.nll);
        let ctrl_nll = -mean(&out.log_p);
        let loss = nll + ctrl_nll + out.importance;
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: self.step,
                value: loss,
            });
        }
        let d_logp: Vec<f32> = match self.config.algo {
            Algo::Em => vec![-scale; out.log_p.len()],
            Algo::Reinforce => {
                // Reward of stream i: its window log-likelihood, shared by every step's choice.
                let mut reward = vec![0.0f64; n];
                for (j, &l) in out.nll.iter().enumerate() {
                    reward[j % n] -= l as f64;
                }
                let mean_r = reward.iter().sum::<f64>() / n as f64;
                let base = *self.baseline.get_or_insert(mean_r);
                let decay = self.config.reinforce_decay as f64;
                self.baseline = Some(decay * base + (1.0 - decay) * mean_r);
                (0..out.log_p.len())
                    .map(|j| (-(reward[j % n] - base) * scale as f64) as f32)
                    .collect()
            }
            Algo::Topk | Algo::Dense => Vec::new(),
        };
        let mut usage = vec![0u64; self.model.modular_shape().map_or(0, |(m, _)| m)];
        for s in &out.selections {
            s.as_slice().iter().for_each(|&a| usage[a as usize] += 1);
        }
        let stats = WindowStats {
            nll,
            ctrl_nll,
            controller: out.stats,
            e_step,
            usage,
            tokens,
        };
        self.grads.reset();
        self.model
            .backward_window(b, &self.params, out.cache, scale, &d_logp, &mut self.grads)?;
        if self.config.grad_clip > 0.0 {
            self.grads.clip_norm(b, self.config.grad_clip)?;
        }
        self.optimizer.step(b, &mut self.params, &self.grads);
        self.state = out.h_last;
        Ok(stats)
    }

    fn advance(&mut self) {
        self.step += 1;
        self.window += 1;
        if self.window == self.windows_per_epoch() {
            self.window = 0;
            self.epoch += 1;
            self.state = self.backend.zeros([self.train.batch, self.model.hidden]);
        }
    }

    /// Greedy evaluation over `streams` (the state carried across its windows, starting at
    /// zero), stopping after `max_tokens` tokens when it is positive. `on_window` sees every
    /// window with its per-step selections (empty for a dense model), for introspection.
    ///
    /// # Errors
    /// Device failures.
    pub fn evaluate(
        &self,
        streams: &Streams,
        max_tokens: usize,
        on_window: &mut dyn FnMut(&Window, &[Selection]),
    ) -> Result<LmEval, BackendError> {
        let b = &self.backend;
        let mut state = b.zeros([streams.batch, self.model.hidden]);
        let rows: Vec<u32> = (0..streams.batch as u32).collect();
        let (mut total, mut tokens) = (0.0f64, 0usize);
        let mut usage = vec![0u64; self.model.modular_shape().map_or(0, |(m, _)| m)];
        for w in streams.windows(self.config.bptt) {
            if max_tokens > 0 && tokens >= max_tokens {
                break;
            }
            let ids = time_major(&w, &rows);
            let targets = flatten_time_major(&w, &w.targets);
            let mut route = |_: usize, c: &ControllerOutput<B>| c.greedy(b);
            let out = self.model.forward_window(
                b,
                &self.params,
                &ids,
                &targets,
                &state,
                Routes::Chosen(&mut route),
                false,
                &mut Ctx::eval(),
            )?;
            total += out.nll.iter().map(|&l| l as f64).sum::<f64>();
            tokens += out.nll.len();
            for s in &out.selections {
                s.as_slice().iter().for_each(|&a| usage[a as usize] += 1);
            }
            on_window(&w, &out.selections);
            state = out.h_last;
        }
        let nll = total / tokens.max(1) as f64;
        Ok(LmEval {
            nll,
            perplexity: nll.exp(),
            tokens,
            usage,
        })
    }

    /// Everything needed to resume: parameters, Adam's state, the assignment table, the
    /// carried hidden state and the counters.
    ///
    /// # Errors
    /// A device failure while downloading tensors.
    pub fn checkpoint(&self) -> Result<Checkpoint, TrainError> {
        let b = &self.backend;
        let mut ck = Checkpoint::new();
        save_state(
            &mut ck,
            b,
            &self.params,
            &self.optimizer,
            self.table.as_ref(),
        )?;
        let [r, c] = b.shape(&self.state);
        ck.insert(
            "lm.state",
            StoredTensor::f32(vec![r, c], b.download(&self.state)?),
        );
        let mut meta = common_meta(
            self.step,
            self.optimizer.steps(),
            self.seed,
            self.config.algo,
            self.baseline,
        );
        meta.insert("epoch".into(), self.epoch.to_string());
        meta.insert("window".into(), self.window.to_string());
        ck.metadata.extend(meta);
        Ok(ck)
    }

    /// Restores the state saved by [`LmTrainer::checkpoint`].
    ///
    /// # Errors
    /// [`TrainError::Mismatch`] when the checkpoint is for another algorithm, model or data,
    /// or a [`modula_nn::CheckpointError`] naming a missing or malformed tensor.
    pub fn restore(&mut self, ck: &Checkpoint) -> Result<(), TrainError> {
        let meta = MetaReader::new(ck, self.config.algo)?;
        let (step, adam_t) = (meta.number("step")?, meta.number("adam_t")?);
        let (epoch, window) = (meta.number("epoch")?, meta.number("window")?);
        if window as usize >= self.windows_per_epoch() {
            return Err(meta.mismatch(format!(
                "window {window} is past the {} windows of an epoch",
                self.windows_per_epoch()
            )));
        }
        let baseline = meta.baseline()?;
        let b = &self.backend;
        restore_state(
            &meta,
            b,
            &mut self.params,
            &mut self.optimizer,
            &mut self.table,
            adam_t,
        )?;
        let shape = b.shape(&self.state);
        self.state = b.upload(shape, ck.f32("lm.state", Some(&shape))?);
        self.baseline = baseline;
        self.step = step;
        self.epoch = epoch as usize;
        self.window = window as usize;
        Ok(())
    }
}

/// EM's choice per stream: the candidate path with the highest score, ties keeping the stored
/// one (candidate 0), written into the table for every position of the window.
fn store_best(
    table: &mut AssignmentTable,
    scores: &[f64],
    chosen: &[Selection],
    positions: &[u32],
    n: usize,
    samples: usize,
) -> EStats {
    let (mut changed, mut before, mut after) = (0usize, 0.0, 0.0);
    for i in 0..n {
        let mut best = i;
        for s in 1..samples {
            // Strictly better only: ties keep the stored path.
            if scores[s * n + i] > scores[best] {
                best = s * n + i;
            }
        }
        before += scores[i];
        after += scores[best];
        for (t, sel) in chosen.iter().enumerate() {
            changed += table.store(0, positions[t * n + i], sel, best) as usize;
        }
    }
    EStats {
        changed: changed as f64 / positions.len().max(1) as f64,
        score_before: before / n as f64,
        score_after: after / n as f64,
    }
}
