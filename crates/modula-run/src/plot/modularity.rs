//! The co-activation figure of `modula modularity`: each hidden layer's co-activation matrix
//! in the neurons' own order and reordered group by group by each partition, where groups
//! that fire together show as bright blocks on the diagonal.
//!
//! PNG only: a matrix of a million cells is a picture, and as SVG rectangles it would weigh
//! tens of megabytes.

use std::path::Path;

use modula_cluster::{CoActivation, Method, Partition};
use plotters::prelude::*;

use crate::files;
use crate::plot::{FAMILY, err, register_font};

/// Pixels per panel side: a 1024-neuron layer is averaged over 4 x 4 cells, which keeps
/// groups of 32 neurons 8 pixels wide and the file a few hundred kilobytes.
const PANEL: usize = 256;

/// One hidden layer for the figure: its number (from 1), its co-activation counts, and its
/// partitions by method.
pub type Layer<'a> = (usize, &'a CoActivation, Vec<(Method, &'a Partition)>);

/// Writes `coactivation-l{layer}.png` into `dir` for each hidden layer: panels of the cosine
/// co-activation (`count(i, j) / sqrt(count(i, i) count(j, j))`) in the neurons' own order
/// and in each partition's order, shaded up to the 99th percentile of the off-diagonal values
/// (brighter is more); returns the file names.
///
/// # Errors
/// A message when the figure cannot be drawn or written.
pub fn coactivation(dir: &Path, layers: &[Layer<'_>]) -> Result<Vec<String>, String> {
    register_font()?;
    let mut written = Vec::new();
    for (number, co, partitions) in layers {
        let d = co.width();
        let cosine: Vec<f32> = (0..d * d).map(|c| co.cosine(c / d, c % d) as f32).collect();
        let mut off: Vec<f32> = (0..d * d)
            .filter(|c| c / d != c % d)
            .map(|c| cosine[c])
            .collect();
        off.sort_by(f32::total_cmp);
        let top = off
            .get(((off.len() as f64 * 0.99) as usize).min(off.len().saturating_sub(1)))
            .copied()
            .filter(|&v| v > 0.0)
            .unwrap_or(1.0);
        let identity: Vec<u32> = (0..d as u32).collect();
        let mut panels: Vec<(String, &[u32])> = vec![("neurons' own order".into(), &identity)];
        for (method, p) in partitions {
            panels.push((
                format!(
                    "{} groups ({} of {})",
                    method.name(),
                    p.groups(),
                    p.group_size()
                ),
                p.order(),
            ));
        }
        let name = format!("coactivation-l{number}.png");
        let size = ((PANEL + 10) * panels.len()) as u32;
        files::replace_with(&dir.join(&name), "plots", |tmp| {
            let root = BitMapBackend::new(tmp, (size, PANEL as u32 + 60)).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            let (title, body) = root.split_vertically(30);
            title
                .draw_text(
                    &format!(
                        "hidden layer {}: co-activation (cosine of binary activations; scale to {top:.3})",
                        number
                    ),
                    &(FAMILY, 18).into_text_style(&title),
                    (10, 6),
                )
                .map_err(err)?;
            for (area, (caption, order)) in body.split_evenly((1, panels.len())).iter().zip(&panels) {
                area.draw_text(caption, &(FAMILY, 15).into_text_style(area), (10, 4))
                    .map_err(err)?;
                draw_matrix(area, &cosine, d, order, top)?;
            }
            root.present().map_err(err)
        })
        .map_err(err)?;
        written.push(name);
    }
    Ok(written)
}

/// Draws `values` (`d x d`) with rows and columns in `order` into `area` below its caption,
/// each pixel the mean of the cells it covers.
fn draw_matrix<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    values: &[f32],
    d: usize,
    order: &[u32],
    top: f32,
) -> Result<(), String> {
    let side = PANEL.min(d.max(1));
    let cell = d.div_ceil(side);
    for py in 0..side {
        for px in 0..side {
            let (mut sum, mut n) = (0.0f32, 0usize);
            for i in (py * cell..(py + 1) * cell).take_while(|&i| i < d) {
                for j in (px * cell..(px + 1) * cell).take_while(|&j| j < d) {
                    sum += values[order[i] as usize * d + order[j] as usize];
                    n += 1;
                }
            }
            let v = (sum / n.max(1) as f32 / top).clamp(0.0, 1.0);
            let shade = (255.0 * (1.0 - v)) as u8;
            let scale = PANEL / side;
            for dy in 0..scale {
                for dx in 0..scale {
                    area.draw_pixel(
                        ((px * scale + dx) as i32 + 4, (py * scale + dy) as i32 + 26),
                        &RGBColor(shade, shade, 255),
                    )
                    .map_err(err)?;
                }
            }
        }
    }
    Ok(())
}
