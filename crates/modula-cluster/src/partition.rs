//! [`Partition`]: a layer's neurons cut into `M` groups of equal size, and the three ways of
//! building one ([`Method`]).

use metis::option::{Seed, UFactor};
use metis::{Graph, Idx};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::coactivation::CoActivation;
use crate::error::ClusterError;

/// Lloyd iterations of [`Partition::balanced_kmeans`] at most (it stops earlier when an
/// iteration moves no neuron).
const KMEANS_ITERATIONS: usize = 50;

/// How a partition is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// METIS's k-way partition of the co-activation graph ([`Partition::metis`]).
    Metis,
    /// Balanced k-means on the neurons' weight vectors ([`Partition::balanced_kmeans`]).
    Kmeans,
    /// A seeded random permutation, the control ([`Partition::random`]).
    Random,
    /// The layer's own order cut into equal consecutive blocks ([`Partition::blocks`]): the
    /// fixed blocks a group-sparsity penalty trains the network towards.
    Blocks,
}

impl Method {
    /// Every method, in the order the experiment reports them.
    pub const ALL: [Method; 4] = [
        Method::Metis,
        Method::Kmeans,
        Method::Random,
        Method::Blocks,
    ];

    /// The method's name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Method::Metis => "metis",
            Method::Kmeans => "kmeans",
            Method::Random => "random",
            Method::Blocks => "blocks",
        }
    }

    /// The method named `name` ([`Method::name`]), if any.
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// `width` neurons cut into `groups` groups of `width / groups` each: an exact permutation of
/// the neurons (each in exactly one group), so that ordering them group by group turns a dense
/// layer into `groups` column blocks.
///
/// ```
/// use modula_cluster::Partition;
/// let p = Partition::from_assignment(2, vec![1, 0, 0, 1])?;
/// assert_eq!(p.members(0), &[1, 2]);
/// assert_eq!(p.order(), &[1, 2, 0, 3]);
/// # Ok::<(), modula_cluster::ClusterError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    groups: usize,
    group_of: Vec<u32>,
    /// The neurons group by group, ascending within a group.
    order: Vec<u32>,
}

/// Fails unless `width` is a positive multiple of `groups`.
fn check_sizes(width: usize, groups: usize) -> Result<usize, ClusterError> {
    if groups == 0 || width == 0 || !width.is_multiple_of(groups) || groups > u32::MAX as usize {
        return Err(ClusterError::Unbalanced { width, groups });
    }
    Ok(width / groups)
}

impl Partition {
    /// The partition that puts neuron `i` in group `group_of[i]`.
    ///
    /// # Errors
    /// [`ClusterError::Unbalanced`] when the width is not a multiple of `groups`, and
    /// [`ClusterError::Assignment`] when a group index is out of range or a group does not
    /// hold exactly `width / groups` neurons.
    pub fn from_assignment(groups: usize, group_of: Vec<u32>) -> Result<Self, ClusterError> {
        let size = check_sizes(group_of.len(), groups)?;
        let mut counts = vec![0usize; groups];
        for (i, &g) in group_of.iter().enumerate() {
            let slot = counts.get_mut(g as usize).ok_or_else(|| {
                ClusterError::Assignment(format!(
                    "neuron {i} is in group {g}, but there are {groups} groups"
                ))
            })?;
            *slot += 1;
        }
        if let Some((g, &c)) = counts.iter().enumerate().find(|&(_, &c)| c != size) {
            return Err(ClusterError::Assignment(format!(
                "group {g} holds {c} neurons; every group must hold {size}"
            )));
        }
        let mut order: Vec<u32> = (0..group_of.len() as u32).collect();
        order.sort_by_key(|&i| (group_of[i as usize], i));
        Ok(Partition {
            groups,
            group_of,
            order,
        })
    }

    /// A uniformly random balanced partition from `seed`: the control, whose groups carry no
    /// structure.
    ///
    /// # Errors
    /// [`ClusterError::Unbalanced`] when `width` is not a multiple of `groups`.
    pub fn random(width: usize, groups: usize, seed: u64) -> Result<Self, ClusterError> {
        let size = check_sizes(width, groups)?;
        let mut order: Vec<usize> = (0..width).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let mut group_of = vec![0u32; width];
        for (p, &i) in order.iter().enumerate() {
            group_of[i] = (p / size) as u32;
        }
        Partition::from_assignment(groups, group_of)
    }

    /// The neurons in their own order, cut into `groups` consecutive blocks of equal size:
    /// group `g` holds neurons `g * width / groups` to `(g + 1) * width / groups - 1`.
    ///
    /// # Errors
    /// [`ClusterError::Unbalanced`] when `width` is not a multiple of `groups`.
    pub fn blocks(width: usize, groups: usize) -> Result<Self, ClusterError> {
        let size = check_sizes(width, groups)?;
        Partition::from_assignment(groups, (0..width).map(|i| (i / size) as u32).collect())
    }

    /// Balanced k-means on the neurons' weight vectors, as MoEfication splits a layer by its
    /// parameters: `points` holds one vector of `dim` values per neuron (row-major), each
    /// scaled to unit length so that neurons cluster by the direction they read; centres
    /// start at `groups` distinct neurons drawn from `seed`, and each Lloyd iteration assigns
    /// the (neuron, centre) pairs in order of increasing distance, a neuron to the nearest
    /// centre whose group is not yet full.
    ///
    /// # Errors
    /// [`ClusterError::Unbalanced`] when the neuron count is not a multiple of `groups`.
    ///
    /// # Panics
    /// If `dim == 0` or `points` is not a whole number of vectors.
    #[track_caller]
    pub fn balanced_kmeans(
        points: &[f32],
        dim: usize,
        groups: usize,
        seed: u64,
    ) -> Result<Self, ClusterError> {
        assert!(
            dim > 0 && points.len().is_multiple_of(dim),
            "{} values are not vectors of {dim}",
            points.len()
        );
        let width = points.len() / dim;
        let size = check_sizes(width, groups)?;
        let unit: Vec<f64> = points
            .chunks(dim)
            .flat_map(|p| {
                let norm = p.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
                let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
                p.iter().map(move |&v| v as f64 * scale)
            })
            .collect();
        let mut start: Vec<usize> = (0..width).collect();
        start.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let mut centres: Vec<f64> = start[..groups]
            .iter()
            .flat_map(|&i| unit[i * dim..(i + 1) * dim].iter().copied())
            .collect();
        let mut group_of = vec![u32::MAX; width];
        for _ in 0..KMEANS_ITERATIONS {
            let mut pairs: Vec<(f64, u32, u32)> = Vec::with_capacity(width * groups);
            for i in 0..width {
                let p = &unit[i * dim..(i + 1) * dim];
                for g in 0..groups {
                    let c = &centres[g * dim..(g + 1) * dim];
                    let d: f64 = p.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum();
                    pairs.push((d, i as u32, g as u32));
                }
            }
            pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
            let mut next = vec![u32::MAX; width];
            let mut filled = vec![0usize; groups];
            for (_, i, g) in pairs {
                if next[i as usize] == u32::MAX && filled[g as usize] < size {
                    next[i as usize] = g;
                    filled[g as usize] += 1;
                }
            }
            let moved = next != group_of;
            group_of = next;
            if !moved {
                break;
            }
            centres.iter_mut().for_each(|c| *c = 0.0);
            for (i, &g) in group_of.iter().enumerate() {
                let c = &mut centres[g as usize * dim..(g as usize + 1) * dim];
                for (c, &v) in c.iter_mut().zip(&unit[i * dim..(i + 1) * dim]) {
                    *c += v / size as f64;
                }
            }
        }
        Partition::from_assignment(groups, group_of)
    }

    /// METIS's k-way partition of the co-activation graph (a vertex per neuron, an edge of
    /// weight `count(i, j)` between every two neurons ever active together), which cuts as
    /// little co-activation between groups as it can, with METIS's tightest balance (0.1%)
    /// and its random choices seeded by `seed`; then moved to exactly equal sizes by taking
    /// from each over-full group the neuron that loses the least co-activation by moving to
    /// an under-full one, one neuron at a time.
    ///
    /// # Errors
    /// [`ClusterError::Unbalanced`] when the width is not a multiple of `groups`;
    /// [`ClusterError::Metis`] when METIS fails.
    pub fn metis(co: &CoActivation, groups: usize, seed: u64) -> Result<Self, ClusterError> {
        let width = co.width();
        let size = check_sizes(width, groups)?;
        let too_large = |what: &str| {
            ClusterError::Metis(format!(
                "the graph's {what} overflow METIS's 32-bit indices"
            ))
        };
        let (mut xadj, mut adjncy, mut weights) = (vec![0 as Idx], Vec::new(), Vec::new());
        for i in 0..width {
            for j in (0..width).filter(|&j| j != i) {
                let c = co.count(i, j);
                if c > 0 {
                    adjncy.push(Idx::try_from(j).map_err(|_| too_large("vertices"))?);
                    weights.push(Idx::try_from(c).unwrap_or(Idx::MAX));
                }
            }
            xadj.push(Idx::try_from(adjncy.len()).map_err(|_| too_large("edges"))?);
        }
        let nparts = Idx::try_from(groups).map_err(|_| too_large("parts"))?;
        let mut part = vec![0 as Idx; width];
        Graph::new(1, nparts, &xadj, &adjncy)
            .map_err(|e| ClusterError::Metis(e.to_string()))?
            .set_adjwgt(&weights)
            .set_option(UFactor(1))
            .set_option(Seed((seed % (i32::MAX as u64)) as Idx))
            .part_kway(&mut part)
            .map_err(|e| ClusterError::Metis(e.to_string()))?;
        let mut group_of: Vec<u32> = part.iter().map(|&g| g as u32).collect();
        rebalance(co, &mut group_of, groups, size);
        Partition::from_assignment(groups, group_of)
    }

    /// Neurons in the layer.
    pub fn width(&self) -> usize {
        self.group_of.len()
    }

    /// Groups `M`.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Neurons per group.
    pub fn group_size(&self) -> usize {
        self.width() / self.groups
    }

    /// The group of neuron `i`.
    ///
    /// # Panics
    /// If `i` is not below the width.
    #[track_caller]
    pub fn group_of(&self, i: usize) -> usize {
        self.group_of[i] as usize
    }

    /// The neurons group by group (ascending within a group): position `p` of the reordered
    /// layer holds neuron `order()[p]`.
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    /// The neurons of group `g`, ascending.
    ///
    /// # Panics
    /// If `g` is not below the number of groups.
    #[track_caller]
    pub fn members(&self, g: usize) -> &[u32] {
        let s = self.group_size();
        &self.order[g * s..(g + 1) * s]
    }

    /// The share of the co-activation mass between distinct neurons that falls inside the
    /// groups, by the counts `co` (pairs in the same group over all pairs): how much of the block
    /// structure a partition captures. A random partition into groups of `s` captures about
    /// `(s - 1) / (width - 1)` of it; 0 when no two distinct neurons were ever active together.
    ///
    /// # Panics
    /// If the counts are of another width.
    #[track_caller]
    pub fn within_fraction(&self, co: &CoActivation) -> f64 {
        assert_eq!(co.width(), self.width(), "counts of another layer");
        let (mut within, mut all) = (0u128, 0u128);
        for i in 0..self.width() {
            for j in 0..self.width() {
                if i != j {
                    let c = u128::from(co.count(i, j));
                    all += c;
                    if self.group_of(i) == self.group_of(j) {
                        within += c;
                    }
                }
            }
        }
        if all == 0 {
            0.0
        } else {
            within as f64 / all as f64
        }
    }

    /// Which groups hold an active (`> 0`) neuron in `activations`, one layer's `width`
    /// activations of one input.
    ///
    /// # Panics
    /// If `activations` is not `width` long.
    #[track_caller]
    pub fn active_groups(&self, activations: &[f32]) -> Vec<bool> {
        assert_eq!(
            activations.len(),
            self.width(),
            "activations of another layer"
        );
        let mut active = vec![false; self.groups];
        for (&v, &g) in activations.iter().zip(&self.group_of) {
            if v > 0.0 {
                active[g as usize] = true;
            }
        }
        active
    }
}

/// Co-activation between neuron `v` and the members of group `g` other than `v`.
fn affinity(co: &CoActivation, group_of: &[u32], v: usize, g: u32) -> i128 {
    group_of
        .iter()
        .enumerate()
        .filter(|&(u, &h)| h == g && u != v)
        .map(|(u, _)| i128::from(co.count(v, u)))
        .sum()
}

/// Moves neurons from over-full to under-full groups until every group holds `size`: each
/// move takes the (neuron of an over-full group, under-full group) pair that loses the least
/// within-group co-activation (ties to the lowest indices, so the result is deterministic).
fn rebalance(co: &CoActivation, group_of: &mut [u32], groups: usize, size: usize) {
    loop {
        let mut counts = vec![0usize; groups];
        group_of.iter().for_each(|&g| counts[g as usize] += 1);
        let under: Vec<u32> = (0..groups as u32)
            .filter(|&g| counts[g as usize] < size)
            .collect();
        if under.is_empty() {
            return;
        }
        let mut best: Option<(i128, usize, u32)> = None;
        for v in 0..group_of.len() {
            let from = group_of[v];
            if counts[from as usize] <= size {
                continue;
            }
            let stay = affinity(co, group_of, v, from);
            for &to in &under {
                let gain = affinity(co, group_of, v, to) - stay;
                if best.is_none_or(|(b, _, _)| gain > b) {
                    best = Some((gain, v, to));
                }
            }
        }
        let (_, v, to) = best.expect("an under-full group implies an over-full one");
        group_of[v] = to;
    }
}
