//! The divergence guard: besides a loss that is NaN or infinite, a finite loss far above the
//! run's initial loss stops training. The initial loss is the first gradient step's; the guard
//! fires when a later step's loss exceeds `factor x max(|initial|, 1)`, `factor` being
//! `train.divergence_factor` (0 turns the check off). The `max(.., 1)` keeps the threshold
//! meaningful for a loss that starts near zero or below it (a Gaussian NLL can be negative).

use crate::error::TrainError;

/// The default `train.divergence_factor`: the loss may rise to ten times the initial loss's
/// magnitude. A language model starts at about `ln V` nats per token plus its controller's
/// `K ln M` (9.2 to 17.3 on Penn Treebank), so the guard fires above 92 to 173 nats; the worst
/// episode of the Penn Treebank experiment, REINFORCE (15, 3)'s validation perplexity going
/// from 334 to 796, is a loss of about 6.7 nats plus at most 8.1 of the controller's. The toy
/// task's default and shipped configurations train to the end under it with every algorithm,
/// while a learning rate of 1e10 reaches a loss of 10^22 at step 2.
pub const DEFAULT_DIVERGENCE_FACTOR: f32 = 10.0;

/// The loss the guard compares against.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reference {
    /// Not seen yet: the next gradient step's loss becomes the reference.
    Pending,
    /// The run's initial loss.
    Initial(f64),
    /// Unknown (a checkpoint written before the guard existed): only NaN and infinity stop
    /// the run.
    Unknown,
}

/// The guard's state for one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DivergenceGuard {
    /// How many times the initial loss's magnitude a loss may reach; 0 turns the check off.
    pub factor: f32,
    /// The initial loss.
    pub reference: Reference,
}

impl DivergenceGuard {
    /// A guard for a new run.
    pub fn new(factor: f32) -> Self {
        DivergenceGuard {
            factor,
            reference: Reference::Pending,
        }
    }

    /// The loss above which the guard fires, once it has its reference.
    pub fn limit(&self) -> Option<f64> {
        match self.reference {
            Reference::Initial(initial) if self.factor > 0.0 => {
                Some(f64::from(self.factor) * initial.abs().max(1.0))
            }
            _ => None,
        }
    }

    /// Checks the loss of gradient step `step`, taking the first finite loss as the
    /// reference.
    ///
    /// # Errors
    /// [`TrainError::Diverged`] for a NaN or infinite loss, [`TrainError::LossExploded`] for
    /// one above [`DivergenceGuard::limit`].
    pub fn check(&mut self, step: u64, loss: f64) -> Result<(), TrainError> {
        if !loss.is_finite() {
            return Err(TrainError::Diverged { step, value: loss });
        }
        if let (Some(limit), Reference::Initial(initial)) = (self.limit(), self.reference)
            && loss > limit
        {
            return Err(TrainError::LossExploded {
                step,
                value: loss,
                initial,
                factor: self.factor,
            });
        }
        if self.reference == Reference::Pending {
            self.reference = Reference::Initial(loss);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `losses` to a default guard, returning the first step it stops.
    fn first_stop(losses: &[f64]) -> Option<u64> {
        let mut guard = DivergenceGuard::new(DEFAULT_DIVERGENCE_FACTOR);
        (0..)
            .zip(losses)
            .find_map(|(s, &l)| guard.check(s, l).err().map(|_| s))
    }

    #[test]
    fn a_reinforce_transient_passes_and_a_runaway_loss_stops() {
        // REINFORCE (15, 3) on Penn Treebank: it starts at ln 10000 nats of words plus up to
        // 3 ln 15 of the controller, trains down to about ln 330, jumps to ln 800 (validation
        // perplexity 334 -> 796 early in epoch 3) and recovers to ln 240.
        let ctrl = 3.0 * 15f64.ln();
        let mut losses = vec![10_000f64.ln() + ctrl];
        for ppl in [
            2000.0, 900.0, 500.0, 330.0, 800.0, 790.0, 500.0, 300.0, 240.0,
        ] {
            losses.extend(std::iter::repeat_n(f64::ln(ppl) + ctrl, 50));
        }
        assert_eq!(first_stop(&losses), None);
        // The same run with an extreme batch (a loss three times the start) still passes.
        losses.push(3.0 * losses[0]);
        assert_eq!(first_stop(&losses), None);
        // A toy run whose learning rate is far too high: the loss explodes, finitely.
        assert_eq!(first_stop(&[212.0, 180.0, 1.5e3, 2.8e17]), Some(3));
        assert_eq!(first_stop(&[212.0, f64::NAN]), Some(1));
    }

    #[test]
    fn the_threshold_scales_with_the_initial_magnitude_and_0_turns_it_off() {
        let mut guard = DivergenceGuard::new(10.0);
        guard.check(0, -0.5).unwrap();
        assert_eq!(guard.limit(), Some(10.0));
        assert!(matches!(
            guard.check(1, 10.5),
            Err(TrainError::LossExploded { step: 1, .. })
        ));
        let mut off = DivergenceGuard::new(0.0);
        off.check(0, 1.0).unwrap();
        off.check(1, 1e30).unwrap();
        let mut unknown = DivergenceGuard {
            factor: 10.0,
            reference: Reference::Unknown,
        };
        unknown.check(7, 1e30).unwrap();
        assert!(unknown.check(8, f64::INFINITY).is_err());
    }
}
