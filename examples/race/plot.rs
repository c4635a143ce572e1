//! A surface's contour lines with the rules' paths over them, as SVG.

use std::error::Error;
use std::path::Path;

use contour::ContourBuilder;
use plotters::prelude::*;

use crate::surfaces::Surface;

/// Grid points per axis at which the surface is sampled for its contour lines.
const GRID: usize = 150;

/// Room right of the plot for the legend, in pixels.
const LEGEND_WIDTH: u32 = 200;
/// Where the legend starts below the top of the picture (the caption and the margin above
/// the plot), and the height of one entry, in pixels.
const LEGEND_TOP: u32 = 60;
const LEGEND_ENTRY: u32 = 42;

/// One rule's path: the points it visited, from the start.
pub struct Path2d<'a> {
    pub label: String,
    /// A second legend line: how the path ended.
    pub detail: String,
    pub color: RGBColor,
    pub points: &'a [[f64; 2]],
}

/// The parts of the polyline `points` inside the rectangle `x` × `y`, each a polyline,
/// with every segment that crosses the border cut at the border (Liang–Barsky clipping).
/// plotters would move every point outside the plotting area onto its border, drawing false
/// lines along the frame, so lines are clipped here.
fn clip(points: &[[f64; 2]], x: (f64, f64), y: (f64, f64)) -> Vec<Vec<(f64, f64)>> {
    let mut pieces: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut open = false;
    for segment in points.windows(2) {
        let ([x0, y0], [x1, y1]) = (segment[0], segment[1]);
        let (dx, dy) = (x1 - x0, y1 - y0);
        let (mut enter, mut leave) = (0.0_f64, 1.0_f64);
        // Each border as (p, q): the segment is inside where p·t <= q.
        let borders = [(-dx, x0 - x.0), (dx, x.1 - x0), (-dy, y0 - y.0), (dy, y.1 - y0)];
        let visible = borders.iter().all(|&(p, q)| {
            if p == 0.0 {
                q >= 0.0
            } else if p < 0.0 {
                enter = enter.max(q / p);
                enter <= leave
            } else {
                leave = leave.min(q / p);
                enter <= leave
            }
        });
        if !visible {
            open = false;
            continue;
        }
        let at = |t: f64| (x0 + t * dx, y0 + t * dy);
        if !open || enter > 0.0 {
            pieces.push(vec![at(enter)]);
        }
        let piece = pieces.last_mut().expect("a piece was just opened or is open");
        piece.push(at(leave));
        open = leave == 1.0;
    }
    pieces
}

/// A polyline, as a list of (x, y) points.
type Polyline = Vec<[f64; 2]>;

/// The contour lines of `surface` inside its window, one list of polylines per level, lowest
/// level first.
fn contour_lines(surface: &Surface) -> Result<Vec<Vec<Polyline>>, Box<dyn Error>> {
    let step_x = (surface.x.end - surface.x.start) / (GRID - 1) as f64;
    let step_y = (surface.y.end - surface.y.start) / (GRID - 1) as f64;
    let mut values = Vec::with_capacity(GRID * GRID);
    for row in 0..GRID {
        for column in 0..GRID {
            let x = surface.x.start + column as f64 * step_x;
            let y = surface.y.start + row as f64 * step_y;
            values.push((surface.value)(x, y));
        }
    }
    // The builder places value i at (i + 0.5) grid steps from its origin.
    let lines = ContourBuilder::new(GRID, GRID, true)
        .x_origin(surface.x.start - 0.5 * step_x)
        .y_origin(surface.y.start - 0.5 * step_y)
        .x_step(step_x)
        .y_step(step_y)
        .lines(&values, &surface.levels.values())?;
    Ok(lines
        .iter()
        .map(|line| {
            line.geometry()
                .0
                .iter()
                .map(|ring| ring.0.iter().map(|point| [point.x, point.y]).collect())
                .collect()
        })
        .collect())
}

/// Draws the legend on `root` right of the plotting area `plot` (in pixels), where it hides no
/// path. (A chart's own legend cannot go there: the chart keeps its elements inside.)
fn legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    plot: (std::ops::Range<i32>, std::ops::Range<i32>),
    paths: &[Path2d<'_>],
    show_minimum: bool,
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let (left, mut top) = (plot.0.end + 20, plot.1.start + 8);
    let label_font = ("sans-serif", 15).into_font().color(&BLACK);
    let detail_font = ("sans-serif", 12).into_font().color(&BLACK.mix(0.6));
    for path in paths {
        root.draw(&PathElement::new(
            [(left, top + 8), (left + 24, top + 8)],
            path.color.stroke_width(3),
        ))?;
        root.draw(&Text::new(path.label.as_str(), (left + 32, top), label_font.clone()))?;
        root.draw(&Text::new(path.detail.as_str(), (left + 32, top + 18), detail_font.clone()))?;
        top += LEGEND_ENTRY as i32;
    }
    root.draw(&Circle::new((left + 12, top + 8), 5, BLACK.stroke_width(2)))?;
    root.draw(&Text::new("start", (left + 32, top), label_font.clone()))?;
    if show_minimum {
        root.draw(&Cross::new((left + 12, top + 34), 7, BLACK.stroke_width(2)))?;
        root.draw(&Text::new("minimum", (left + 32, top + 26), label_font))?;
    }
    Ok(())
}

/// Draws `surface`'s contour lines, its minimum and the rules' `paths` to `file`.
pub fn race_chart(
    file: &Path,
    surface: &Surface,
    paths: &[Path2d<'_>],
) -> Result<(), Box<dyn Error>> {
    let (x, y) = ((surface.x.start, surface.x.end), (surface.y.start, surface.y.end));
    // Tall enough for the legend: two lines per path, then the start and the minimum.
    let height = 640.max(LEGEND_TOP + LEGEND_ENTRY * paths.len() as u32 + 90);
    let root = SVGBackend::new(file, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(surface.title, ("sans-serif", 22))
        .margin(18)
        .margin_right(LEGEND_WIDTH)
        .x_label_area_size(44)
        .y_label_area_size(52)
        .build_cartesian_2d(surface.x.clone(), surface.y.clone())?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("x")
        .y_desc("y")
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;

    let levels = contour_lines(surface)?;
    for (index, level) in levels.iter().enumerate() {
        // Low levels dark, high levels pale, so the eye finds the floor of the surface.
        let shade = 0.25 + 0.6 * index as f64 / levels.len().max(2).saturating_sub(1) as f64;
        let color = RGBColor(
            (60.0 + 170.0 * shade) as u8,
            (80.0 + 160.0 * shade) as u8,
            (130.0 + 120.0 * shade) as u8,
        );
        for ring in level {
            for piece in clip(ring, x, y) {
                chart
                    .draw_series(std::iter::once(PathElement::new(piece, color.stroke_width(1))))?;
            }
        }
    }

    for path in paths {
        let style = path.color.stroke_width(2);
        for piece in clip(path.points, x, y) {
            chart.draw_series(std::iter::once(PathElement::new(piece, style)))?;
        }
        if let Some(&[end_x, end_y]) = path.points.last().filter(|&&end| surface.contains(end)) {
            chart.draw_series(std::iter::once(Circle::new(
                (end_x, end_y),
                4,
                path.color.filled(),
            )))?;
        }
    }
    let [start_x, start_y] = surface.start;
    chart.draw_series(std::iter::once(Circle::new(
        (start_x, start_y),
        5,
        BLACK.stroke_width(2),
    )))?;
    if let Some([min_x, min_y]) = surface.minimum {
        chart.draw_series(std::iter::once(Cross::new((min_x, min_y), 7, BLACK.stroke_width(2))))?;
    }
    legend(&root, chart.plotting_area().get_pixel_range(), paths, surface.minimum.is_some())?;
    root.present()?;
    Ok(())
}
