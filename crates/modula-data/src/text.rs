//! Word-level language-modelling corpora: Penn Treebank in Mikolov's format and any plain
//! UTF-8 text.
//!
//! Tokenisation (both formats): the file must be UTF-8; lines end at `\n` (a preceding `\r` is
//! dropped); tokens are the maximal runs of non-whitespace characters (Unicode whitespace), kept
//! exactly as written; every line ends with the token [`EOS`]. Penn Treebank keeps blank lines
//! (each becomes a lone `<eos>`, as in the reference PyTorch loader; the official files have
//! none) and takes its vocabulary, in order of first appearance, from the training file. Plain
//! text skips blank lines, optionally lower-cases, splits by line into train/valid/test by
//! fraction, and caps its vocabulary at the most frequent training words, mapping the rest to
//! [`UNK`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::dataset::Dataset;
use crate::error::{DataError, Result, read_file};

/// The end-of-sentence token appended to every line.
pub const EOS: &str = "<eos>";
/// The unknown-word token; Penn Treebank's files already contain it.
pub const UNK: &str = "<unk>";

/// The three Penn Treebank files, in split order.
pub const PTB_FILES: [&str; 3] = ["ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"];

/// A word vocabulary: ids are positions in [`Vocab::words`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vocab {
    words: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Vocab {
    /// Number of words.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The id of `word`, if it is in the vocabulary.
    pub fn id(&self, word: &str) -> Option<u32> {
        self.ids.get(word).copied()
    }

    /// The word with id `id`.
    ///
    /// # Panics
    /// If `id` is not below [`Vocab::len`].
    #[track_caller]
    pub fn word(&self, id: u32) -> &str {
        &self.words[id as usize]
    }

    /// All words, in id order.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// Adds `word` if absent and returns its id.
    /// A vocabulary of `words` in order (word `i` gets id `i`; repeats keep their first id),
    /// for corpora tokenised elsewhere.
    pub fn from_words<'w>(words: impl IntoIterator<Item = &'w str>) -> Self {
        let mut vocab = Vocab::default();
        for w in words {
            vocab.insert(w);
        }
        vocab
    }

    fn insert(&mut self, word: &str) -> u32 {
        if let Some(&id) = self.ids.get(word) {
            return id;
        }
        let id = self.words.len() as u32;
        self.words.push(word.to_owned());
        self.ids.insert(word.to_owned(), id);
        id
    }
}

/// One token of a [`TokenSplit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// Stable global index: the token's position in the corpus (train, then valid, then test).
    pub index: u64,
    /// Vocabulary id.
    pub id: u32,
}

/// One split of a corpus as a single token stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSplit {
    /// The file the split came from (used in messages and reports).
    pub path: PathBuf,
    /// Vocabulary ids, with [`EOS`] at each line end.
    pub tokens: Vec<u32>,
    /// Global index of the first token.
    pub first_index: u64,
    /// Number of lines (sentences) in the split.
    pub lines: usize,
}

impl TokenSplit {
    /// Number of tokens that are not [`EOS`].
    pub fn tokens_without_eos(&self) -> usize {
        self.tokens.len() - self.lines
    }

    /// Arranges the stream into `batch` parallel streams of equal length, dropping the
    /// remainder, as in Mikolov's and PyTorch's language-model training.
    ///
    /// # Panics
    /// If `batch` is zero.
    #[track_caller]
    pub fn batchify(&self, batch: usize) -> Streams {
        assert!(batch > 0, "batch must be positive");
        let len = self.tokens.len() / batch;
        Streams {
            batch,
            len,
            first_index: self.first_index,
            tokens: self.tokens[..batch * len].to_vec(),
        }
    }
}

impl Dataset for TokenSplit {
    type Item<'a> = Token;

    fn len(&self) -> usize {
        self.tokens.len()
    }

    #[track_caller]
    fn get(&self, position: usize) -> Token {
        Token {
            index: self.global_index(position),
            id: self.tokens[position],
        }
    }

    #[track_caller]
    fn global_index(&self, position: usize) -> u64 {
        assert!(
            position < self.tokens.len(),
            "token position {position} out of range for a split of {}",
            self.tokens.len()
        );
        self.first_index + position as u64
    }
}

/// A split arranged as `batch` streams of `len` tokens: stream `b` holds the split's tokens
/// `b * len .. (b + 1) * len`, stored row-major as a `[batch, len]` matrix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Streams {
    /// Number of parallel streams (rows).
    pub batch: usize,
    /// Tokens per stream (columns).
    pub len: usize,
    /// Global index of the split's first token.
    pub first_index: u64,
    /// Vocabulary ids, `[batch, len]` row-major.
    pub tokens: Vec<u32>,
}

impl Streams {
    /// The global index of the token at stream `b`, step `t`.
    ///
    /// # Panics
    /// If `b` or `t` is out of range.
    #[track_caller]
    pub fn index(&self, b: usize, t: usize) -> u64 {
        assert!(
            b < self.batch && t < self.len,
            "({b}, {t}) out of range for {} streams of {}",
            self.batch,
            self.len
        );
        self.first_index + (b * self.len + t) as u64
    }

    /// Truncated-BPTT windows of at most `bptt` steps: inputs at steps `s..s + n` and targets
    /// at `s + 1..s + n + 1`, for `s = 0, bptt, 2 * bptt, ...` while a target exists.
    ///
    /// # Panics
    /// If `bptt` is zero.
    #[track_caller]
    pub fn windows(&self, bptt: usize) -> impl Iterator<Item = Window> + '_ {
        (0..self.window_count(bptt)).map(move |i| self.window(i, bptt))
    }

    /// How many windows [`Streams::windows`] yields for `bptt`.
    ///
    /// # Panics
    /// If `bptt` is zero.
    #[track_caller]
    pub fn window_count(&self, bptt: usize) -> usize {
        assert!(bptt > 0, "bptt must be positive");
        self.len.saturating_sub(1).div_ceil(bptt)
    }

    /// Window `i` of [`Streams::windows`], built directly (training resumes mid-epoch
    /// without walking the earlier windows).
    ///
    /// # Panics
    /// If `bptt` is zero or `i >= window_count(bptt)`.
    #[track_caller]
    pub fn window(&self, i: usize, bptt: usize) -> Window {
        let count = self.window_count(bptt);
        assert!(i < count, "window {i} out of range: there are {count}");
        let last = self.len - 1;
        let start = i * bptt;
        let steps = bptt.min(last - start);
        let mut inputs = Vec::with_capacity(self.batch * steps);
        let mut targets = Vec::with_capacity(self.batch * steps);
        let mut indices = Vec::with_capacity(self.batch * steps);
        for b in 0..self.batch {
            let row = &self.tokens[b * self.len..(b + 1) * self.len];
            inputs.extend_from_slice(&row[start..start + steps]);
            targets.extend_from_slice(&row[start + 1..start + steps + 1]);
            indices.extend((start..start + steps).map(|t| self.index(b, t)));
        }
        Window {
            start,
            steps,
            batch: self.batch,
            inputs,
            targets,
            indices,
        }
    }
}

/// One truncated-BPTT window: `[batch, steps]` row-major inputs, targets and global indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// First step of the window within each stream.
    pub start: usize,
    /// Steps in this window (the last window may be shorter).
    pub steps: usize,
    /// Number of streams.
    pub batch: usize,
    /// Input token ids.
    pub inputs: Vec<u32>,
    /// Target token ids: each input's successor in its stream.
    pub targets: Vec<u32>,
    /// Global index of each input token.
    pub indices: Vec<u64>,
}

/// A word-level corpus: a vocabulary and three token streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextCorpus {
    /// The vocabulary, built from the training split.
    pub vocab: Vocab,
    /// The training split; global indices start at 0.
    pub train: TokenSplit,
    /// The validation split; global indices follow the training split's.
    pub valid: TokenSplit,
    /// The test split; global indices follow the validation split's.
    pub test: TokenSplit,
}

/// Checks that `bytes` are non-empty UTF-8 and returns them as text.
pub fn decode_utf8<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str> {
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            what: "the text file".into(),
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.valid_up_to(),
    })?;
    if text.trim().is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            what: "the text file (it holds only whitespace)".into(),
        });
    }
    Ok(text)
}

/// Iterates the lines of `text`: split at `\n`, a trailing `\r` dropped, no final empty line.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
}

/// Tokenises Penn-Treebank-format text against `vocab`, growing it when `grow` (the training
/// split) and otherwise mapping unknown words to [`UNK`].
fn tokenize_ptb(
    path: &Path,
    text: &str,
    vocab: &mut Vocab,
    grow: bool,
    first_index: u64,
) -> Result<TokenSplit> {
    // Counted first, so that the token buffer is allocated once at its size: a text of short
    // words has half as many tokens as bytes, and growing by doubling would hold twice that.
    let mut tokens =
        Vec::with_capacity(lines(text).map(|l| l.split_whitespace().count() + 1).sum());
    let mut n_lines = 0;
    let unk = vocab.id(UNK);
    for (number, line) in lines(text).enumerate() {
        for word in line.split_whitespace() {
            let id = if grow {
                vocab.insert(word)
            } else {
                match vocab.id(word).or(unk) {
                    Some(id) => id,
                    None => {
                        return Err(DataError::Format {
                            path: path.to_path_buf(),
                            message: format!(
                                "line {}: word `{word}` is not in the training vocabulary, which has no `{UNK}` to map it to; replace it with `{UNK}` or add it to the training file",
                                number + 1
                            ),
                        });
                    }
                }
            };
            tokens.push(id);
        }
        tokens.push(if grow {
            vocab.insert(EOS)
        } else {
            vocab.id(EOS).expect("the training split added <eos>")
        });
        n_lines += 1;
    }
    Ok(TokenSplit {
        path: path.to_path_buf(),
        tokens,
        first_index,
        lines: n_lines,
    })
}

impl TextCorpus {
    /// Parses Penn Treebank text given as bytes (train, valid, test); the paths are for
    /// messages.
    ///
    /// # Errors
    /// [`DataError::Empty`] or [`DataError::NotUtf8`] for any file, and
    /// [`DataError::Format`] for a valid/test word missing from a vocabulary without `<unk>`.
    pub fn parse_ptb(files: [(&Path, &[u8]); 3]) -> Result<TextCorpus> {
        let mut vocab = Vocab::default();
        let [(tp, tb), (vp, vb), (sp, sb)] = files;
        let train_text = decode_utf8(tp, tb)?;
        let valid_text = decode_utf8(vp, vb)?;
        let test_text = decode_utf8(sp, sb)?;
        let train = tokenize_ptb(tp, train_text, &mut vocab, true, 0)?;
        let valid = tokenize_ptb(vp, valid_text, &mut vocab, false, train.tokens.len() as u64)?;
        let test = tokenize_ptb(
            sp,
            test_text,
            &mut vocab,
            false,
            valid.first_index + valid.tokens.len() as u64,
        )?;
        Ok(TextCorpus {
            vocab,
            train,
            valid,
            test,
        })
    }

    /// Loads `ptb.train.txt`, `ptb.valid.txt` and `ptb.test.txt` from `dir`.
    ///
    /// # Errors
    /// [`DataError::Missing`] or [`DataError::Io`] for any file, then as [`Self::parse_ptb`].
    pub fn load_ptb(dir: &Path) -> Result<TextCorpus> {
        let paths = PTB_FILES.map(|name| dir.join(name));
        let hint =
            "run `modula data fetch ptb` (or pass a directory holding ptb.{train,valid,test}.txt)";
        let bytes = [
            read_file(&paths[0], hint)?,
            read_file(&paths[1], hint)?,
            read_file(&paths[2], hint)?,
        ];
        TextCorpus::parse_ptb([
            (&paths[0], &bytes[0]),
            (&paths[1], &bytes[1]),
            (&paths[2], &bytes[2]),
        ])
    }

    /// Parses plain text (see the module documentation for the tokenisation rules) and splits
    /// it by line; `path` is for messages.
    ///
    /// # Errors
    /// [`DataError::Empty`] or [`DataError::NotUtf8`]; [`DataError::Empty`] also when the
    /// fractions leave the training split without lines.
    ///
    /// # Panics
    /// If the fractions are negative, not finite, or sum to 1 or more, or if `max_vocab` is
    /// below 2 (there must be room for `<eos>` and `<unk>`).
    #[track_caller]
    pub fn parse_text(path: &Path, bytes: &[u8], options: &TextOptions) -> Result<TextCorpus> {
        let (vf, tf) = (options.valid_fraction, options.test_fraction);
        assert!(
            vf.is_finite() && tf.is_finite() && vf >= 0.0 && tf >= 0.0 && vf + tf < 1.0,
            "valid and test fractions must be non-negative and sum to less than 1, not {vf} and {tf}"
        );
        assert!(
            options.max_vocab.is_none_or(|m| m >= 2),
            "max_vocab must leave room for <eos> and <unk>"
        );
        let text = prepared(path, bytes, options)?;
        let sentences = sentences(&text);
        let n = sentences.len();
        let n_valid = (n as f64 * vf).round() as usize;
        let n_test = (n as f64 * tf).round() as usize;
        let n_train = n.saturating_sub(n_valid + n_test);
        if n_train == 0 {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
                what: format!(
                    "the training split ({n} non-blank lines, valid fraction {vf}, test fraction {tf})"
                ),
            });
        }
        let (train_lines, rest) = sentences.split_at(n_train);
        let (valid_lines, test_lines) = rest.split_at(n_valid.min(rest.len()));
        Ok(corpus_from_lines(
            [(path, train_lines), (path, valid_lines), (path, test_lines)],
            options,
        ))
    }

    /// Parses three plain-text files (train, valid, test) as one corpus whose vocabulary comes
    /// from the training file, capped by `options.max_vocab` (the split fractions are unused);
    /// the paths are for messages.
    ///
    /// # Errors
    /// [`DataError::NotUtf8`] for any file, [`DataError::Empty`] for a training file without
    /// words.
    ///
    /// # Panics
    /// If `max_vocab` is below 2.
    #[track_caller]
    pub fn parse_text_splits(
        files: [(&Path, &[u8]); 3],
        options: &TextOptions,
    ) -> Result<TextCorpus> {
        assert!(
            options.max_vocab.is_none_or(|m| m >= 2),
            "max_vocab must leave room for <eos> and <unk>"
        );
        let [(tp, tb), (vp, vb), (sp, sb)] = files;
        let train_text = prepared(tp, tb, options)?;
        let train = sentences(&train_text);
        if train.is_empty() {
            return Err(DataError::Empty {
                path: tp.to_path_buf(),
                what: "the training file".into(),
            });
        }
        let (valid_text, test_text) = (prepared(vp, vb, options)?, prepared(sp, sb, options)?);
        let (valid, test) = (sentences(&valid_text), sentences(&test_text));
        Ok(corpus_from_lines(
            [(tp, &train), (vp, &valid), (sp, &test)],
            options,
        ))
    }

    /// Reads and parses a plain-text file.
    ///
    /// # Errors
    /// [`DataError::Missing`] or [`DataError::Io`], then as [`Self::parse_text`].
    ///
    /// # Panics
    /// As [`Self::parse_text`].
    #[track_caller]
    pub fn load_text(path: &Path, options: &TextOptions) -> Result<TextCorpus> {
        let bytes = read_file(path, "pass the path of a UTF-8 text file")?;
        TextCorpus::parse_text(path, &bytes, options)
    }
}

/// A plain-text file's text, checked (non-empty UTF-8) and lower-cased when asked.
fn prepared<'b>(path: &Path, bytes: &'b [u8], options: &TextOptions) -> Result<Cow<'b, str>> {
    let text = decode_utf8(path, bytes)?;
    Ok(if options.lowercase {
        Cow::Owned(text.to_lowercase())
    } else {
        Cow::Borrowed(text)
    })
}

/// The non-blank lines of a text, as slices of it: words are split from them when needed
/// rather than stored, so a corpus costs its text and its token ids, not a string per word.
fn sentences(text: &str) -> Vec<&str> {
    lines(text)
        .filter(|l| l.split_whitespace().next().is_some())
        .collect()
}

/// A corpus from the lines of its three splits: the vocabulary is the training
/// split's words by frequency (ties in order of first appearance), capped by
/// `options.max_vocab` with `<eos>` and `<unk>` counted; every other word becomes `<unk>`.
fn corpus_from_lines(splits: [(&Path, &[&str]); 3], options: &TextOptions) -> TextCorpus {
    // Count training words, remembering first appearance so that ties sort stably.
    let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
    for word in splits[0].1.iter().flat_map(|l| l.split_whitespace()) {
        let next = counts.len();
        counts.entry(word).or_insert((0, next)).0 += 1;
    }
    let mut ranked: Vec<(&str, usize, usize)> = counts
        .into_iter()
        .filter(|(w, _)| *w != EOS && *w != UNK)
        .map(|(w, (c, first))| (w, c, first))
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
    let mut vocab = Vocab::default();
    vocab.insert(EOS);
    vocab.insert(UNK);
    let keep = options.max_vocab.map_or(ranked.len(), |m| m - 2);
    for (word, _, _) in ranked.iter().take(keep) {
        vocab.insert(word);
    }
    let unk = vocab.id(UNK).expect("inserted above");
    let eos = vocab.id(EOS).expect("inserted above");
    let mut first_index = 0u64;
    let mut split = |path: &Path, lines: &[&str]| {
        let count = lines.iter().map(|l| l.split_whitespace().count() + 1).sum();
        let mut tokens = Vec::with_capacity(count);
        for line in lines {
            tokens.extend(line.split_whitespace().map(|w| vocab.id(w).unwrap_or(unk)));
            tokens.push(eos);
        }
        let s = TokenSplit {
            path: path.to_path_buf(),
            tokens,
            first_index,
            lines: lines.len(),
        };
        first_index += s.tokens.len() as u64;
        s
    };
    let [(tp, tl), (vp, vl), (sp, sl)] = splits;
    let train = split(tp, tl);
    let valid = split(vp, vl);
    let test = split(sp, sl);
    TextCorpus {
        vocab,
        train,
        valid,
        test,
    }
}

impl TextCorpus {
    /// Reads `train.txt`, `valid.txt` and `test.txt` from `dir` (see
    /// [`TextCorpus::parse_text_splits`]).
    ///
    /// # Errors
    /// [`DataError::Missing`] or [`DataError::Io`] for any file, then as
    /// [`TextCorpus::parse_text_splits`].
    ///
    /// # Panics
    /// As [`TextCorpus::parse_text_splits`].
    #[track_caller]
    pub fn load_text_dir(dir: &Path, options: &TextOptions) -> Result<TextCorpus> {
        let paths = TEXT_FILES.map(|name| dir.join(name));
        let hint = "a text corpus directory holds train.txt, valid.txt and test.txt";
        let bytes = [
            read_file(&paths[0], hint)?,
            read_file(&paths[1], hint)?,
            read_file(&paths[2], hint)?,
        ];
        TextCorpus::parse_text_splits(
            [
                (&paths[0], &bytes[0]),
                (&paths[1], &bytes[1]),
                (&paths[2], &bytes[2]),
            ],
            options,
        )
    }
}

/// The file names of a plain-text corpus directory, in split order.
pub const TEXT_FILES: [&str; 3] = ["train.txt", "valid.txt", "test.txt"];

/// Options for plain-text corpora.
#[derive(Clone, Debug, PartialEq)]
pub struct TextOptions {
    /// Largest vocabulary, counting `<eos>` and `<unk>`; `None` keeps every training word.
    pub max_vocab: Option<usize>,
    /// Fraction of the non-blank lines, taken after the training lines, for validation.
    pub valid_fraction: f64,
    /// Fraction of the non-blank lines, taken last, for testing.
    pub test_fraction: f64,
    /// Whether to lower-case the text before tokenising.
    pub lowercase: bool,
}

impl Default for TextOptions {
    /// A 10,000-word vocabulary (Penn Treebank's size), 10% validation, 10% test, case kept.
    fn default() -> TextOptions {
        TextOptions {
            max_vocab: Some(10_000),
            valid_fraction: 0.1,
            test_fraction: 0.1,
            lowercase: false,
        }
    }
}
