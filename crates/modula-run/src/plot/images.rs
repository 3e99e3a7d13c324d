//! Figures of the image experiments, each as PNG and SVG: train and test accuracy against
//! epochs for one run or a report's runs, the first modular layer's class-by-module heat map,
//! and the sparsity study's activation sparsity and test accuracy against the L1 strength.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::plot::lm::{Heat, draw_heat};
use crate::plot::{FAMILY, err, register_font, save};
use crate::records::{ImageRecord, ImageSummary};

/// Writes `accuracy.png` and `accuracy.svg` into `dir`: each run's test accuracy (thick) and
/// training accuracy (thin, same colour) at its evaluation points; returns the file names.
///
/// # Errors
/// A message when the figure cannot be drawn or written.
pub fn accuracy(dir: &Path, runs: &[(String, Vec<ImageRecord>)]) -> Result<Vec<String>, String> {
    register_font()?;
    let mut written = Vec::new();
    save!(dir, "accuracy", (1000, 600), runs, draw_accuracy, written);
    Ok(written)
}

fn draw_accuracy<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[(String, Vec<ImageRecord>)],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let points = |records: &[ImageRecord], test: bool| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(|r| {
                let e = r.eval.as_ref()?;
                Some((
                    r.epoch,
                    if test {
                        e.test_accuracy
                    } else {
                        e.train_accuracy
                    },
                ))
            })
            .collect()
    };
    let all: Vec<(f64, f64)> = runs
        .iter()
        .flat_map(|(_, r)| points(r, true).into_iter().chain(points(r, false)))
        .collect();
    let x_max = all.iter().map(|p| p.0).fold(1e-9f64, f64::max);
    let y_lo = all.iter().map(|p| p.1).fold(1.0f64, f64::min);
    let mut chart = ChartBuilder::on(root)
        .caption(
            "accuracy (greedy routes): test thick, training thin",
            (FAMILY, 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (y_lo - 0.02).max(0.0)..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epochs")
        .y_desc("accuracy")
        .label_style((FAMILY, 13))
        .draw()
        .map_err(err)?;
    for (i, (label, records)) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points(records, true),
                color.stroke_width(3),
            ))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3)));
        chart
            .draw_series(LineSeries::new(
                points(records, false),
                color.stroke_width(1),
            ))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FAMILY, 13))
        .draw()
        .map_err(err)
}

/// Writes `class_modules.png` and `class_modules.svg` into `dir`: for each module of the
/// first modular layer (rows), the share of each class's test images (columns) it served;
/// returns the file names.
///
/// # Errors
/// A message when the figure cannot be drawn or written.
pub fn class_modules(dir: &Path, summary: &ImageSummary) -> Result<Vec<String>, String> {
    register_font()?;
    let modules = summary.class_usage.first().map_or(0, Vec::len);
    let values = (0..modules)
        .map(|m| {
            summary
                .class_usage
                .iter()
                .map(|row| row[m] as f64 / row.iter().sum::<u64>().max(1) as f64)
                .collect()
        })
        .collect();
    let heat = Heat {
        rows: (0..modules).map(|m| format!("module {m}")).collect(),
        cols: summary.class_names.clone(),
        values,
        caption: format!(
            "{}: share of each class's test images served by each module of the first layer",
            summary.name
        ),
    };
    let mut written = Vec::new();
    let width = (160 + 90 * heat.cols.len()).max(500) as u32;
    let height = (110 + 28 * heat.rows.len()) as u32;
    save!(
        dir,
        "class_modules",
        (width, height),
        &heat,
        draw_heat,
        written
    );
    Ok(written)
}

/// One point of the sparsity study: a run's L1 strength on the activations, the zero
/// fraction of each hidden layer and the test accuracy.
pub struct SparsityPoint {
    /// The L1 strength on the activations.
    pub l1: f64,
    /// Per hidden layer, the fraction of exact zeros on the test set.
    pub zero_fraction: Vec<f64>,
    /// Test accuracy.
    pub test_accuracy: f64,
}

/// Writes `sparsity.png` and `sparsity.svg` into `dir`: each hidden layer's zero fraction and
/// the test accuracy against the L1 strength (the points in order of strength, labelled with
/// it, since the unregularised run's 0 has no place on a log axis); returns the file names.
///
/// # Errors
/// A message when the figure cannot be drawn or written.
pub fn sparsity(dir: &Path, points: &[SparsityPoint]) -> Result<Vec<String>, String> {
    register_font()?;
    let mut written = Vec::new();
    save!(dir, "sparsity", (900, 550), points, draw_sparsity, written);
    Ok(written)
}

fn draw_sparsity<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    points: &[SparsityPoint],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let n = points.len();
    // Every plotted value is a fraction; the axis starts a little below the smallest.
    let y_lo = points
        .iter()
        .flat_map(|p| p.zero_fraction.iter().chain([&p.test_accuracy]))
        .fold(1.0f64, |a, &b| a.min(b));
    let mut chart = ChartBuilder::on(root)
        .caption(
            "activation sparsity and test accuracy against L1 strength",
            (FAMILY, 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), (y_lo - 0.02).max(0.0)..1.0)
        .map_err(err)?;
    // The strengths are f32 in the configuration: printed as such, `1e-5` rather than the f64
    // expansion of the nearest f32.
    let labels: Vec<String> = points
        .iter()
        .map(|p| match p.l1 {
            0.0 => "0".to_string(),
            l1 => format!("{:e}", l1 as f32),
        })
        .collect();
    chart
        .configure_mesh()
        .x_labels(n.max(1))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("L1 strength on the activations")
        .y_desc("fraction")
        .label_style((FAMILY, 13))
        .draw()
        .map_err(err)?;
    let layers = points
        .iter()
        .map(|p| p.zero_fraction.len())
        .max()
        .unwrap_or(0);
    for layer in 0..layers {
        let color = Palette99::pick(layer).to_rgba();
        let series: Vec<(f64, f64)> = points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.zero_fraction.get(layer).map(|&z| (i as f64, z)))
            .collect();
        chart
            .draw_series(LineSeries::new(series, color.stroke_width(2)))
            .map_err(err)?
            .label(format!("zeros, hidden layer {}", layer + 1))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    let acc: Vec<(f64, f64)> = points
        .iter()
        .enumerate()
        .map(|(i, p)| (i as f64, p.test_accuracy))
        .collect();
    chart
        .draw_series(LineSeries::new(acc, BLACK.stroke_width(3)))
        .map_err(err)?
        .label("test accuracy")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(3)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FAMILY, 13))
        .draw()
        .map_err(err)
}
