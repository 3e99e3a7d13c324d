#![doc = include_str!("../README.md")]

mod coactivation;
mod error;
mod partition;
mod skip;

pub use coactivation::{CoActivation, MAX_ROWS};
pub use error::ClusterError;
pub use partition::{Method, Partition};
pub use skip::{Grouped, GroupedProduct};
