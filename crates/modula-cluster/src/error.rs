//! [`ClusterError`]: what partitioning can fail on.

/// A partition that cannot be built from what it was given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterError {
    /// The layer's width is not a positive multiple of the number of groups.
    #[error(
        "a layer of {width} neurons cannot be cut into {groups} groups of equal size; choose a number of groups that divides the width"
    )]
    Unbalanced {
        /// Neurons in the layer.
        width: usize,
        /// Groups asked for.
        groups: usize,
    },
    /// An assignment names a group out of range or fills a group unevenly.
    #[error("invalid assignment: {0}")]
    Assignment(String),
    /// METIS itself failed.
    #[error("METIS failed to partition the co-activation graph: {0}")]
    Metis(String),
}
