//! Figures of the language-modelling experiment, each as PNG and SVG: validation perplexity
//! curves of several runs, the module-by-word heat map and the module-usage histogram of
//! `modula inspect`.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::plot::{FAMILY, err, register_font, save};

/// One run's validation perplexity against training tokens seen.
pub struct Curve {
    /// The legend label.
    pub label: String,
    /// `(tokens, perplexity)` points.
    pub points: Vec<(f64, f64)>,
}

/// Writes `curves.png` and `curves.svg` into `dir`; returns the file names.
///
/// # Errors
/// A message when the figure cannot be drawn or written.
pub fn curves(dir: &Path, curves: &[Curve]) -> Result<Vec<String>, String> {
    register_font()?;
    let mut written = Vec::new();
    save!(dir, "curves", (1000, 600), curves, draw_curves, written);
    Ok(written)
}

/// Ticks at 1, 2, 3, 5 and 7 times each power of ten inside `[lo, hi]`: plotters' own log
/// axis labels only some decades, which left the range where perplexities end (100-1000)
/// unlabelled.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let first = lo.log10().floor() as i32;
    let last = hi.log10().ceil() as i32;
    (first..=last)
        .flat_map(|e| [1.0, 2.0, 3.0, 5.0, 7.0].map(|m| m * 10f64.powi(e)))
        .filter(|v| (lo..=hi).contains(v))
        .collect()
}

fn draw_curves<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    curves: &[Curve],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let xs: Vec<f64> = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .collect();
    let x_max = xs.iter().copied().fold(1.0f64, f64::max);
    // A log scale: runs differ by orders of magnitude when one diverges.
    let finite = ys.iter().copied().filter(|v| v.is_finite() && *v > 0.0);
    let lo = finite.clone().fold(f64::INFINITY, f64::min).min(1e9);
    let hi = finite.fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(root)
        .caption("validation perplexity (greedy selections)", (FAMILY, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            0.0..x_max,
            ((lo * 0.9).max(1.0)..hi * 1.1)
                .log_scale()
                .with_key_points(log_ticks((lo * 0.9).max(1.0), hi * 1.1)),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("training tokens seen (millions)")
        .x_label_formatter(&|v| format!("{:.2}", v / 1e6))
        .y_desc("perplexity (log scale)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FAMILY, 13))
        .draw()
        .map_err(err)?;
    for (i, c) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(c.points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(c.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FAMILY, 13))
        .draw()
        .map_err(err)
}

/// A matrix to draw as a heat map: `values[row][col]` in `[0, 1]`.
pub struct Heat {
    /// Row labels (modules).
    pub rows: Vec<String>,
    /// Column labels (words).
    pub cols: Vec<String>,
    /// The values.
    pub values: Vec<Vec<f64>>,
    /// The caption.
    pub caption: String,
}

/// Writes `heatmap.png` and `heatmap.svg` into `dir`; returns the file names.
///
/// # Errors
/// A message when the figure cannot be drawn or written.
pub fn heatmap(dir: &Path, heat: &Heat) -> Result<Vec<String>, String> {
    register_font()?;
    let mut written = Vec::new();
    let width = (160 + 62 * heat.cols.len()).max(500) as u32;
    let height = (110 + 28 * heat.rows.len()) as u32;
    save!(dir, "heatmap", (width, height), heat, draw_heat, written);
    Ok(written)
}

pub(crate) fn draw_heat<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    heat: &Heat,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let (nr, nc) = (heat.rows.len(), heat.cols.len());
    let mut chart = ChartBuilder::on(root)
        .caption(&heat.caption, (FAMILY, 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(80)
        // A segmented range `0..n` has a segment for every key point, `n` included: the last
        // index keeps the grid at one cell per row and column.
        .build_cartesian_2d(
            (0..nc.saturating_sub(1)).into_segmented(),
            (0..nr.saturating_sub(1)).into_segmented(),
        )
        .map_err(err)?;
    let label = |labels: &[String], v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(nc)
        .y_labels(nr)
        .x_label_formatter(&|v| label(&heat.cols, v))
        .y_label_formatter(&|v| label(&heat.rows, v))
        .x_label_style((FAMILY, 11))
        .y_label_style((FAMILY, 12))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(heat.values.iter().enumerate().flat_map(|(r, row)| {
            row.iter().enumerate().map(move |(c, &v)| {
                let shade = (255.0 * (1.0 - v.clamp(0.0, 1.0))) as u8;
                let (x0, x1) = (SegmentValue::Exact(c), SegmentValue::Exact(c + 1));
                let (y0, y1) = (SegmentValue::Exact(r), SegmentValue::Exact(r + 1));
                Rectangle::new([(x0, y0), (x1, y1)], RGBColor(shade, shade, 255).filled())
            })
        }))
        .map_err(err)?;
    Ok(())
}

/// Writes `usage.png` and `usage.svg` into `dir`: one bar per module; returns the file names.
///
/// # Errors
/// A message when the figure cannot be drawn or written.
pub fn usage_histogram(dir: &Path, usage: &[u64]) -> Result<Vec<String>, String> {
    register_font()?;
    let mut written = Vec::new();
    save!(dir, "usage", (700, 420), usage, draw_usage, written);
    Ok(written)
}

fn draw_usage<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    usage: &[u64],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let total = usage.iter().sum::<u64>().max(1) as f64;
    let top = usage
        .iter()
        .map(|&u| u as f64 / total)
        .fold(0.0f64, f64::max);
    let mut chart = ChartBuilder::on(root)
        .caption("module usage on the test set (greedy)", (FAMILY, 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (0..usage.len()).into_segmented(),
            0.0..(top * 1.1).max(0.01),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("module")
        .y_desc("fraction of (position, slot) pairs")
        .label_style((FAMILY, 13))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(usage.iter().enumerate().map(|(m, &u)| {
            let x0 = SegmentValue::Exact(m);
            let x1 = SegmentValue::Exact(m + 1);
            Rectangle::new([(x0, 0.0), (x1, u as f64 / total)], BLUE.mix(0.7).filled())
        }))
        .map_err(err)?;
    Ok(())
}
