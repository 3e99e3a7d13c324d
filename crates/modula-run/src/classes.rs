//! Word classes whose routing `modula inspect` measures besides single words: sentence starts
//! (`<eos>`), numbers (`N`, Penn Treebank's number token), money (`$`), pronouns and modal
//! verbs. A module specialises in a class when the class is over-represented among the words
//! at its positions (or just before them): its lift `P(class | module) / P(class)`.

use serde::Serialize;

/// A named set of words.
#[derive(Clone, Copy, Debug)]
pub struct WordClass {
    /// The class's name in reports.
    pub name: &'static str,
    /// Its words, as the corpus spells them (Penn Treebank's tokens: `ca` and `wo` are the
    /// first halves of `can't` and `won't`).
    pub words: &'static [&'static str],
}

/// The classes `modula inspect` reports (the lists are documented in docs/cli.md).
pub const CLASSES: [WordClass; 5] = [
    WordClass {
        name: "sentence end <eos>",
        words: &["<eos>"],
    },
    WordClass {
        name: "number N",
        words: &["N"],
    },
    WordClass {
        name: "money $",
        words: &["$"],
    },
    WordClass {
        name: "pronoun",
        words: &[
            "i", "you", "he", "she", "it", "we", "they", "me", "him", "her", "us", "them", "his",
            "its", "our", "their", "my", "your",
        ],
    },
    WordClass {
        name: "modal verb",
        words: &[
            "can", "could", "may", "might", "must", "shall", "should", "will", "would", "'ll",
            "'d", "ca", "wo",
        ],
    },
];

/// A class's lift for one module.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassLift {
    /// The class.
    pub class: String,
    /// `P(class | module) / P(class)` (0 when the class never occurs).
    pub lift: f64,
    /// Fraction of the class's positions routed to the module.
    pub share: f64,
    /// The module's positions whose word is in the class.
    pub count: u64,
}

/// Each class's lift for module `m`, from word counts over all positions (`total[word]`) and
/// over the module's positions (`module[word]`), with `words` the vocabulary.
pub fn class_lifts(total: &[u32], module: &[u32], words: &[String]) -> Vec<ClassLift> {
    let n: f64 = total.iter().map(|&c| c as f64).sum();
    let n_m: f64 = module.iter().map(|&c| c as f64).sum();
    CLASSES
        .iter()
        .map(|class| {
            let members: Vec<usize> = words
                .iter()
                .enumerate()
                .filter(|(_, w)| class.words.contains(&w.as_str()))
                .map(|(i, _)| i)
                .collect();
            let in_class: u64 = members.iter().map(|&w| total[w] as u64).sum();
            let count: u64 = members.iter().map(|&w| module[w] as u64).sum();
            let (p_class, p_given) = (in_class as f64 / n.max(1.0), count as f64 / n_m.max(1.0));
            ClassLift {
                class: class.name.to_string(),
                lift: if p_class > 0.0 {
                    p_given / p_class
                } else {
                    0.0
                },
                share: count as f64 / (in_class as f64).max(1.0),
                count,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_serving_only_sentence_starts_has_their_inverse_frequency_as_lift() {
        let words: Vec<String> = ["<eos>", "the", "N", "he", "she", "would"]
            .iter()
            .map(|w| w.to_string())
            .collect();
        // 100 positions: 10 `<eos>`, 50 `the`, 20 `N`, 10 `he`, 5 `she`, 5 `would`.
        let total = [10, 50, 20, 10, 5, 5];
        // The module serves every `<eos>` and nothing else.
        let module = [10, 0, 0, 0, 0, 0];
        let lifts = class_lifts(&total, &module, &words);
        let by = |name: &str| lifts.iter().find(|l| l.class.contains(name)).unwrap();
        assert!((by("<eos>").lift - 10.0).abs() < 1e-12);
        assert_eq!(by("<eos>").share, 1.0);
        assert_eq!(by("number").lift, 0.0);
        // A module serving all of `he` and `she` and as many `the`: pronouns are 15% of the
        // corpus and half of its positions.
        let module = [0, 15, 0, 10, 5, 0];
        let lifts = class_lifts(&total, &module, &words);
        let pronoun = lifts.iter().find(|l| l.class == "pronoun").unwrap();
        assert!((pronoun.lift - 0.5 / 0.15).abs() < 1e-12);
        assert_eq!(pronoun.count, 15);
        // `money $` never occurs: lift 0, not NaN.
        let money = lifts.iter().find(|l| l.class.contains('$')).unwrap();
        assert_eq!(money.lift, 0.0);
    }
}
