//! Configuration checks of the toy task: impossible values name their field, unknown keys are
//! rejected.

use modula_em::Algo;
use modula_em::models::MlpConfig;
use modula_tasks::ToyTrainConfig;

#[test]
fn configurations_with_impossible_values_name_the_field() {
    let cases: Vec<(MlpConfig, ToyTrainConfig, &str)> = vec![
        (
            MlpConfig {
                modules: 2,
                k: 3,
                ..MlpConfig::default()
            },
            ToyTrainConfig::default(),
            "model.k",
        ),
        (
            MlpConfig {
                k: 0,
                ..MlpConfig::default()
            },
            ToyTrainConfig::default(),
            "model.k",
        ),
        (
            MlpConfig {
                modules: 0,
                ..MlpConfig::default()
            },
            ToyTrainConfig::default(),
            "model.modules",
        ),
        (
            MlpConfig {
                variance: -1.0,
                ..MlpConfig::default()
            },
            ToyTrainConfig::default(),
            "model.variance",
        ),
        (
            MlpConfig::default(),
            ToyTrainConfig {
                samples: 0,
                ..ToyTrainConfig::default()
            },
            "train.samples",
        ),
        (
            MlpConfig::default(),
            ToyTrainConfig {
                lr: -0.1,
                ..ToyTrainConfig::default()
            },
            "train.lr",
        ),
        (
            MlpConfig::default(),
            ToyTrainConfig {
                lr: f32::NAN,
                ..ToyTrainConfig::default()
            },
            "train.lr",
        ),
        (
            MlpConfig::default(),
            ToyTrainConfig {
                e_every: 0,
                ..ToyTrainConfig::default()
            },
            "train.e_every",
        ),
        (
            MlpConfig::default(),
            ToyTrainConfig {
                reinforce_decay: 1.0,
                ..ToyTrainConfig::default()
            },
            "train.reinforce_decay",
        ),
    ];
    for (model, train, field) in cases {
        let err = model.validate().and_then(|_| train.validate()).unwrap_err();
        assert_eq!(err.field, field);
        assert!(err.to_string().contains(field), "{err}");
    }
    assert!(
        MlpConfig::default().validate().is_ok() && ToyTrainConfig::default().validate().is_ok()
    );
    assert_eq!(ToyTrainConfig::default().algo, Algo::Em);
}

#[test]
fn unknown_configuration_keys_are_rejected() {
    let err = toml::from_str::<ToyTrainConfig>("stepz = 5")
        .unwrap_err()
        .to_string();
    assert!(err.contains("stepz"), "{err}");
    let ok: ToyTrainConfig = toml::from_str("steps = 5\nalgo = \"reinforce\"").unwrap();
    assert_eq!((ok.steps, ok.algo), (5, Algo::Reinforce));
}
