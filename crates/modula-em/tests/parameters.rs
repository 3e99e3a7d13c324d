//! The parameter counts the run library's memory estimate uses, `MlpConfig::parameters` and
//! `LmModelConfig::parameters`, against the networks the constructors actually build, for
//! every algorithm and dense matching.

use modula_em::models::{LanguageModel, LmModelConfig, MlpConfig, ModularMlp};
use modula_em::{Algo, DenseMatch};
use modula_nn::ParamStore;
use modula_tensor::Reference;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const MATCHES: [DenseMatch; 2] = [DenseMatch::Compute, DenseMatch::Params];

#[test]
fn mlp_counts_equal_the_built_networks() {
    for (layers, modules, k) in [(1, 6, 1), (2, 5, 2), (3, 4, 3)] {
        let model = MlpConfig {
            modules,
            k,
            layers,
            hidden: 7,
            variance: 0.01,
        };
        for algo in Algo::ALL {
            for dense_match in MATCHES {
                let mut params = ParamStore::new();
                let mut rng = ChaCha8Rng::seed_from_u64(0);
                ModularMlp::new(
                    &Reference,
                    &mut params,
                    4,
                    2,
                    &model,
                    algo,
                    dense_match,
                    0.1,
                    &mut rng,
                );
                assert_eq!(
                    model.parameters(4, 2, algo, dense_match),
                    params.num_scalars(&Reference),
                    "{algo:?} {dense_match:?} with {layers} layers"
                );
            }
        }
    }
}

#[test]
fn language_model_counts_equal_the_built_networks() {
    let vocab = 50;
    for (modules, k) in [(5, 1), (4, 3)] {
        let model = LmModelConfig {
            embed: 6,
            hidden: 8,
            modules,
            k,
            ..LmModelConfig::default()
        };
        for algo in Algo::ALL {
            for dense_match in MATCHES {
                let recurrent = model.recurrent(algo, dense_match, 0.1, vocab);
                let mut params = ParamStore::new();
                let mut rng = ChaCha8Rng::seed_from_u64(0);
                LanguageModel::new(&Reference, &mut params, &model, recurrent, vocab, &mut rng);
                assert_eq!(
                    model.parameters(algo, dense_match, 0.1, vocab),
                    params.num_scalars(&Reference),
                    "{algo:?} {dense_match:?} at ({modules}, {k})"
                );
            }
        }
    }
}

#[test]
fn the_parameter_matched_width_is_the_smallest_that_reaches_the_modular_count() {
    for (modules, hidden) in [(1, 1), (5, 256), (15, 256), (3, 17)] {
        let model = LmModelConfig {
            modules,
            hidden,
            ..LmModelConfig::default()
        };
        let target = model.modular_params(10_000);
        let by_search = (1..)
            .find(|&h| model.dense_params(10_000, h) >= target)
            .unwrap();
        let resolved = model.recurrent(Algo::Dense, DenseMatch::Params, 0.1, 10_000);
        assert_eq!(
            format!("{resolved:?}"),
            format!("Dense {{ hidden: {by_search} }}")
        );
    }
}
