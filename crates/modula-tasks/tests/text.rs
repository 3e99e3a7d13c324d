//! The `text` task: any plain-text corpus, as a directory of `train.txt`, `valid.txt` and
//! `test.txt` or as one file split by line fractions, with a capped vocabulary.

use std::fs;
use std::path::Path;

use modula_cpu::Cpu;
use modula_em::Algo;
use modula_em::models::LmModelConfig;
use modula_tasks::{LmData, LmTask, LmTrainConfig, TextConfig};

/// `lines` lines of words drawn from `words` distinct words, by a fixed recurrence.
fn corpus(lines: usize, words: usize) -> String {
    let mut w = 1usize;
    let mut text = String::new();
    for _ in 0..lines {
        for _ in 0..8 {
            w = (w * 7919 + 13) % words;
            text.push_str(&format!("w{w} "));
        }
        text.push('\n');
    }
    text
}

fn small_model() -> LmModelConfig {
    LmModelConfig {
        embed: 4,
        hidden: 4,
        modules: 2,
        k: 1,
        dropout: 0.0,
        ..LmModelConfig::default()
    }
}

fn small_train() -> LmTrainConfig {
    LmTrainConfig {
        algo: Algo::Em,
        bptt: 5,
        batch_size: 2,
        epochs: 1,
        ..LmTrainConfig::default()
    }
}

/// Loads `cfg`, trains one epoch and evaluates the test split: the pipeline end to end.
fn train_one_epoch(cfg: &TextConfig) -> (LmData, f64) {
    cfg.validate().unwrap();
    let data = LmData::new(cfg.load().unwrap(), &small_train()).unwrap();
    let mut t = LmTask::trainer(
        Cpu::with_threads(1),
        data.clone(),
        &small_model(),
        &small_train(),
        0,
    );
    while t.task.epoch < 1 {
        t.step().unwrap();
    }
    let eval = t
        .task
        .evaluate(
            &t.backend,
            &t.model,
            &t.params,
            &t.task.data.test,
            0,
            &mut |_, _| {},
        )
        .unwrap();
    (data, eval.perplexity)
}

#[test]
fn a_directory_of_three_files_is_one_corpus_with_the_training_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| fs::write(dir.path().join(name), text).unwrap();
    write("train.txt", &corpus(40, 30));
    write("valid.txt", &corpus(5, 30));
    // A word never seen in training becomes <unk> instead of growing the softmax.
    write("test.txt", &(corpus(5, 30) + "unseen words here\n"));
    let cfg = TextConfig {
        path: dir.path().to_path_buf(),
        ..TextConfig::default()
    };
    let (data, ppl) = train_one_epoch(&cfg);
    assert!(data.vocab.len() <= 32, "{} words", data.vocab.len());
    assert!(data.vocab.id("unseen").is_none());
    assert!(data.vocab.id("<unk>").is_some());
    // 9 tokens a line with <eos>, cut to a whole number of tokens per stream (two streams).
    assert_eq!(data.valid.tokens.len(), 5 * 9 / 2 * 2);
    assert_eq!(data.test.tokens.len(), (5 * 9 + 4) / 2 * 2);
    assert!(ppl.is_finite() && ppl > 1.0, "perplexity {ppl}");
}

#[test]
fn one_file_is_split_by_fraction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.txt");
    fs::write(&path, corpus(100, 50)).unwrap();
    let cfg = TextConfig {
        path: path.clone(),
        valid_fraction: 0.2,
        test_fraction: 0.1,
        ..TextConfig::default()
    };
    let (data, ppl) = train_one_epoch(&cfg);
    // 70 training lines, 20 validation, 10 test; 9 tokens a line with <eos>.
    assert_eq!(data.valid.tokens.len(), 20 * 9 / 2 * 2);
    assert_eq!(data.test.tokens.len(), 10 * 9 / 2 * 2);
    assert!(ppl.is_finite(), "perplexity {ppl}");
}

#[test]
fn the_vocabulary_is_capped_at_ten_thousand_words_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.txt");
    // 12,000 distinct words: the default keeps 10,000, counting <eos> and <unk>.
    let text: String = (0..1500)
        .map(|l| {
            (0..8)
                .map(|i| format!("x{} ", l * 8 + i))
                .collect::<String>()
                + "\n"
        })
        .collect();
    fs::write(&path, text).unwrap();
    let cfg = TextConfig {
        path,
        valid_fraction: 0.0,
        test_fraction: 0.0,
        ..TextConfig::default()
    };
    assert_eq!(cfg.max_vocab, 10_000);
    let corpus = cfg.load().unwrap();
    assert_eq!(corpus.vocab.len(), 10_000);
}

#[test]
fn impossible_text_settings_name_their_field() {
    let base = TextConfig {
        path: Path::new("corpus.txt").to_path_buf(),
        ..TextConfig::default()
    };
    let cases = [
        (
            TextConfig {
                path: Default::default(),
                ..base.clone()
            },
            "task.path",
        ),
        (
            TextConfig {
                max_vocab: 1,
                ..base.clone()
            },
            "task.max_vocab",
        ),
        (
            TextConfig {
                valid_fraction: 0.6,
                test_fraction: 0.5,
                ..base.clone()
            },
            "task.test_fraction",
        ),
        (
            TextConfig {
                valid_fraction: f64::NAN,
                ..base.clone()
            },
            "task.valid_fraction",
        ),
    ];
    for (cfg, field) in cases {
        assert_eq!(cfg.validate().unwrap_err().field, field);
    }
    assert!(base.validate().is_ok());
}
