//! The run directory's plots, each as PNG and SVG: training and test loss, effective modules,
//! and the first layer's module usage over time.
//!
//! Text is drawn with a font embedded in the binary (DejaVu Sans, see
//! `assets/DejaVuSans-LICENSE.txt`), so plotting needs no system fonts or fontconfig.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::records::MetricRecord;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// The family name the charts ask for; it is the embedded font.
pub(crate) const FAMILY: &str = "sans-serif";

/// Registers the embedded font once per process.
pub(crate) fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    ok.then_some(())
        .ok_or_else(|| "the embedded font cannot be parsed".to_string())
}

/// What every plot reads.
struct Data<'a> {
    records: &'a [MetricRecord],
    linear_baseline_mse: f64,
}

/// Draws `$name.png` and `$name.svg` in `$dir` with the same drawing function, which is
/// generic over the backend (a macro, because one function pointer cannot serve both). Each
/// file is drawn into a temporary file and renamed over its name, so a crash never leaves a
/// half-drawn plot.
macro_rules! save {
    ($dir:expr, $name:literal, $size:expr, $data:expr, $draw:ident, $written:expr) => {{
        crate::files::replace_with(&$dir.join(concat!($name, ".png")), "plots", |tmp| {
            let root = BitMapBackend::new(tmp, $size).into_drawing_area();
            $draw(&root, $data)?;
            root.present().map_err(err)
        })
        .map_err(err)?;
        crate::files::replace_with(&$dir.join(concat!($name, ".svg")), "plots", |tmp| {
            let root = SVGBackend::new(tmp, $size).into_drawing_area();
            $draw(&root, $data)?;
            root.present().map_err(err)
        })
        .map_err(err)?;
        $written.push(concat!($name, ".png").to_string());
        $written.push(concat!($name, ".svg").to_string());
    }};
}
pub(crate) use save;

/// Writes every plot into `dir` and returns the file names written.
///
/// # Errors
/// A message when a plot cannot be drawn or written.
pub fn write_all(
    dir: &Path,
    records: &[MetricRecord],
    linear_baseline_mse: f64,
) -> Result<Vec<String>, String> {
    register_font()?;
    let data = Data {
        records,
        linear_baseline_mse,
    };
    let mut written = Vec::new();
    save!(dir, "loss", (1200, 450), &data, loss, written);
    save!(dir, "modules", (800, 450), &data, modules, written);
    save!(dir, "usage", (800, 450), &data, usage, written);
    Ok(written)
}

pub(crate) fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The x axis: steps from the first logged interval's start to the last.
fn step_range(records: &[MetricRecord]) -> std::ops::Range<f64> {
    let last = records.last().map_or(1, |r| r.step).max(1);
    0.0..last as f64
}

/// A y range that shows `values` without letting the first few intervals (where the loss
/// is still falling from its initial value) squash the rest of the curve.
fn robust_range(values: &[f64]) -> std::ops::Range<f64> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return 0.0..1.0;
    }
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let skip = finite.len() / 10;
    let hi = finite[skip..]
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo).abs() * 0.05).max(1e-3);
    (lo - pad)..(hi + pad)
}

const TRAIN: RGBColor = RGBColor(31, 119, 180);
const TEST: RGBColor = RGBColor(214, 39, 40);
const THIRD: RGBColor = RGBColor(44, 160, 44);

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FAMILY, 14))
        .draw()
        .map_err(err)
}

/// Training and test NLL (left), test MSE on a log scale with the linear baseline (right).
fn loss<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, d: &Data<'_>) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(600);
    let x = step_range(d.records);
    let train: Vec<(f64, f64)> = d
        .records
        .iter()
        .filter_map(|r| r.task_nll.map(|v| (r.step as f64, v)))
        .collect();
    let test: Vec<(f64, f64)> = d
        .records
        .iter()
        .map(|r| (r.step as f64, r.test_nll))
        .collect();
    let all: Vec<f64> = train.iter().chain(&test).map(|p| p.1).collect();
    let mut chart = ChartBuilder::on(&left)
        .caption("training and test NLL", (FAMILY, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x.clone(), robust_range(&all))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("-log p(y | x, a)")
        .label_style((FAMILY, 13))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(train, TRAIN.stroke_width(2)))
        .map_err(err)?
        .label("training (interval mean)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], TRAIN.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(test, TEST.stroke_width(2)))
        .map_err(err)?
        .label("test")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], TEST.stroke_width(2)));
    legend(&mut chart)?;

    let mse: Vec<(f64, f64)> = d
        .records
        .iter()
        .filter(|r| r.test_mse.is_finite() && r.test_mse > 0.0)
        .map(|r| (r.step as f64, r.test_mse))
        .collect();
    let base = d.linear_baseline_mse;
    let values = mse.iter().map(|p| p.1).chain([base]);
    let lo = values.clone().fold(f64::INFINITY, f64::min).max(1e-12);
    let hi = values.fold(f64::NEG_INFINITY, f64::max).max(lo * 10.0);
    let mut chart = ChartBuilder::on(&right)
        .caption("test MSE (log scale)", (FAMILY, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x.clone(), (lo * 0.8..hi * 1.25).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("mean squared error")
        .label_style((FAMILY, 13))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(mse, TEST.stroke_width(2)))
        .map_err(err)?
        .label("test MSE")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], TEST.stroke_width(2)));
    chart
        .draw_series(DashedLineSeries::new(
            [(x.start, base), (x.end, base)],
            8,
            5,
            BLACK.stroke_width(2),
        ))
        .map_err(err)?
        .label("best linear map")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    legend(&mut chart)
}

/// Effective modules on the test split, and the training controller perplexities.
fn modules<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, d: &Data<'_>) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let series = |f: fn(&MetricRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        d.records
            .iter()
            .filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| (r.step as f64, v)))
            .collect()
    };
    let eff = series(|r| Some(r.effective_modules));
    let ctrl = series(|r| r.controller_perplexity);
    let batch = series(|r| r.batch_perplexity);
    let top = eff
        .iter()
        .chain(&ctrl)
        .chain(&batch)
        .map(|p| p.1)
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(root)
        .caption("modules in use", (FAMILY, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(step_range(d.records), 0.0..top * 1.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("modules")
        .label_style((FAMILY, 13))
        .draw()
        .map_err(err)?;
    for (points, color, label) in [
        (eff, TEST, "effective modules (test, greedy)"),
        (batch, TRAIN, "exp H(batch-averaged controller)"),
        (ctrl, THIRD, "exp mean H(controller)"),
    ] {
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FAMILY, 14))
        .draw()
        .map_err(err)
}

/// The first layer's training usage per interval as stacked fractions, one band per module.
fn usage<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, d: &Data<'_>) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let rows: Vec<(f64, Vec<f64>)> = d
        .records
        .iter()
        .filter_map(|r| {
            let u = r.usage.first()?;
            let total: u64 = u.iter().sum();
            (total > 0).then(|| {
                let mut cum = 0.0;
                let bands = u
                    .iter()
                    .map(|&c| {
                        cum += c as f64 / total as f64;
                        cum
                    })
                    .collect();
                (r.step as f64, bands)
            })
        })
        .collect();
    let modules = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut chart = ChartBuilder::on(root)
        .caption("first layer's module usage (training)", (FAMILY, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(step_range(d.records), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("fraction of rows")
        .label_style((FAMILY, 13))
        .draw()
        .map_err(err)?;
    // Each module's band is the area under its cumulative fraction; drawing the largest
    // first lets the smaller ones cover it, leaving each module its own band.
    for m in (0..modules).rev() {
        let color = Palette99::pick(m).to_rgba();
        let points: Vec<(f64, f64)> = rows
            .iter()
            .map(|(s, bands)| (*s, bands.get(m).copied().unwrap_or(1.0)))
            .collect();
        chart
            .draw_series(AreaSeries::new(points, 0.0, color.filled()))
            .map_err(err)?
            .label(format!("module {m}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    if modules > 0 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FAMILY, 12))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}
