//! Trains a modular network on the toy decomposition task and prints its test figures.
//!
//! `cargo run --release -p modula-em --example toy -- [em|reinforce|topk|dense] [seed] [steps]`

use modula_em::toy::ToyConfig;
use modula_em::{Algo, ModelConfig, StepOutcome, ToyExperiment, TrainConfig};
use modula_tensor::Cpu;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let algo = match args.get(1).map(String::as_str) {
        Some("reinforce") => Algo::Reinforce,
        Some("topk") => Algo::Topk,
        Some("dense") => Algo::Dense,
        _ => Algo::Em,
    };
    let seed = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut train = TrainConfig {
        algo,
        ..TrainConfig::default()
    };
    if let Some(steps) = args.get(3).and_then(|s| s.parse().ok()) {
        train.steps = steps;
    }
    let model = ModelConfig::default();
    let mut exp = ToyExperiment::new(Cpu::new(), &ToyConfig::default(), &model, &train, seed);
    println!("linear baseline mse {:.4}", exp.task.linear_baseline_mse());
    let start = std::time::Instant::now();
    for i in 0..train.steps {
        let out = exp.trainer.step().expect("training step");
        if i % 500 == 0 || i + 1 == train.steps {
            let eval = exp.evaluate().expect("evaluation");
            let changed = match out {
                StepOutcome::EStep(e) => format!("changed {:.3}", e.changed),
                StepOutcome::Gradient(s) => format!("nll {:.3} ctrl {:.3}", s.task_nll, s.ctrl_nll),
            };
            println!(
                "step {i:5} {changed} | test mse {:.4} purity {:.3} eff {:.2} usage {:?}",
                eval.test_mse, eval.purity, eval.effective_modules, eval.usage[0]
            );
        }
    }
    println!("{:.1}s", start.elapsed().as_secs_f64());
}
