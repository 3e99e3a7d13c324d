//! Figures of the continual-learning experiment, each as PNG and SVG: the accuracy matrices
//! of every method (first seed) and the module usage per task of the modular methods.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use modula_tasks::continual::SequenceRun;

use crate::plot::lm::{Heat, draw_heat};
use crate::plot::{err, register_font, save};

/// Panels per row of a figure.
const COLUMNS: usize = 3;

/// Draws `heats` as a grid of heat maps, [`COLUMNS`] per row.
fn draw_grid<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    heats: &[Heat],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let rows = heats.len().div_ceil(COLUMNS).max(1);
    let panels = root.split_evenly((rows, COLUMNS));
    for (panel, heat) in panels.iter().zip(heats) {
        draw_heat(panel, heat)?;
    }
    Ok(())
}

/// Writes `accuracy.png`/`.svg` (one heat map `R[i][j]` per labelled run of a sequence of
/// `tasks`, rows the task just trained, columns the task tested, darker is more accurate)
/// and, when a run has modular layers, `usage.png`/`.svg` (per modular run, the share of each
/// task's test examples each module of the first layer serves right after the task is
/// trained) into `dir`; returns the file names.
///
/// # Errors
/// A message when a figure cannot be drawn or written.
pub fn figures(
    dir: &Path,
    tasks: &[String],
    runs: &[(String, &SequenceRun)],
) -> Result<Vec<String>, String> {
    register_font()?;
    let accuracy: Vec<Heat> = runs
        .iter()
        .map(|(label, run)| Heat {
            rows: tasks.iter().map(|t| format!("after {t}")).collect(),
            cols: tasks.to_vec(),
            values: run.accuracy.clone(),
            caption: label.clone(),
        })
        .collect();
    let usage: Vec<Heat> = runs
        .iter()
        .filter(|(_, run)| {
            run.usage
                .first()
                .and_then(|u| u.first())
                .is_some_and(|l| l.len() > 1)
        })
        .map(|(label, run)| {
            let layer0: Vec<&Vec<u64>> = run.usage.iter().map(|u| &u[0]).collect();
            let modules = layer0[0].len();
            Heat {
                rows: tasks.to_vec(),
                cols: (0..modules).map(|m| format!("m{m}")).collect(),
                values: layer0
                    .iter()
                    .map(|u| {
                        let total = u.iter().sum::<u64>().max(1) as f64;
                        u.iter().map(|&c| c as f64 / total).collect()
                    })
                    .collect(),
                caption: format!("{label}: first-layer module share"),
            }
        })
        .collect();
    let size = |n: usize, cell_w: u32, cell_h: u32, cols: usize, rows: usize| {
        let grid_rows = n.div_ceil(COLUMNS).max(1) as u32;
        (
            COLUMNS as u32 * (160 + cell_w * cols as u32).max(420),
            grid_rows * (110 + cell_h * rows as u32),
        )
    };
    let mut written = Vec::new();
    let t = tasks.len();
    save!(
        dir,
        "accuracy",
        size(accuracy.len(), 62, 28, t, t),
        &accuracy,
        draw_grid,
        written
    );
    if let Some(first) = usage.first() {
        save!(
            dir,
            "usage",
            size(usage.len(), 40, 28, first.cols.len(), t),
            &usage,
            draw_grid,
            written
        );
    }
    Ok(written)
}
